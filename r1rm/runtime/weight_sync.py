"""Colocated vLLM rollouts: push the trainer's weights into the engine, then check that the engine
scores a fixed probe as the trainer does (docs/training.md, "vLLM rollouts and placement").

The push (`trainer_weights`) walks the trainer's modules and hands each one's parameters to the
engine under their Hugging Face names. Under ZeRO-3 a module's parameters are gathered from every
process (`runtime.accel.gathered_params`), copied, and released before the next module: never the
whole model at once, and every process — each holds an engine — receives the full tensors. A LoRA
layer (peft) is merged on the fly, base weight + its adapters' delta (B·A·scaling), and sent under
the base layer's name (peft's `base_model.model.` prefix and `.base_layer` dropped; adapter tensors
never sent): vLLM's model has no adapters, and the merge needs only that module gathered (TRL
gathers the whole model to call peft's `merge_adapter`). vLLM maps the Hugging Face names itself.

The check (`check_engine`): a fixed probe — one RL prompt with its images, plus a fixed response —
scored token by token by the engine (prompt log-probs) and by the trainer. The largest |gap| over
the response tokens must stay within the tolerance: a maximum, not a mean, so opposite errors
cannot cancel. Measured 2026-12-06 on the 2-core x86_64 CPU (vLLM's CPU build, tiny model, float32
on both sides, tests/with_vllm/test_vllm_rl.py): 4.8e-7 after a full push; a push that skipped one
of the four decoder layers after the weights moved by N(0, 0.02²) noise left 0.36.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

# the probe's response: fixed text in the reward models' output format (the tokens are what matters)
PROBE_RESPONSE = ("<think>Both responses address the question; Response 1 is more accurate and complete.</think>"
                  "<answer>1</answer>")
# the default tolerance by the dtype both sides run in (the engine is built in the trainer's dtype):
# float32 measured (see the module docstring: 4.8e-7, a missed layer 0.36); bf16 on both sides gave
# 0.0028-0.0044 with the tiny model on CPU, but a 7B's logits of 20-30 carry bf16 rounding (2^-8
# relative) of ~0.1 and no GPU number exists yet (2026-12-06): set rl.logprob_check_tol from the
# weight_sync_gap your first steps log
DEFAULT_TOL = {"float32": 1e-3, "bfloat16": 0.5, "float16": 0.5}


class StaleWeightsError(RuntimeError):
    """The rollout engine's log-probs disagree with the trainer's after a weight push."""


def default_tol(dtype: str) -> float:
    """rl.logprob_check_tol when unset: by the dtype the trainer and the engine run in."""
    return DEFAULT_TOL.get(dtype, DEFAULT_TOL["bfloat16"])


# ---------------------------------------------------------------- the push
def hf_name(name: str) -> str | None:
    """A trainer parameter name as the Hugging Face checkpoint names it (what vLLM loads), or None
    for a tensor the engine has no place for (LoRA adapters, modules_to_save's original copy)."""
    if "lora_" in name or ".original_module." in name:
        return None
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def _is_lora_layer(module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")


def _merged_lora(prefix: str, module) -> list[tuple[str, torch.Tensor]]:
    """A peft LoRA layer as plain tensors: its base weight plus every active, unmerged adapter's delta."""
    base = module.get_base_layer()
    weight = base.weight.detach().clone()
    for adapter in module.active_adapters:
        if adapter in module.lora_A and adapter not in module.merged_adapters:
            weight += module.get_delta_weight(adapter).to(weight.dtype)
    out = [(f"{prefix}.weight", weight)]
    if getattr(base, "bias", None) is not None:
        out.append((f"{prefix}.bias", base.bias.detach().clone()))
    return out


def trainer_weights(acc, model) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor) of every trainer parameter, a module at a time (module
    docstring); every process must iterate it to the end together under ZeRO-3."""
    from r1rm.runtime.accel import gathered_params

    root = acc.unwrap_model(model)
    seen: set[int] = set()
    lora_prefixes: list[str] = []
    for prefix, module in root.named_modules():
        if any(prefix.startswith(p + ".") for p in lora_prefixes):
            continue  # inside a LoRA layer: sent merged with it
        if _is_lora_layer(module):
            lora_prefixes.append(prefix)
            with gathered_params(acc, list(module.parameters())):
                pairs = _merged_lora(prefix, module)
        else:
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
            if not own:
                continue
            with gathered_params(acc, [p for _, p in own]):
                pairs = [(f"{prefix}.{n}" if prefix else n, p.detach().clone()) for n, p in own]
            seen.update(id(p) for _, p in own)
        for name, tensor in pairs:
            mapped = hf_name(name)
            if mapped is not None:
                yield mapped, tensor


# ---------------------------------------------------------------- the check
@dataclass(frozen=True)
class Probe:
    """A fixed prompt + response both sides score: `seq` the trainer's input (build_sequence),
    `ids` its token ids, `start` the first response position, `images` the prompt's images."""

    seq: Any
    ids: list[int]
    start: int
    images: list


def make_probe(processor, messages: list[dict], *, media, eos_id: int, response: str = PROBE_RESPONSE) -> Probe:
    """The probe for a chat prompt: its visuals prepared once (r1rm.data.media.prepare_visuals with
    the run's budget) for both sides, the fixed response and EOS after it."""
    from r1rm.data.media import prepare_visuals
    from r1rm.runtime.rollout import build_sequence, encode_prompt

    msgs = prepare_visuals(messages, media)
    images = [p["image"] for m in msgs if isinstance(m.get("content"), list) for p in m["content"]
              if isinstance(p, dict) and p.get("type") == "image"]
    enc = encode_prompt(processor, msgs)
    tok = getattr(processor, "tokenizer", processor)
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + [eos_id]
    seq = build_sequence(enc, response_ids)
    return Probe(seq=seq, ids=seq.inputs["input_ids"][0].tolist(), start=seq.n_prompt, images=images)


def probe_gaps(engine, acc, model, probe: Probe, *, pad_id: int) -> torch.Tensor:
    """|trainer − engine| log-prob of each response token of the probe (every process: a forward)."""
    from r1rm.runtime.rollout import token_logprobs

    m = acc.unwrap_model(model)
    was_training = m.training
    m.eval()  # called right after an update: dropout, if the model has any, is no weight gap
    try:
        with torch.no_grad():
            lp, mask, _ = token_logprobs(m, [probe.seq], pad_id=pad_id, device=acc.device)
    finally:
        m.train(was_training)
    trainer = lp[0][mask[0].bool()].float().cpu()
    try:
        served = engine.prompt_logprobs(probe.ids, images=probe.images, start=probe.start)
    except ValueError as e:
        raise StaleWeightsError(f"the rollout engine cannot score the weight-sync probe as the trainer does: {e}") from None
    return (trainer - torch.tensor(served, dtype=torch.float32)).abs()


def _within(gap: float, tol: float) -> float:
    if not gap <= tol:  # NaN fails too
        raise StaleWeightsError(
            f"rollout engine log-probs differ from the trainer's by up to {gap:.4g} on a token (tolerance {tol}) "
            "after a weight push: the engine is generating with stale or mismatched weights (if it is 16-bit "
            "rounding instead, raise rl.logprob_check_tol; the weight_sync_gap metric shows the gaps)"
        )
    return gap


def check_gap(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, *, tol: float) -> float:
    """The largest |trainer − engine| log-prob over the valid tokens; StaleWeightsError past `tol` (NaN too)."""
    m = mask.bool()
    return _within(float((trainer_logp[m] - engine_logp[m]).abs().max()) if m.any() else 0.0, tol)


def check_engine(engine, acc, model, probe: Probe, *, pad_id: int, tol: float) -> float:
    """The probe's largest per-token gap between `engine` and the trainer (no push); StaleWeightsError past `tol`."""
    gap = float(probe_gaps(engine, acc, model, probe, pad_id=pad_id).max())
    return _within(gap, tol)


def push_and_check(engine, acc, model, probe: Probe, *, pad_id: int, tol: float,
                   reduce_max: Callable[[float], float] = float) -> dict:
    """Load the trainer's current weights into `engine` (every process, each into its own engine),
    then score the probe; {"gap", "tensors", "seconds"}. `reduce_max` takes the largest gap over the
    processes, so that all of them raise StaleWeightsError together when it is past `tol`."""
    t0 = time.perf_counter()
    n = engine.load_weights(trainer_weights(acc, model))
    gap = float(probe_gaps(engine, acc, model, probe, pad_id=pad_id).max())
    gap = reduce_max(gap if gap == gap else math.inf)  # NaN as inf: a max over processes keeps it
    return {"gap": _within(gap, tol), "tensors": n, "seconds": time.perf_counter() - t0}
