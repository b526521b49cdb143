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

from r1rm.config import Config, OptimConfig, PeriodicEvalConfig, RLConfig, save_config
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


def check_keep_best(cfg: Config, command: str) -> None:
    """keep_best needs its periodic eval: refused before anything is written."""
    from r1rm.errors import ConfigError

    section = getattr(cfg, command)
    if section.keep_best and not (section.eval_every_steps and cfg.data.eval):
        raise ConfigError(f"{command}.keep_best needs the periodic eval: {command}.eval_every_steps > 0 and a data.eval file",
                          fix=f"set {command}.eval_every_steps and data.eval=[a validation split] (not the test set), "
                          f"or drop {command}.keep_best")


def held_out_eval(cfg: Config, acc, model, processor, *, step: int, limit: int | None, max_new_tokens: int) -> dict:
    """Greedy both-orders accuracy of the model being trained on data.eval's first `limit` items (split
    across processes)."""
    from accelerate.utils import gather_object

    from r1rm.core.metrics import compute_metrics
    from r1rm.data.chat import oriented, record_messages
    from r1rm.data.generations import generation_row
    from r1rm.data.training_sets import read_items
    from r1rm.engines.base import Request, SamplingParams
    from r1rm.engines.hf import HFEngine
    from r1rm.runtime.accel import gathered_for_generation

    items = read_items(cfg.data.eval, image_root=cfg.data.image_root, target_field=None,
                       max_pixels=cfg.model.max_pixels)[:limit]
    mine = items[acc.process_index::acc.num_processes]
    engine = HFEngine(acc.unwrap_model(model), processor, batch_size=cfg.engine.batch_size,
                      share_prefill=cfg.engine.share_prefill)
    reqs, meta = [], []
    for it in mine:
        for order in ("chosen_first", "chosen_second"):
            rec = oriented(it.rec, order)
            reqs.append(Request(record_messages(rec, prompt=cfg.data.prompt, image_root=it.root,
                                                video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)))
            meta.append((it.rec, order))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    with gathered_for_generation(acc, model):
        results = engine.generate(reqs, params)
    rows = [generation_row(rec, order, 0, samples[0], allow_fallback=cfg.eval.answer_fallback)
            for (rec, order), samples in zip(meta, results, strict=True)]
    rows = gather_object(rows) if acc.num_processes > 1 else rows
    m = compute_metrics(rows, benchmark="canonical")
    accuracy = m["accuracy"]
    return {"eval/both_orders_strict": accuracy["both_orders_strict"]["overall"],
            "eval/both_orders_mean": accuracy["both_orders_mean"]["overall"],
            "eval/chosen_first": accuracy["chosen_first"]["overall"],
            "eval/chosen_second": accuracy["chosen_second"]["overall"],
            "eval/parse_fail_rate": m["parse_fail_rate"], "eval/step": step}


def periodic_eval(cfg: Config, t: Training, section: PeriodicEvalConfig, *, step: int, total: int, best: dict | None,
                  max_new_tokens: int) -> tuple[dict, dict | None] | None:
    """At an eval step (every `section.eval_every_steps`, and the last): the held-out metrics and the
    best record, `<output_dir>/best` rewritten when it improved (keep_best); None between evals."""
    from r1rm.core.metrics import improved_best
    from r1rm.runtime.checkpoint import save_best

    if not (section.eval_every_steps and cfg.data.eval and (step % section.eval_every_steps == 0 or step == total)):
        return None
    last = held_out_eval(cfg, t.acc, t.model, t.processor, step=step, limit=section.eval_limit,
                         max_new_tokens=max_new_tokens)
    new_best = improved_best(best, value=last[f"eval/{section.best_metric}"], step=step,
                             metric=section.best_metric) if section.keep_best else None
    if new_best is not None:  # the eval is gathered: every process takes the same branch
        save_best(t.acc, t.model, t.processor, t.out, record=new_best)
        best = new_best
    return last, best


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
