"""The training runtime's process set-up: accelerate with or without DeepSpeed ZeRO-2/3.

One process, or several under `torchrun` / `accelerate launch` (several nodes too): r1rm
never starts processes itself. DeepSpeed runs on GPUs and, for tests, on CPUs over gloo.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from r1rm.data.files import LineError, loads_json
from r1rm.errors import ConfigError, InputFileError


def mixed_precision_for(setting: str, device: str) -> str:
    """'auto' → bf16 on CUDA, 'no' on CPU."""
    if setting == "auto":
        return "bf16" if device.startswith("cuda") else "no"
    return setting


def make_accelerator(*, deepspeed_config: str | None, grad_accum: int, micro_batch: int, max_grad_norm: float | None,
                     device: str, mixed_precision: str = "auto", log_with: list[str] | None = None,
                     out_dir: str | None = None):
    """An Accelerator for this launch; with `deepspeed_config`, DeepSpeed ZeRO from that JSON.
    `log_with`: the experiment trackers (runtime.tracking.resolve), TensorBoard's under `out_dir`."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration

    cpu_only = device == "cpu" or not torch.cuda.is_available()
    mp = mixed_precision_for(mixed_precision, "cpu" if cpu_only else "cuda")
    tracking = {}
    if log_with:
        from r1rm.runtime.tracking import TB_DIR

        tracking = {"log_with": log_with, "project_config": ProjectConfiguration(
            project_dir=str(out_dir), logging_dir=str(Path(out_dir) / TB_DIR))}
    if deepspeed_config is None:
        from accelerate.utils import DistributedDataParallelKwargs

        # batches mix image, video and text-only samples: a process whose micro-batch has no
        # image leaves the vision tower without gradients, which plain DDP rejects
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        return Accelerator(cpu=cpu_only, gradient_accumulation_steps=grad_accum, mixed_precision=mp,
                           kwargs_handlers=[ddp], **tracking)
    from accelerate.utils import DeepSpeedPlugin

    path = Path(deepspeed_config)
    if not path.is_file():
        raise InputFileError(f"DeepSpeed config not found: '{path}'", fix="set runtime.deepspeed to recipes/deepspeed/zero2.json or zero3.json")
    try:
        ds = loads_json(path.read_bytes())
    except LineError as e:
        raise ConfigError(f"DeepSpeed config is not JSON r1rm reads: {e.brief}", where=str(path),
                          fix=e.hint or "fix the file, or use recipes/deepspeed/zero2.json or zero3.json") from None
    try:
        import deepspeed  # noqa: F401  (the only place r1rm imports deepspeed)
    except ImportError:
        from r1rm.errors import MissingDependencyError

        raise MissingDependencyError("DeepSpeed is not installed", fix="pip install 'r1rm[deepspeed]'") from None
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    if cpu_only and "LOCAL_RANK" in os.environ:
        # accelerate picks no backend for DeepSpeed on CPUs: initialise gloo first
        PartialState(backend="gloo")
    # r1rm feeds its own batches (no prepared DataLoader), so DeepSpeed's "auto" sizes are set here
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds.pop("train_batch_size", None)
    plugin = DeepSpeedPlugin(hf_ds_config=ds, gradient_accumulation_steps=grad_accum,
                             gradient_clipping=max_grad_norm or 0.0)  # DeepSpeed: 0 = no clipping
    return Accelerator(deepspeed_plugin=plugin, gradient_accumulation_steps=grad_accum, mixed_precision=mp, **tracking)


def split_batch(global_batch: int, micro_batch: int, world: int, *,
                keys: tuple[str, str] = ("batch_size", "micro_batch_size")) -> int:
    """Gradient-accumulation steps so that micro_batch × world × accum == global_batch (`keys`: the
    two settings' dotted names, for the message)."""
    per_step = micro_batch * world
    if global_batch % per_step:
        raise ConfigError(
            f"{keys[0]}={global_batch} is not divisible by {keys[1]} × processes = {micro_batch} × {world}",
            fix=f"set {keys[0]} to a multiple of {per_step}, or change {keys[1]} / the process count",
        )
    return global_batch // per_step


def gathered_for_generation(acc, model):
    """Full parameters in place for `generate`: under ZeRO-3 the whole model is gathered from every
    process for the duration (all processes must enter); otherwise nothing to do."""
    return gathered_params(acc, list(model.parameters()))


def prepare_reference(acc, model):
    """A frozen model (RL's reference) ready to forward on every process. Under ZeRO-3 the loader
    built it partitioned (each process holds a shard of every weight), so it runs inside its own
    DeepSpeed inference engine that gathers a module's weights for its forward, as the policy's
    does — all processes forward it the same number of times; otherwise it is the plain model.
    Call after `acc.prepare` (DeepSpeed's "auto" sizes are filled then)."""
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is None or ds.zero_stage != 3:
        return model
    import copy

    import deepspeed

    config = copy.deepcopy(ds.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval returns None, not the engine
    return engine


@contextlib.contextmanager
def gathered_params(acc, params: list):
    """These parameters whole on every process for the duration (ZeRO-3: gathered from every
    process, which must all enter with the same list; otherwise nothing to do) — a weight push
    gathers one module at a time this way, never the whole model."""
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is None or ds.zero_stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def make_optimizer(params, oc):
    """The optimizer an `OptimConfig` section names (sft and rl share it)."""
    import torch

    if oc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=oc.lr, weight_decay=oc.weight_decay)
    return torch.optim.AdamW(params, lr=oc.lr, weight_decay=oc.weight_decay, betas=(0.9, 0.95))


def apply_update(acc, params, optimizer, scheduler, *, bad, max_grad_norm: float | None, deepspeed: bool,
                 counters: dict):
    """At the accumulation boundary: clip, and step the optimizer and scheduler — unless any
    process saw a non-finite loss or the gradient norm is not finite, in which case the update
    is skipped and counted (`counters["skipped_updates"]`). Under DeepSpeed the engine clips and
    steps inside backward, so only the count of non-finite micro-batches applies, and the norm is
    the one the engine measured (before clipping, as here). Returns the grad norm."""
    import torch

    from r1rm.runtime.checkpoint import kill_point

    kill_point("step")  # the kill-and-resume tests' mid-step moment (no effect unless _R1RM_TEST_KILL_AT says)
    # no clipping (None) still measures the norm: an infinite bound leaves the gradients as they are
    bound = float("inf") if max_grad_norm is None else max_grad_norm
    # under DeepSpeed accelerate only reads the engine's global norm of the step it just took
    grad_norm = acc.clip_grad_norm_(params, bound)
    any_bad = float(acc.reduce(bad.clone(), reduction="sum")) > 0
    if grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)):
        any_bad = True
    if any_bad and not deepspeed:
        counters["skipped_updates"] += 1
    else:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
