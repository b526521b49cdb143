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
6. Every `sft.eval_every_steps` (and at the last step), with data.eval given: greedy both-orders
   accuracy on it, logged as eval/*; with `sft.keep_best` the model with the best `sft.best_metric`
   so far is kept in `<output_dir>/best` (best.json: step, value), for the next stage to start from.
7. Every `sft.save_every_steps` an atomic checkpoint (HF model + optimizer, scheduler, RNG,
   data position); a rerun resumes from the last complete one and reproduces the loss curve.
   The final model goes to `<output_dir>/model`.

Departures from the R1-Reward paper: none in the objective; the paper's batch 256 / lr 1e-5
/ 1 epoch are the defaults.
"""

from __future__ import annotations

import math
import os
import time

from r1rm.config import Config
from r1rm.errors import DataError
from r1rm.runtime import training
from r1rm.runtime.training import Training


def _target_tokens(encoded: list) -> int:
    return sum(e.n_target for e in encoded)


def run(cfg: Config) -> dict:
    from r1rm.data.training_sets import read_items
    from r1rm.runtime.accel import split_batch
    from r1rm.runtime.progress import make_progress

    sc = cfg.sft
    identity = training.checked_identity(cfg, "sft")  # another run's checkpoints: refused before any write
    training.check_keep_best(cfg, "sft")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum = split_batch(sc.batch_size, sc.micro_batch_size, world, keys=("sft.batch_size", "sft.micro_batch_size"))  # a config mistake stops before any reading
    items = read_items(cfg.data.train, image_root=cfg.data.image_root, target_field=sc.target_field,
                       max_pixels=cfg.model.max_pixels)
    steps_per_epoch = len(items) // sc.batch_size if sc.drop_last else math.ceil(len(items) / sc.batch_size)
    if steps_per_epoch == 0:
        raise DataError(f"{len(items)} training samples are fewer than one batch of {sc.batch_size}",
                        fix="lower sft.batch_size or add data")
    total_steps = sc.max_steps or math.ceil(sc.epochs * steps_per_epoch)

    # ---- processes, model, optimizer; resume
    t = training.start_training(cfg, sc, identity=identity, accum=accum, total_steps=total_steps)
    if sc.keep_best and t.acc.is_main_process:
        from r1rm.runtime.checkpoint import recover_best

        recover_best(t.out)  # a swap a kill interrupted
    ckpt, state = training.resume(t, cfg)
    step = state.get("step", 0)
    # the periodic eval's last metrics and best record (sft.keep_best): carried by the checkpoints
    last_eval, best = state.get("last_eval", {}), state.get("best")
    counters = state.get("counters", {"skipped_too_long": 0, "skipped_updates": 0, "nonfinite_microbatches": 0})
    # run totals for summary.json: carried by the checkpoints
    tokens_seen, last_loss = state.get("tokens_seen", 0), state.get("last_loss", float("nan"))
    resumed_at = step
    log = training.open_log(t, cfg, step=step)
    encode = _encoder(cfg, t.processor, items)

    # ---- train
    t.model.train()
    last_good: list = []
    t_start = time.perf_counter()
    with make_progress(enabled=cfg.runtime.progress and t.acc.is_main_process, unit="steps") as bar:
        task = bar.add_task("sft", total=total_steps, completed=step)
        while step < total_steps:
            epoch, b = divmod(step, steps_per_epoch)
            encoded, n_skipped = _encoded_batch(cfg, t, encode, len(items), epoch=epoch, b=b)
            if encoded:
                last_good = encoded[:1]
            m = _train_step(t, sc, accum=accum, encoded=encoded, n_skipped=n_skipped, last_good=last_good,
                            counters=counters)
            tokens_seen += m["tokens"]
            step += 1
            last_loss = m["loss"]
            lr = t.scheduler.get_last_lr()[0]
            metrics = {"epoch": epoch + (b + 1) / steps_per_epoch, "loss": m["loss"], "lr": lr,
                       "grad_norm": m["grad_norm"], "tokens": m["tokens"], "supervised_tokens": m["supervised_tokens"],
                       "tokens_per_s": m["tokens"] / m["dt"], "step_time_s": m["dt"], **counters}
            evaluated = training.periodic_eval(cfg, t, sc, step=step, total=total_steps, best=best,
                                               max_new_tokens=cfg.generation.max_new_tokens)
            if evaluated is not None:
                last_eval, best = evaluated
                metrics.update(last_eval)
            if step % cfg.runtime.log_every_steps == 0 or step == total_steps or evaluated is not None:
                log.log(step, metrics)
            bar.update(task, advance=1,
                       description=f"sft loss {m['loss']:.4f} lr {lr:.2e} {m['tokens'] / m['dt']:,.0f} tok/s")
            if step % sc.save_every_steps == 0 and step < total_steps:
                training.save(t, step=step, keep_last=sc.keep_last,
                              state={"epoch": epoch, "batch_in_epoch": b + 1, "counters": counters,
                                     "tokens_seen": tokens_seen, "last_loss": last_loss, "last_eval": last_eval,
                                     "best": best})

    # ---- final model
    done = training.finished_summary(t, ckpt, step=step, resumed_at=resumed_at)
    if done is not None:
        training.close(t, log, wait=False)
        return done
    state_dict = training.final_state_dict(t, step=step, keep_last=sc.keep_last,
                                           state={"counters": counters, "tokens_seen": tokens_seen,
                                                  "last_loss": last_loss, "last_eval": last_eval, "best": best})
    summary = {"steps": step, "final_loss": last_loss, "samples": len(items), "processes": t.acc.num_processes,
               "grad_accum": accum, "train_time_s": time.perf_counter() - t_start, "tokens_seen": tokens_seen,
               **counters, **last_eval, **({"best": best} if sc.keep_best else {})}
    if t.acc.device.type == "cuda":
        import torch

        summary["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    training.write_outputs(t, state_dict, summary)
    if t.acc.is_main_process:
        from rich.console import Console

        Console().print(f"sft done: {step} steps, final loss {last_loss:.4f}; model in [bold]{t.out / 'model'}[/] "
                        f"({counters['skipped_too_long']} samples skipped as too long, "
                        f"{counters['skipped_updates']} updates skipped as non-finite)")
        if best is not None:
            Console().print(f"best periodic eval: {best['metric']} {best['value']:.4f} at step {best['step']} "
                            f"([bold]{t.out / 'best'}[/])")
    training.close(t, log)
    return summary


def _encoder(cfg: Config, processor, items: list):
    """encode(i): item i as SFT inputs, or None for one over sft.max_seq_len (sft.on_truncation=skip)."""
    from r1rm.data.chat import record_messages
    from r1rm.runtime.batches import TooLong, encode_sft

    sc = cfg.sft

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

    return encode


def _encoded_batch(cfg: Config, t: Training, encode, n_items: int, *, epoch: int, b: int) -> tuple[list, int]:
    """This process's share of global batch `b` of `epoch` (a seeded permutation per epoch), encoded;
    and how many of its samples were skipped as too long."""
    from r1rm.data.training_sets import epoch_order

    sc = cfg.sft
    order = epoch_order(n_items, seed=cfg.seed, epoch=epoch)
    batch_idx = order[b * sc.batch_size:(b + 1) * sc.batch_size]
    encoded = [encode(i) for i in batch_idx[t.acc.process_index::t.acc.num_processes]]
    return [e for e in encoded if e is not None], sum(e is None for e in encoded)


def _train_step(t: Training, sc, *, accum: int, encoded: list, n_skipped: int, last_good: list,
                counters: dict) -> dict:
    """One optimizer step over this process's encoded samples in `accum` micro-batches; the loss is
    the token sum over the global batch divided by its supervised tokens (all processes).
    Returns the step's loss, grad norm, token counts and wall time."""
    import torch

    from r1rm.core.prompts import user_message
    from r1rm.core.sft_loss import logits_window, token_ce_sum
    from r1rm.runtime.accel import apply_update
    from r1rm.runtime.batches import collate, encode_sft

    acc, model = t.acc, t.model
    # a process whose share was all skipped still runs forward/backward (weight 0) so that
    # every process takes part in the same collective calls
    fallback = last_good or [encode_sft(t.processor, user_message("."), ".", max_len=10**9)]
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
        batch = {k: v.to(acc.device) for k, v in collate(chunk, pad_id=t.tok.pad_token_id).items()}
        labels = batch.pop("labels")
        step_tokens += int(batch["attention_mask"].sum())
        with acc.accumulate(model):
            with acc.autocast():
                keep = logits_window(labels)
                logits = model(**batch, logits_to_keep=keep).logits
                loss_sum, _ = token_ce_sum(logits, labels[:, -keep:])
            if not bool(torch.isfinite(loss_sum)):
                bad += 1
                counters["nonfinite_microbatches"] += 1
                loss_sum = logits.float().nan_to_num(0.0, 0.0, 0.0).sum() * 0.0
            scale = weight * acc.num_processes * accum / max(global_tokens, 1.0)
            acc.backward(loss_sum * scale)
            loss_total += loss_sum.detach().double() * weight
            if acc.sync_gradients:
                grad_norm = apply_update(acc, t.params, t.optimizer, t.scheduler, bad=bad,
                                         max_grad_norm=sc.max_grad_norm, deepspeed=t.deepspeed, counters=counters)
    if t.deepspeed and hasattr(model, "get_global_grad_norm"):
        grad_norm = model.get_global_grad_norm()
    loss_all = float(acc.reduce(loss_total, reduction="sum")) / max(global_tokens, 1.0)
    tokens_all = int(acc.reduce(torch.tensor(step_tokens, device=acc.device), reduction="sum"))
    return {"loss": loss_all, "grad_norm": None if grad_norm is None else float(grad_norm), "tokens": tokens_all,
            "supervised_tokens": int(global_tokens), "dt": time.perf_counter() - t0}
