"""What `sft` and `rl` share around their training loops: the run's identity check, the set-up
(processes, seed, model and processor, optimizer and schedule, resume from the last checkpoint,
the metrics log) and the teardown (the final checkpoint, `<output_dir>/model`, summary.json).

Functions, not a trainer class: each command's `run` calls them in order and keeps its own loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1rm.config import Config, OptimConfig, RLConfig, save_config
from r1rm.runtime.checkpoint import (
    check_resumable,
    finished_before,
    kill_point,
    latest_checkpoint,
    load_checkpoint,
    remove_partial_checkpoints,
    run_identity,
    save_checkpoint,
)


@dataclass(frozen=True)
class Training:
    """A set-up training run: the processes, the model being trained and what steps it."""

    acc: Any  # accelerate.Accelerator
    model: Any  # prepared by the accelerator (DDP / DeepSpeed wrapper)
    ref: Any | None  # the frozen reference model, when asked for (rl with a KL term)
    processor: Any
    tok: Any  # the processor's tokenizer
    params: list  # the trainable parameters
    optimizer: Any
    scheduler: Any
    out: Path  # output_dir
    identity: dict  # the settings a resume must share (trainer_state.json "run")
    deepspeed: bool


def checked_identity(cfg: Config, command: str) -> dict:
    """The settings (and training-data hash) a resume of `command` must find unchanged; refuses an
    output_dir holding another run's checkpoints before anything is written."""
    from r1rm.data.files import check_output_dir
    from r1rm.data.training_sets import data_fingerprint

    check_output_dir(cfg.output_dir)  # a folder that cannot be written: refused before anything else
    identity = {**run_identity(cfg, command), "data.train.sha256": data_fingerprint(cfg.data.train)}
    if cfg.runtime.resume:
        check_resumable(Path(cfg.output_dir), identity, command, cfg.data.train)
    return identity


def start_training(cfg: Config, oc: OptimConfig, *, identity: dict, accum: int, total_steps: int,
                   reference: bool = False) -> Training:
    """Processes, config.yaml, the seed, processor and model (fp32 master weights; autocast does
    bf16), the reference model if asked, the optimizer `oc` names and its warm-up + decay schedule
    over `total_steps` optimizer steps, all prepared by the accelerator."""
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    from r1rm.core.schedules import lr_multiplier
    from r1rm.models.loading import check_context, check_model, hub_kwargs, load_model_for, load_processor_for
    from r1rm.runtime.accel import make_accelerator, make_optimizer, prepare_reference
    from r1rm.runtime.modelprep import prepare_for_training
    from r1rm.runtime.tracking import resolve

    # before the processes start and the weights load: a damaged checkpoint (config.json, safetensors
    # headers), or responses longer than the model's positions
    config = check_model(cfg.model.path, **hub_kwargs(cfg.model))
    if isinstance(oc, RLConfig):
        check_context(config, cfg.model.path, new_tokens=oc.max_new_tokens, key="rl.max_new_tokens")
    acc = make_accelerator(deepspeed_config=cfg.runtime.deepspeed, grad_accum=accum, micro_batch=oc.micro_batch_size,
                           max_grad_norm=oc.max_grad_norm, device=cfg.runtime.device,
                           mixed_precision=cfg.runtime.mixed_precision, log_with=resolve(cfg.runtime.report_to),
                           out_dir=cfg.output_dir)
    torch.manual_seed(cfg.seed)
    processor = load_processor_for(cfg.model)
    dtype = "float32" if cfg.model.dtype == "auto" else cfg.model.dtype
    device = "cpu" if acc.device.type == "cpu" else str(acc.device)
    model = prepare_for_training(load_model_for(cfg.model, dtype=dtype, device=device), cfg.model)
    if acc.is_main_process:
        save_config(cfg)  # once the model has loaded: a failed start leaves no folder behind
    ref = None
    if reference:
        ref = load_model_for(cfg.model, dtype=dtype, device=device)
        ref.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, oc)
    warmup = int(oc.warmup_ratio * total_steps)
    scheduler = LambdaLR(optimizer, lambda s: lr_multiplier(s, total_steps=total_steps, warmup_steps=warmup,
                                                            kind=oc.lr_schedule))
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    if ref is not None:
        ref = prepare_reference(acc, ref)
    return Training(acc=acc, model=model, ref=ref, processor=processor, tok=getattr(processor, "tokenizer", processor),
                    params=params, optimizer=optimizer, scheduler=scheduler, out=Path(cfg.output_dir),
                    identity=identity, deepspeed=cfg.runtime.deepspeed is not None)


def resume(t: Training, cfg: Config) -> tuple[Path | None, dict]:
    """The last complete checkpoint (runtime.resume) with the model, optimizer, scheduler and RNG
    states restored, and its trainer state; (None, {}) for a fresh start."""
    ckpt = latest_checkpoint(t.out) if cfg.runtime.resume else None
    if t.acc.is_main_process:
        # on every start (a finished run's rerun saves nothing, a run killed in its first save has no
        # checkpoint): what a kill left half-written goes now, not at the next save
        removed = remove_partial_checkpoints(t.out)
        if removed:
            from rich.console import Console

            Console(stderr=True).print(f"removed what a killed run left half-written: {', '.join(removed)}")
    kill_point("load")  # the kill-and-resume tests' "while loading" moment (model loaded, state not yet)
    return ckpt, (load_checkpoint(t.acc, ckpt) if ckpt is not None else {})


def open_log(t: Training, cfg: Config, *, step: int):
    """The metrics log (main process), with rows after `step` (a resume's) dropped, and the
    experiment trackers (runtime.report_to) — the same tracker runs again when resuming."""
    from r1rm.runtime.metrics_log import MetricsLog

    return MetricsLog(t.out, enabled=t.acc.is_main_process, resume_step=step, acc=t.acc,
                      trackers=[str(x) for x in t.acc.log_with], explicit=cfg.runtime.report_to != "all",
                      project=cfg.runtime.project, run_config=cfg.model_dump(mode="json"))


def save(t: Training, *, step: int, keep_last: int, state: dict, extra: dict | None = None,
         final: bool = False) -> None:
    """A checkpoint of every process; trainer_state.json = the run's identity, the step and `state`."""
    save_checkpoint(t.acc, t.model, t.processor, t.out, step=step, keep_last=keep_last,
                    trainer_state={"run": t.identity, "step": step, **state, **({"final": True} if final else {})},
                    extra=extra)


def finished_summary(t: Training, ckpt: Path | None, *, step: int, resumed_at: int) -> dict | None:
    """summary.json of a finished run that this rerun resumed with nothing left to train (it saves
    nothing again: runtime.checkpoint.finished_before); None otherwise."""
    if finished_before(t.out, ckpt, step=step, resumed_at=resumed_at):
        return json.loads((t.out / "summary.json").read_text())
    return None


def final_state_dict(t: Training, *, step: int, keep_last: int, state: dict, extra: dict | None = None) -> dict:
    """The final checkpoint (marked final), then the full state dict (every process takes part)."""
    save(t, step=step, keep_last=keep_last, state=state, extra=extra, final=True)
    return t.acc.get_state_dict(t.model)


def write_outputs(t: Training, state_dict: dict, summary: dict) -> None:
    """`<output_dir>/model` (Hugging Face format) and summary.json, by the main process."""
    from r1rm.runtime.modelprep import save_hf

    if t.acc.is_main_process:
        save_hf(t.acc.unwrap_model(t.model), t.processor, t.out / "model", state_dict=state_dict)
        (t.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    kill_point("end")  # the kill-and-resume tests' "after the end" moment


def close(t: Training, log, *engines, wait: bool = True) -> None:
    """Close the metrics log and the engines given (None: none), then end the processes."""
    log.close()
    for engine in engines:
        if engine is not None:
            engine.close()
    if wait:
        t.acc.wait_for_everyone()
    t.acc.end_training()
