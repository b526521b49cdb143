#!/usr/bin/env bash
# Runs the tiny recipes end to end, single-threaded, into OUT: tiny-model, synth, build-data (clean,
# teacher, text, caption, cmkd), sft, rl (StableReinforce; GRPO with stress faults), eval, vote, judge.
# Used to check that a refactor changed no behaviour: run it with the old and the new code and
# compare the two folders with scripts/compare_outputs.py (bytes of shards, generations, weights and
# checkpoints; metric values with timings left out).
#   scripts/behaviour_snapshot.sh OUT [old|new]
# old|new: the spelling of the keys renamed on 2026-12-06 (rl.stress_* -> rl.stress.*,
# rl.consistency_judge / judge.* -> rl.consistency.*); default new. Run from the checkout whose code
# is to be used (python -m r1rm.cli puts the current folder's r1rm first).
set -euo pipefail
OUT=$(realpath -m "$1")
KEYS=${2:-new}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0
r() { echo "+ r1rm $*" >&2; $PY -m r1rm.cli "$@" > /dev/null; }
if [ "$KEYS" = old ]; then
  STRESS="rl.stress_label_noise=0.2 rl.stress_logprob_mismatch=0.3 rl.stress_logprob_gap=3.0 rl.stress_reward_outliers=0.2"
  CONS_NONE="rl.consistency_judge=none"
else
  STRESS="rl.stress.label_noise=0.2 rl.stress.logprob_mismatch=0.3 rl.stress.logprob_gap=3.0 rl.stress.reward_outliers=0.2"
  CONS_NONE="rl.consistency.mode=none"
fi
mkdir -p "$OUT"
M=$OUT/model D=$OUT/data
r tiny-model "$M"
r synth --recipe recipes/tiny/synth.yaml output_dir="$D" data.synthetic.n=96 data.synthetic.n_eval=16 data.synthetic.n_val=8
r build-data --recipe recipes/tiny/build_demo.yaml output_dir="$OUT/build" \
  "build.sources=[{name: synthetic-colour, format: canonical, path: $D/train.jsonl}]"
r build-data --recipe recipes/tiny/build_data.yaml model.path="$M" output_dir="$OUT/build_teacher" \
  "build.sources=[{name: synthetic-image, format: synthetic, n: 12, levels: [1, 2, 3], modality: image}, {name: synthetic-text, format: synthetic, n: 8, levels: [1, 2], modality: text, seed: 7}]" \
  generation.max_new_tokens=24
r build-data --recipe recipes/tiny/build_text.yaml output_dir="$OUT/build_text" \
  "build.sources=[{name: synthetic-text, format: synthetic, n: 40, levels: [1, 2, 3, 4, 5], modality: text, seed: 11}]"
r build-data --recipe recipes/tiny/build_caption.yaml output_dir="$OUT/build_caption" model.path="$M" \
  "build.sources=[{name: synthetic-image, format: synthetic, n: 20, levels: [1, 2, 3, 4, 5], modality: image}, {name: stage1-text, format: canonical, path: $OUT/build_text, role: replay}]"
r build-data --recipe recipes/tiny/build_cmkd.yaml output_dir="$OUT/build_cmkd" model.path="$M" \
  "build.sources=[{name: caption-set, format: canonical, path: $OUT/build_caption}]" generation.max_new_tokens=24 build.cmkd.n=2
r sft --recipe recipes/tiny/sft.yaml model.path="$M" "data.train=[$D/train.jsonl]" output_dir="$OUT/sft" \
  sft.max_steps=6 sft.save_every_steps=3 runtime.log_every_steps=1 runtime.report_to=none
RL_SMALL="rl.max_steps=3 rl.rollout_batch_size=4 rl.train_batch_size=8 rl.micro_batch_size=4 rl.max_new_tokens=40 rl.save_every_steps=2 rl.eval_every_steps=2 rl.eval_limit=8 runtime.report_to=none"
r rl --recipe recipes/tiny/rl.yaml model.path="$OUT/sft/model" "data.train=[$OUT/build]" "data.eval=[$D/val.jsonl]" \
  output_dir="$OUT/rl" $RL_SMALL rl.keep_best=true
r rl --recipe recipes/tiny/rl.yaml model.path="$OUT/sft/model" "data.train=[$OUT/build]" "data.eval=[$D/val.jsonl]" \
  output_dir="$OUT/rl_stress" $RL_SMALL rl.algorithm=grpo rl.n_samples_per_prompt=2 rl.adv_filter=paper $STRESS $CONS_NONE
r eval --recipe recipes/tiny/eval.yaml model.path="$OUT/rl/model" "data.eval=[$D/eval.jsonl]" output_dir="$OUT/eval" \
  generation.max_new_tokens=40
r eval --recipe recipes/tiny/vote.yaml model.path="$OUT/sft/model" "data.eval=[$D/eval.jsonl]" output_dir="$OUT/vote" \
  eval.k=3 generation.max_new_tokens=40
r vote --recipe recipes/tiny/vote.yaml output_dir="$OUT/vote"
r judge --recipe recipes/tiny/judge.yaml model.path="$OUT/sft/model" judge.input="$D/eval.jsonl" output_dir="$OUT/judge" \
  generation.max_new_tokens=40
echo "snapshot written to $OUT" >&2
