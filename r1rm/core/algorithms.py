"""The RL algorithms `rl.algorithm` names, defined once (METHOD §3, §6).

No torch here: the config schema validates `rl.algorithm` against this list and `r1rm --help`
must not import torch. `r1rm.core.advantages.ESTIMATORS` holds one estimator per name.
"""

from __future__ import annotations

# stable_reinforce: R1-Reward's StableReinforce (REINFORCE++ with Pre-CLIP and the advantage
# filter); reinforce_pp: plain REINFORCE++; grpo: MSRL's algorithm; rloo and
# reinforce_baseline: the other critic-free baselines.
ALGORITHMS = ("stable_reinforce", "reinforce_pp", "grpo", "rloo", "reinforce_baseline")
