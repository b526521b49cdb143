"""`r1rm sft`: long-CoT supervised fine-tuning of a chat VLM judge (R1-Reward cold start,
MSRL stage-1 SFT, CMKD distillation).

Algorithm, top to bottom:
1. Read the training records (`data.train`: JSONL files or build-data folders); each needs a
   target text (`meta[sft.target_field]`, else `meta.trace`).
2. Set up the processes (accelerate; DeepSpeed ZeRO-2/3 with `runtime.deepspeed`), load the
   model, freeze / LoRA / gradient checkpointing as `model.*` says.
3. Each epoch visits the records in a seeded permutation; every optimizer step takes
   `sft.batch_size` samples, each process its share in micro-batches of
   `sft.micro_batch_size` (gradient accumulation makes up the rest).
4. Loss = cross-entropy on the assistant's tokens only, summed and divided by the number of
   supervised tokens in the whole global batch (all micro-batches, all processes) — exactly
   the loss of one big batch, unlike per-micro-batch means.
5. AdamW, warm-up + cosine (or linear / constant) schedule, gradient clipping. A step whose
   loss or gradient is not finite is skipped and counted (under DeepSpeed the offending
   micro-batch contributes a zero gradient instead: DeepSpeed steps inside backward).
6. Every `sft.save_every_steps` an atomic checkpoint (HF model + optimizer, scheduler, RNG,
   data position); a rerun resumes from the last complete one and reproduces the loss curve.
   The final model goes to `<output_dir>/model`.

Departures from the R1-Reward paper: none in the objective; the paper's batch 256 / lr 1e-5
/ 1 epoch are the defaults.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from r1rm.config import Config, run_identity, save_config
from r1rm.errors import DataError


def _target_tokens(encoded: list) -> int:
    return sum(e.n_target for e in encoded)


def run(cfg: Config) -> dict:
    import os

    import torch
    from torch.optim.lr_scheduler import LambdaLR

    from r1rm.core.prompts import user_message
    from r1rm.core.schedules import lr_multiplier
    from r1rm.core.sft_loss import logits_window, token_ce_sum
    from r1rm.data.chat import record_messages
    from r1rm.data.training_sets import data_fingerprint, epoch_order, read_items
    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.accel import apply_update, make_accelerator, make_optimizer, split_batch
    from r1rm.runtime.batches import TooLong, collate, encode_sft
    from r1rm.runtime.checkpoint import (
        check_resumable,
        finished_before,
        latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )
    from r1rm.runtime.metrics_log import MetricsLog
    from r1rm.runtime.modelprep import prepare_for_training, save_hf
    from r1rm.runtime.progress import make_progress

    sc = cfg.sft
    out = Path(cfg.output_dir)
    identity = {**run_identity(cfg, "sft"), "data.train.sha256": data_fingerprint(cfg.data.train)}
    if cfg.runtime.resume:  # another run's checkpoints here: refused before anything is written
        check_resumable(out, identity, "sft", cfg.data.train)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum = split_batch(sc.batch_size, sc.micro_batch_size, world)  # a config mistake stops before any reading
    items = read_items(cfg.data.train, image_root=cfg.data.image_root, target_field=sc.target_field)

    # ---- processes, model, optimizer
    acc = make_accelerator(deepspeed_config=cfg.runtime.deepspeed, grad_accum=accum, micro_batch=sc.micro_batch_size,
                           max_grad_norm=sc.max_grad_norm, device=cfg.runtime.device,
                           mixed_precision=cfg.runtime.mixed_precision)
    rank = acc.process_index
    if acc.is_main_process:
        save_config(cfg)
    torch.manual_seed(cfg.seed)
    processor = load_processor(cfg.model.path, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels)
    tok = getattr(processor, "tokenizer", processor)
    dtype = "float32" if cfg.model.dtype == "auto" else cfg.model.dtype  # fp32 master weights; autocast does bf16
    model = load_model(cfg.model.path, dtype=dtype, device="cpu" if acc.device.type == "cpu" else str(acc.device),
                       attn_implementation=cfg.model.attn_implementation)
    model = prepare_for_training(model, cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, sc)

    steps_per_epoch = len(items) // sc.batch_size if sc.drop_last else math.ceil(len(items) / sc.batch_size)
    if steps_per_epoch == 0:
        raise DataError(f"{len(items)} training samples are fewer than one batch of {sc.batch_size}",
                        fix="lower sft.batch_size or add data")
    total_steps = sc.max_steps or math.ceil(sc.epochs * steps_per_epoch)
    warmup = int(sc.warmup_ratio * total_steps)
    scheduler = LambdaLR(optimizer, lambda s: lr_multiplier(s, total_steps=total_steps, warmup_steps=warmup,
                                                            kind=sc.lr_schedule))
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    deepspeed = cfg.runtime.deepspeed is not None

    # ---- resume
    step, counters = 0, {"skipped_too_long": 0, "skipped_updates": 0, "nonfinite_microbatches": 0}
    tokens_seen, last_loss = 0, float("nan")  # run totals for summary.json: carried by the checkpoints
    ckpt = latest_checkpoint(out) if cfg.runtime.resume else None
    if ckpt is not None:
        state = load_checkpoint(acc, ckpt)
        step, counters = state["step"], state["counters"]
        tokens_seen, last_loss = state.get("tokens_seen", 0), state.get("last_loss", float("nan"))
    resumed_at = step
    log = MetricsLog(out, enabled=acc.is_main_process, resume_step=step, tensorboard=cfg.runtime.tensorboard,
                     wandb_project=cfg.runtime.wandb_project, run_config=cfg.model_dump(mode="json"))

    def encode(i: int):
        it = items[i]
        msgs = record_messages(it.rec, prompt=cfg.data.prompt, image_root=it.root,
                               video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)
        try:
            return encode_sft(processor, msgs, it.target, max_len=sc.max_seq_len)
        except TooLong as e:
            if sc.on_truncation == "error":
                raise DataError(f"sample {it.rec.uid} has {e.n_tokens} tokens, more than sft.max_seq_len={e.limit}",
                                where=it.where, fix="raise sft.max_seq_len, lower model.max_pixels, "
                                                    "or set sft.on_truncation=skip") from None
            return None

    # ---- train
    model.train()
    last_good: list = []
    t_start = time.perf_counter()
    with make_progress(enabled=cfg.runtime.progress and acc.is_main_process, unit="steps") as bar:
        task = bar.add_task("sft", total=total_steps, completed=step)
        while step < total_steps:
            epoch, b = divmod(step, steps_per_epoch)
            order = epoch_order(len(items), seed=cfg.seed, epoch=epoch)
            batch_idx = order[b * sc.batch_size:(b + 1) * sc.batch_size]
            mine = batch_idx[rank::acc.num_processes]
            encoded = [encode(i) for i in mine]
            n_skipped = sum(e is None for e in encoded)
            encoded = [e for e in encoded if e is not None]
            if encoded:
                last_good = encoded[:1]
            # a process whose share was all skipped still runs forward/backward (weight 0) so that
            # every process takes part in the same collective calls
            fallback = last_good or [encode_sft(processor, user_message("."), ".", max_len=10**9)]
            n_target = torch.tensor([_target_tokens(encoded), n_skipped], device=acc.device, dtype=torch.float64)
            n_target = acc.reduce(n_target, reduction="sum")
            global_tokens, global_skipped = float(n_target[0]), int(n_target[1])
            counters["skipped_too_long"] += global_skipped
            t0 = time.perf_counter()
            loss_total = torch.zeros((), device=acc.device, dtype=torch.float64)
            bad = torch.zeros((), device=acc.device)
            step_tokens = 0
            for m in range(accum):
                chunk = encoded[m * sc.micro_batch_size:(m + 1) * sc.micro_batch_size]
                weight = 1.0
                if not chunk:
                    chunk, weight = fallback, 0.0
                batch = {k: v.to(acc.device) for k, v in collate(chunk, pad_id=tok.pad_token_id).items()}
                labels = batch.pop("labels")
                step_tokens += int(batch["attention_mask"].sum())
                with acc.accumulate(model):
                    with acc.autocast():
                        keep = logits_window(labels)
                        logits = model(**batch, logits_to_keep=keep).logits
                        loss_sum, _ = token_ce_sum(logits, labels[:, -keep:])
                    finite = bool(torch.isfinite(loss_sum))
                    if not finite:
                        bad += 1
                        counters["nonfinite_microbatches"] += 1
                        loss_sum = logits.float().nan_to_num(0.0, 0.0, 0.0).sum() * 0.0
                    scale = weight * acc.num_processes * accum / max(global_tokens, 1.0)
                    acc.backward(loss_sum * scale)
                    loss_total += loss_sum.detach().double() * weight
                    if acc.sync_gradients:
                        grad_norm = apply_update(acc, params, optimizer, scheduler, bad=bad, max_grad_norm=sc.max_grad_norm,
                                                 deepspeed=deepspeed, counters=counters)
            if deepspeed and hasattr(model, "get_global_grad_norm"):
                grad_norm = model.get_global_grad_norm()
            loss_all = float(acc.reduce(loss_total, reduction="sum")) / max(global_tokens, 1.0)
            tokens_all = int(acc.reduce(torch.tensor(step_tokens, device=acc.device), reduction="sum"))
            tokens_seen += tokens_all
            step += 1
            last_loss = loss_all
            dt = time.perf_counter() - t0
            lr = scheduler.get_last_lr()[0]
            metrics = {"epoch": epoch + (b + 1) / steps_per_epoch, "loss": loss_all, "lr": lr,
                       "grad_norm": None if grad_norm is None else float(grad_norm),
                       "tokens": tokens_all, "supervised_tokens": int(global_tokens), "tokens_per_s": tokens_all / dt,
                       "step_time_s": dt, **counters}
            if step % cfg.runtime.log_every_steps == 0 or step == total_steps:
                log.log(step, metrics)
            bar.update(task, advance=1, description=f"sft loss {loss_all:.4f} lr {lr:.2e} {tokens_all / dt:,.0f} tok/s")
            if step % sc.save_every_steps == 0 and step < total_steps:
                save_checkpoint(acc, model, processor, out, step=step, keep_last=sc.keep_last,
                                trainer_state={"run": identity, "step": step, "epoch": epoch, "batch_in_epoch": b + 1, "counters": counters,
                                               "tokens_seen": tokens_seen, "last_loss": last_loss})

    # ---- final model
    if finished_before(out, ckpt, step=step, resumed_at=resumed_at):
        log.close()
        acc.end_training()
        return json.loads((out / "summary.json").read_text())
    save_checkpoint(acc, model, processor, out, step=step, keep_last=sc.keep_last,
                    trainer_state={"run": identity, "step": step, "counters": counters, "tokens_seen": tokens_seen, "last_loss": last_loss,
                                   "final": True})
    state_dict = acc.get_state_dict(model)
    summary = {"steps": step, "final_loss": last_loss, "samples": len(items), "processes": acc.num_processes,
               "grad_accum": accum, "train_time_s": time.perf_counter() - t_start, "tokens_seen": tokens_seen, **counters}
    if acc.device.type == "cuda":
        summary["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if acc.is_main_process:
        save_hf(acc.unwrap_model(model), processor, out / "model", state_dict=state_dict)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        from rich.console import Console

        Console().print(f"sft done: {step} steps, final loss {last_loss:.4f}; model in [bold]{out / 'model'}[/] "
                        f"({counters['skipped_too_long']} samples skipped as too long, "
                        f"{counters['skipped_updates']} updates skipped as non-finite)")
    log.close()
    acc.wait_for_everyone()
    acc.end_training()
    return summary
