"""`r1rm rl`: reinforcement learning of a generative reward model — StableReinforce and its baselines.

Algorithm (one rollout step), top to bottom:
1. Take `rl.rollout_batch_size` prompts (file order or a seeded shuffle per epoch; each process
   its share) and sample `rl.n_samples_per_prompt` responses each with the policy
   (`rl.rollout_engine`: hf generate on the training model, or colocated vLLM).
2. Score each response (METHOD §2): format, result, consistency (`rl.consistency_judge`: rule,
   model, none) → total = result·(1 + w_c·consistency) + w_f·format (+ w_t·type for MSRL).
3. Log-probs of the rollout policy (old) and, when `rl.kl_coef` > 0, of a frozen reference
   (no reference is loaded at β = 0).
4. Advantages (`rl.algorithm`, r1rm.core.advantages): REINFORCE++ returns normalised over all
   valid tokens of the rollout batch across processes; StableReinforce adds the advantage
   filter (`paper`: |Â| > 3 → 0, or the released code's `official` window) and Pre-CLIP;
   GRPO / RLOO / REINFORCE-with-baseline use groups of samples per prompt.
5. `rl.ppo_epochs` passes over the rollout in train batches of `rl.train_batch_size` sequences
   (micro-batches + accumulation): PPO clipped surrogate (Pre-CLIP: the log-ratio clamped to
   [ln 10⁻³, ln 10³] before exp), KL in the reward or the loss, loss aggregated per
   `rl.loss_agg`. A step with a non-finite loss or gradient is skipped and counted.
6. Metrics per step, periodic held-out eval through the eval code, atomic checkpoints and
   exact resume (data position from the step; sampling seeded by seed + step).
Departure from the paper: none by default; the released script's settings are a recipe.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from r1rm.config import Config, run_identity, save_config
from r1rm.errors import ConfigError, DataError


def resolved_algorithm_options(cfg: Config) -> tuple[float | None, str]:
    """(Pre-CLIP ratio or None, advantage filter) with StableReinforce's defaults."""
    stable = cfg.rl.algorithm == "stable_reinforce"
    pre_clip = cfg.rl.pre_clip if cfg.rl.pre_clip is not None else stable
    adv_filter = cfg.rl.adv_filter or ("paper" if stable else "none")
    return (cfg.rl.pre_clip_ratio if pre_clip else None), adv_filter


def _judge_engine(cfg: Config):
    from r1rm.engines import make_engine

    j = cfg.judge
    if j.engine_kind == "openai" and not j.base_url:
        raise ConfigError("rl.consistency_judge=model needs judge.base_url (an OpenAI-compatible endpoint)",
                          fix="set judge.base_url=http://HOST:PORT/v1, or rl.consistency_judge=rule")
    sub = cfg.model_copy(deep=True)
    sub.engine.kind = j.engine_kind
    sub.engine.base_url = j.base_url
    sub.engine.model_name = j.model_name
    sub.engine.api_key_env = j.api_key_env
    sub.engine.timeout_s = j.timeout_s
    sub.engine.max_retries = 1
    if j.engine_kind != "openai":
        if not j.model_name:
            raise ConfigError("a local consistency judge needs judge.model_name (a checkpoint folder)")
        sub.model.path = j.model_name
    return make_engine(sub)


def held_out_eval(cfg: Config, acc, model, processor, *, step: int) -> dict:
    """Greedy both-orders accuracy of the current policy on data.eval (split across processes)."""
    from accelerate.utils import gather_object

    from r1rm.commands.eval import generation_row
    from r1rm.core.metrics import compute_metrics
    from r1rm.data.chat import oriented, record_messages
    from r1rm.data.training_sets import read_items
    from r1rm.engines.base import Request, SamplingParams
    from r1rm.engines.hf import HFEngine
    from r1rm.runtime.accel import gathered_for_generation

    items = read_items(cfg.data.eval, image_root=cfg.data.image_root, target_field=None)[: cfg.rl.eval_limit]
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
    params = SamplingParams(max_new_tokens=cfg.rl.max_new_tokens, temperature=0.0)
    with gathered_for_generation(acc, model):
        results = engine.generate(reqs, params)
    rows = [generation_row(rec, order, 0, samples[0], allow_fallback=cfg.eval.answer_fallback)
            for (rec, order), samples in zip(meta, results, strict=True)]
    rows = gather_object(rows) if acc.num_processes > 1 else rows
    m = compute_metrics(rows, benchmark="canonical")
    acc_ = m["accuracy"]
    return {"eval/both_orders_strict": acc_["both_orders_strict"]["overall"],
            "eval/both_orders_mean": acc_["both_orders_mean"]["overall"],
            "eval/chosen_first": acc_["chosen_first"]["overall"], "eval/chosen_second": acc_["chosen_second"]["overall"],
            "eval/parse_fail_rate": m["parse_fail_rate"], "eval/step": step}


def run(cfg: Config) -> dict:
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    from r1rm.core.advantages import (
        batch_normalised,
        finish_advantages,
        masked_moments,
        moments_to_mean_std,
        raw_advantages,
        with_reward_outliers,
    )
    from r1rm.core.metrics import improved_best
    from r1rm.core.parsing import extract_answer
    from r1rm.core.policy_loss import aggregate, clipped_policy_loss, engine_logprob_gaps, kl_estimate
    from r1rm.core.rewards import combine, format_reward, result_reward, type_reward
    from r1rm.core.schedules import lr_multiplier
    from r1rm.data.chat import record_messages
    from r1rm.data.media import fit_visuals
    from r1rm.data.training_sets import data_fingerprint, epoch_order, read_items, with_label_noise
    from r1rm.engines.base import Request, SamplingParams
    from r1rm.engines.hf import VISION_PLACEHOLDERS, HFEngine
    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.accel import apply_update, gathered_for_generation, make_accelerator, make_optimizer, split_batch
    from r1rm.runtime.checkpoint import (
        check_resumable,
        finished_before,
        latest_checkpoint,
        load_checkpoint,
        load_extra,
        recover_best,
        save_best,
        save_checkpoint,
    )
    from r1rm.runtime.judges import JudgeStats, consistency_scores
    from r1rm.runtime.metrics_log import MetricsLog
    from r1rm.runtime.modelprep import prepare_for_training, save_hf
    from r1rm.runtime.progress import make_progress
    from r1rm.runtime.rollout import (
        build_sequence,
        encode_prompt,
        grouped_token_logprobs,
        response_mask,
        token_logprobs,
    )

    rc = cfg.rl
    out = Path(cfg.output_dir)
    identity = {**run_identity(cfg, "rl"), "data.train.sha256": data_fingerprint(cfg.data.train)}
    if cfg.runtime.resume:  # another run's checkpoints here: refused before anything is written
        check_resumable(out, identity, "rl", cfg.data.train)
    if rc.keep_best and not (rc.eval_every_steps and cfg.data.eval):
        raise ConfigError("rl.keep_best needs the periodic eval: rl.eval_every_steps > 0 and a data.eval file",
                          fix="set rl.eval_every_steps and data.eval=[a validation split] (not the test set), or drop rl.keep_best")
    items = read_items(cfg.data.train, image_root=cfg.data.image_root, target_field=None)
    items, label_noise_flipped = with_label_noise(items, rc.stress_label_noise)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lag = rc.stress_rollout_lag
    if lag and (cfg.runtime.deepspeed or rc.rollout_engine != "hf"):
        raise ConfigError(f"rl.stress_rollout_lag={lag} keeps whole weight copies for the hf rollout engine; "
                          f"it does not run with DeepSpeed or rl.rollout_engine={rc.rollout_engine}",
                          fix="drop runtime.deepspeed and use rl.rollout_engine=hf, or set rl.stress_rollout_lag=0")
    if rc.rollout_batch_size % world:
        raise ConfigError(f"rl.rollout_batch_size={rc.rollout_batch_size} is not divisible by the {world} processes",
                          fix=f"use a multiple of {world}")
    n = rc.n_samples_per_prompt
    per_proc_train = rc.train_batch_size // world
    # an update forwards each prompt once for its n samples: micro batches must hold whole groups; not
    # under DeepSpeed (its engine expects one forward per backward; this path makes two — DDP is fine,
    # tests/integration/test_grouped_ddp.py)
    grouped = (rc.share_prompt_forward and n > 1 and rc.micro_batch_size % n == 0 and per_proc_train % n == 0
               and not cfg.model.gradient_checkpointing and not cfg.runtime.deepspeed)
    accum = split_batch(rc.train_batch_size, rc.micro_batch_size, world)
    acc = make_accelerator(deepspeed_config=cfg.runtime.deepspeed, grad_accum=accum, micro_batch=rc.micro_batch_size,
                           max_grad_norm=rc.max_grad_norm, device=cfg.runtime.device,
                           mixed_precision=cfg.runtime.mixed_precision)
    if acc.is_main_process:
        save_config(cfg)
    torch.manual_seed(cfg.seed)
    processor = load_processor(cfg.model.path, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels)
    tok = getattr(processor, "tokenizer", processor)
    eos_id = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    vision_ids = frozenset(tok.get_vocab()[t] for t in VISION_PLACEHOLDERS if t in tok.get_vocab())
    dtype = "float32" if cfg.model.dtype == "auto" else cfg.model.dtype
    device_str = "cpu" if acc.device.type == "cpu" else str(acc.device)
    model = prepare_for_training(load_model(cfg.model.path, dtype=dtype, device=device_str,
                                            attn_implementation=cfg.model.attn_implementation), cfg.model)
    ref = None
    if rc.kl_coef > 0:
        ref = load_model(cfg.model.path, dtype=dtype, device=device_str)
        ref.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, rc)
    steps_per_epoch = len(items) // rc.rollout_batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{len(items)} RL prompts are fewer than one rollout batch of {rc.rollout_batch_size}",
                        fix="lower rl.rollout_batch_size or add data")
    total_rollouts = rc.max_steps or math.ceil(rc.epochs * steps_per_epoch)
    updates_per_rollout = (rc.rollout_batch_size * rc.samples_per_item // rc.train_batch_size) * rc.ppo_epochs
    # one update per rollout, sampled by the model being updated, and no KL term that needs the old
    # log-probs: they equal the update pass's own (detached), so their extra forward pass is skipped
    on_policy = updates_per_rollout == 1 and rc.rollout_engine == "hf" and rc.kl_coef == 0 and not lag
    total_updates = total_rollouts * updates_per_rollout
    scheduler = LambdaLR(optimizer, lambda s: lr_multiplier(s, total_steps=total_updates,
                                                            warmup_steps=int(rc.warmup_ratio * total_updates),
                                                            kind=rc.lr_schedule))
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    deepspeed = cfg.runtime.deepspeed is not None
    pre_clip_ratio, adv_filter = resolved_algorithm_options(cfg)
    judge_engine = _judge_engine(cfg) if rc.consistency_judge == "model" else None
    judge_stats = JudgeStats()
    vllm_engine = None
    if rc.rollout_engine == "vllm":
        from r1rm.engines.vllm import VLLMEngine

        vllm_engine = VLLMEngine(cfg.model.path, tensor_parallel_size=cfg.engine.tensor_parallel_size,
                                 gpu_memory_utilization=cfg.engine.gpu_memory_utilization, seed=cfg.seed,
                                 enable_sleep_mode=True)

    step = 0
    counters = {"skipped_updates": 0, "nonfinite_microbatches": 0, "skipped_long_prompts": 0}
    last_eval: dict = {}
    best: dict | None = None  # rl.keep_best: {"step", "metric", "value"} of out/best
    if rc.keep_best and acc.is_main_process:
        recover_best(out)  # a swap a kill interrupted
    ckpt = latest_checkpoint(out) if cfg.runtime.resume else None
    if ckpt is not None:
        state = load_checkpoint(acc, ckpt)
        step, counters = state["step"], state["counters"]
        # run totals the metrics and summary.json report: carried by the checkpoints
        judge_stats, last_eval = JudgeStats(**state.get("judge", {})), state.get("last_eval", {})
        # the best as of this checkpoint: a best/ saved after it is re-derived when its step replays
        best = state.get("best")
    resumed_at = step
    # rl.stress_rollout_lag: `history` holds the weights at the start of steps max(0, step−lag)..step;
    # the oldest samples the rollouts and gives the old log-probs (a stale rollout engine)
    behaviour, history = None, []
    if lag:
        import copy

        def weights() -> dict:
            return {k: v.detach().to("cpu", copy=True) for k, v in acc.unwrap_model(model).state_dict().items()}

        behaviour = copy.deepcopy(acc.unwrap_model(model)).eval().requires_grad_(False)
        extra = load_extra(ckpt) if ckpt is not None else None
        if ckpt is not None and (extra is None or len(extra.get("lag_history", [])) != min(step, lag) + 1):
            raise ConfigError(f"checkpoint {ckpt} holds no rollout-lag weights for rl.stress_rollout_lag={lag}",
                              fix="start this run afresh (runtime.resume=false) or in a new output_dir")
        history = extra["lag_history"] if extra is not None else [weights()]
    log = MetricsLog(out, enabled=acc.is_main_process, resume_step=step, tensorboard=cfg.runtime.tensorboard,
                     wandb_project=cfg.runtime.wandb_project, run_config=cfg.model_dump(mode="json"))

    def reduce_sum(values: list[float]) -> list[float]:
        t = torch.tensor(values, device=acc.device, dtype=torch.float64)
        return acc.reduce(t, reduction="sum").tolist()

    with make_progress(enabled=cfg.runtime.progress and acc.is_main_process, unit="steps") as bar:
        task = bar.add_task("rl", total=total_rollouts, completed=step)
        while step < total_rollouts:
            epoch, b = divmod(step, steps_per_epoch)
            order = epoch_order(len(items), seed=cfg.seed, epoch=epoch, shuffle=rc.shuffle)
            mine = order[b * rc.rollout_batch_size:(b + 1) * rc.rollout_batch_size][acc.process_index::acc.num_processes]

            # ---- 1. rollouts
            t0 = t_step = time.perf_counter()
            prompts, requests, keep = [], [], []
            # each item as given, and with rl.both_orders also swapped (label follows) in the same batch
            shown = [(i, rec) for i in mine for rec in ((items[i].rec, items[i].rec.swapped()) if rc.both_orders
                                                         else (items[i].rec,))]
            for i, rec in shown:
                it = items[i]
                # resized once here (several visuals share the pixel budget); the engine gets the result
                msgs = fit_visuals(record_messages(rec, prompt=cfg.data.prompt, image_root=it.root,
                                                   video_max_frames=cfg.model.video_max_frames,
                                                   max_pixels=cfg.model.max_pixels))
                enc = encode_prompt(processor, msgs)
                ok = enc["input_ids"].shape[1] <= rc.max_prompt_len
                counters["skipped_long_prompts"] += 0 if ok else 1
                prompts.append(enc)
                keep.append(ok)
                if ok:
                    requests.append(Request(msgs))
            sampling = SamplingParams(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, n=n,
                                      seed=cfg.seed * 100_003 + step * 131 + acc.process_index)
            t_gen = time.perf_counter()
            if vllm_engine is not None:
                results = vllm_engine.generate(requests, sampling)
            elif behaviour is not None:
                behaviour.load_state_dict(history[0])
                results = HFEngine(behaviour, processor, batch_size=cfg.engine.batch_size,
                                   share_prefill=cfg.engine.share_prefill).generate(requests, sampling)
            else:
                engine = HFEngine(acc.unwrap_model(model), processor, batch_size=cfg.engine.batch_size,
                                  share_prefill=cfg.engine.share_prefill)
                with gathered_for_generation(acc, model):
                    results = engine.generate(requests, sampling)
            t_gen = time.perf_counter() - t_gen
            res_iter = iter(results)
            seqs, texts, labels, task_types, valid = [], [], [], [], []
            for (_i, rec), enc, ok in zip(shown, prompts, keep, strict=True):
                samples = next(res_iter) if ok else [None] * n
                for s in samples:
                    if s is None:  # a prompt over max_prompt_len: a masked placeholder keeps processes in step
                        seqs.append(build_sequence(enc, [eos_id]))
                        texts.append("")
                        valid.append(0.0)
                    else:
                        try:
                            seqs.append(build_sequence(enc, list(s.token_ids) + ([eos_id] if s.finished else []),
                                                       forbidden=vision_ids))
                            texts.append(s.text)
                            valid.append(1.0)
                        except ValueError:  # a vision placeholder in the response: masked out, counted
                            counters["invalid_responses"] = counters.get("invalid_responses", 0) + 1
                            seqs.append(build_sequence(enc, [eos_id]))
                            texts.append("")
                            valid.append(0.0)
                    labels.append(rec.label)
                    task_types.append(rec.task_type)
            t_rollout = time.perf_counter() - t0

            # ---- 2. rewards
            t0 = time.perf_counter()
            fmt = [format_reward(t, prompt=cfg.data.prompt) for t in texts]
            res = [result_reward(t, lab) for t, lab in zip(texts, labels, strict=True)]
            cons = [0] * len(texts)
            right = [k for k, r in enumerate(res) if r > 0]  # consistency only matters when the result is right
            scores = consistency_scores(rc.consistency_judge, [texts[k] for k in right], engine=judge_engine,
                                        temperature=cfg.judge.temperature, retries=cfg.judge.retries, stats=judge_stats)
            for k, c in zip(right, scores, strict=True):
                cons[k] = c
            typ = [type_reward(t, tt) if cfg.data.prompt == "msrl" else 0.0 for t, tt in zip(texts, task_types, strict=True)]
            totals = [combine(fmt=f, result=r, consistency=c, type_score=ty, format_weight=rc.format_weight,
                              consistency_weight=rc.consistency_weight,
                              type_weight=rc.type_weight if cfg.data.prompt == "msrl" else 0.0) * v
                      for f, r, c, ty, v in zip(fmt, res, cons, typ, valid, strict=True)]
            t_reward = time.perf_counter() - t0

            # ---- 3. old (and reference) log-probs (none computed when on_policy)
            t0 = time.perf_counter()
            old_lp, masks, ref_lp = [], [], []
            model.eval()
            with torch.no_grad():
                for k in range(0, len(seqs), rc.micro_batch_size):
                    chunk = seqs[k:k + rc.micro_batch_size]
                    if on_policy:
                        m = response_mask(chunk).to(acc.device)
                        lp = torch.zeros_like(m)  # never read: the update pass supplies old log-probs
                    with acc.autocast():
                        if not on_policy:
                            lp, m, _ = token_logprobs(behaviour if lag else model, chunk, pad_id=tok.pad_token_id,
                                                      device=acc.device)
                        if ref is not None:
                            rlp, _, _ = token_logprobs(ref, chunk, pad_id=tok.pad_token_id, device=acc.device)
                            ref_lp += list(rlp)
                    old_lp += list(lp)
                    masks += list(m * torch.tensor(valid[k:k + len(chunk)], device=m.device)[:, None])
            model.train()
            width = max(x.shape[0] for x in old_lp)

            def stack(rows: list, width: int = width) -> torch.Tensor:
                return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[0])) for r in rows])

            old = stack(old_lp)
            mask = stack(masks)
            refs = stack(ref_lp) if ref is not None else None
            kl = kl_estimate(old, refs, kind=rc.kl_estimator) * mask if refs is not None else None
            # rl.stress_logprob_mismatch: old log-probs off by rare large gaps (an engine that disagrees
            # with the trainer); seeded by seed, step and process, so a resumed run draws the same
            gaps = engine_logprob_gaps(
                mask, share=rc.stress_logprob_mismatch, gap=rc.stress_logprob_gap,
                generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 7_919 + acc.process_index),
            ) if rc.stress_logprob_mismatch else None

            # ---- 4. advantages
            t_adv = time.perf_counter()
            trained = totals
            if rc.stress_reward_outliers:  # rl.stress_reward_outliers: rewards far off the batch's, for training only
                trained, n_out = with_reward_outliers(
                    totals, valid, share=rc.stress_reward_outliers, value=rc.stress_outlier_reward,
                    generator=torch.Generator().manual_seed(cfg.seed * 1_000_033 + step * 7_907 + acc.process_index))
                counters["stress_reward_outliers"] = counters.get("stress_reward_outliers", 0) + n_out
            reward_t = torch.tensor(trained, device=acc.device)
            raw = raw_advantages(rc.algorithm, reward_t, mask, kl=kl if rc.kl_in == "reward" else None,
                                 kl_coef=rc.kl_coef, group_size=n, scale_std=rc.grpo_scale_std)
            mean, std = 0.0, 1.0
            if batch_normalised(rc.algorithm):
                mean, std = moments_to_mean_std(acc.reduce(masked_moments(raw, mask), reduction="sum"))
            rsum, rcount = reduce_sum([sum(trained), sum(valid)])
            adv, dropped = finish_advantages(rc.algorithm, raw, mask, mean=mean, std=std, adv_filter=adv_filter,
                                             sigma=rc.adv_filter_sigma, raw_reward_mean=rsum / max(rcount, 1.0))
            t_adv = time.perf_counter() - t_adv

            # ---- 5. policy updates
            stats = {"clip_frac": 0.0, "preclip_high_frac": 0.0, "preclip_low_frac": 0.0, "ratio_max": 0.0,
                     "ratio_min": math.inf, "loss_token_max": 0.0, "approx_kl": 0.0, "entropy": 0.0, "loss": 0.0,
                     "micro": 0}
            grad_norm, grad_norm_max = None, None
            for ppo_epoch in range(rc.ppo_epochs):
                g = torch.Generator().manual_seed(cfg.seed * 7919 + step * 31 + ppo_epoch)
                # a prompt's n samples stay together (one prompt forward for the group) when grouped
                unit = n if grouped else 1
                perm = [k * unit + j for k in torch.randperm(len(seqs) // unit, generator=g).tolist() for j in range(unit)]
                for start in range(0, len(perm), per_proc_train):
                    # micro batches of similar length (less padding): the update sums their
                    # gradients, so which sequences share a micro batch does not change it
                    units = [perm[u:u + unit] for u in range(start, min(start + per_proc_train, len(perm)), unit)]
                    batch_ids = [k for grp in sorted(units, key=lambda grp: max(seqs[k].n_tokens for k in grp)) for k in grp]
                    tok_total = reduce_sum([float(mask[batch_ids].sum())])[0]
                    bad = torch.zeros((), device=acc.device)
                    for mstart in range(0, len(batch_ids), rc.micro_batch_size):
                        ids = batch_ids[mstart:mstart + rc.micro_batch_size]
                        with acc.accumulate(model):
                            with acc.autocast():
                                if grouped:
                                    lp, m, ent = grouped_token_logprobs(
                                        model, [[seqs[k] for k in ids[u:u + n]] for u in range(0, len(ids), n)],
                                        pad_id=tok.pad_token_id, device=acc.device, with_entropy=True)
                                else:
                                    lp, m, ent = token_logprobs(model, [seqs[k] for k in ids], pad_id=tok.pad_token_id,
                                                                device=acc.device, with_entropy=True)
                            w = lp.shape[1]
                            mm = mask[ids][:, :w]
                            old_ids = lp.detach() if on_policy else old[ids][:, :w]
                            if gaps is not None:
                                old_ids = old_ids - gaps[ids][:, :w]
                            loss, st = clipped_policy_loss(lp, old_ids, adv[ids][:, :w], mm,
                                                           clip_eps_low=rc.clip_eps, clip_eps_high=rc.clip_eps_high,
                                                           pre_clip_ratio=pre_clip_ratio, agg=rc.loss_agg)
                            if refs is not None and rc.kl_in == "loss":
                                loss = loss + rc.kl_coef * aggregate(kl_estimate(lp, refs[ids][:, :w], kind=rc.kl_estimator),
                                                                     mm, mode=rc.loss_agg)
                            if rc.loss_agg == "token_mean":
                                scale = float(mm.sum()) * acc.num_processes / max(tok_total, 1.0)
                            else:
                                scale = len(ids) / len(batch_ids)
                            if not torch.isfinite(loss):
                                bad += 1
                                counters["nonfinite_microbatches"] += 1
                                loss = lp.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0
                            acc.backward(loss * scale * accum)
                            stats["loss"] += float(loss.detach()) * scale
                            stats["micro"] += 1
                            stats["clip_frac"] += st["clip_frac"]
                            stats["preclip_high_frac"] += st["preclip_high_frac"]
                            stats["preclip_low_frac"] += st["preclip_low_frac"]
                            stats["ratio_max"] = max(stats["ratio_max"], st["ratio_max"])
                            stats["ratio_min"] = min(stats["ratio_min"], st["ratio_min"])
                            stats["loss_token_max"] = max(stats["loss_token_max"], st["loss_token_max"])
                            stats["approx_kl"] += st["approx_kl"]
                            stats["entropy"] += float((ent.detach() * mm).sum() / mm.sum().clamp(min=1))
                            if acc.sync_gradients:
                                grad_norm = apply_update(acc, params, optimizer, scheduler, bad=bad,
                                                         max_grad_norm=rc.max_grad_norm, deepspeed=deepspeed,
                                                         counters=counters)
                                if grad_norm is not None:  # the largest over the step's updates (nan/inf kept)
                                    gn = float(grad_norm)
                                    if grad_norm_max is None or not math.isfinite(gn) or gn > grad_norm_max:
                                        grad_norm_max = gn
            if vllm_engine is not None:
                from r1rm.runtime.weight_sync import push_and_check

                ok_idx = [k for k, flag in enumerate(keep) if flag][:2]
                push_and_check(vllm_engine, acc, model, [requests[j] for j in range(len(ok_idx))],
                               [prompts[k] for k in ok_idx], pad_id=tok.pad_token_id, tol=rc.logprob_check_tol)
            t_train = time.perf_counter() - t0
            t_step = time.perf_counter() - t_step
            step += 1
            if lag:
                history = [*history, weights()][-(lag + 1):]

            # ---- 6. metrics, eval, checkpoints
            n_valid = max(sum(valid), 1.0)
            parsed = sum(1 for t, v in zip(texts, valid, strict=True) if v and extract_answer(t, allow_fallback=False).choice)
            local = [sum(totals), sum(fmt), sum(res), sum(cons), sum(typ), n_valid, float(parsed),
                     float(mask.sum()), float(dropped.sum()), float(kl.sum()) if kl is not None else 0.0,
                     stats["clip_frac"], stats["approx_kl"], stats["entropy"], float(max(stats["micro"], 1)), stats["loss"],
                     float(sum(v for v, lab in zip(valid, labels, strict=True) if lab == 1)),
                     stats["preclip_high_frac"], stats["preclip_low_frac"]]
            g_ = reduce_sum(local)
            nv, nt, nm = g_[5], max(g_[7], 1.0), g_[13]
            metrics = {
                "reward": g_[0] / nv, "reward_format": g_[1] / nv, "reward_result": g_[2] / nv,
                "reward_consistency": g_[3] / nv, "reward_type": g_[4] / nv, "accuracy": g_[2] / nv,
                "parse_fail_rate": 1.0 - g_[6] / nv, "response_length": g_[7] / nv,
                "rollout_samples": int(g_[5]), "label1_share": g_[15] / nv, "adv_filtered": g_[8] / nt, "kl_ref": g_[9] / nt if kl is not None else None,
                "clip_frac": g_[10] / nm, "approx_kl": g_[11] / nm, "entropy": g_[12] / nm, "loss": g_[14] / acc.num_processes,
                "preclip_high_frac": g_[16] / nm, "preclip_low_frac": g_[17] / nm,
                "ratio_max": float(acc.reduce(torch.tensor(stats["ratio_max"], device=acc.device), reduction="max"))
                if acc.num_processes > 1 else stats["ratio_max"],
                "ratio_min": -float(acc.reduce(torch.tensor(-stats["ratio_min"], device=acc.device), reduction="max"))
                if acc.num_processes > 1 else stats["ratio_min"],
                "loss_token_max": float(acc.reduce(torch.tensor(stats["loss_token_max"], device=acc.device), reduction="max"))
                if acc.num_processes > 1 else stats["loss_token_max"],
                "grad_norm": None if grad_norm is None else float(grad_norm), "grad_norm_max": grad_norm_max, "lr": scheduler.get_last_lr()[0],
                "judge_failures": judge_stats.failures, "time_rollout_s": t_rollout, "time_reward_s": t_reward,
                "time_train_s": t_train, "time_generate_s": t_gen, "step_time_s": t_step,
                # everything but generate / forward / backward / optimizer: prompt encoding, rewards, advantages
                "time_overhead_s": (t_rollout - t_gen) + t_reward + t_adv, **counters,
            }
            if rc.eval_every_steps and cfg.data.eval and (step % rc.eval_every_steps == 0 or step == total_rollouts):
                last_eval = held_out_eval(cfg, acc, model, processor, step=step)
                metrics.update(last_eval)
                new_best = improved_best(best, value=last_eval[f"eval/{rc.best_metric}"], step=step,
                                         metric=rc.best_metric) if rc.keep_best else None
                if new_best is not None:  # the eval is gathered: every process takes the same branch
                    best = new_best
                    save_best(acc, model, processor, out, record=best)
            if step % cfg.runtime.log_every_steps == 0 or step == total_rollouts:
                log.log(step, metrics)
            bar.update(task, advance=1, description=f"rl reward {metrics['reward']:.3f} acc {metrics['accuracy']:.2f}")
            if step % rc.save_every_steps == 0 and step < total_rollouts:
                save_checkpoint(acc, model, processor, out, step=step, keep_last=rc.keep_last,
                                trainer_state={"run": identity, "step": step, "counters": counters, "judge": vars(judge_stats),
                                               "last_eval": last_eval, "best": best},
                                extra={"lag_history": history} if lag else None)

    if finished_before(out, ckpt, step=step, resumed_at=resumed_at):
        log.close()
        if judge_engine is not None:
            judge_engine.close()
        acc.end_training()
        return json.loads((out / "summary.json").read_text())
    save_checkpoint(acc, model, processor, out, step=step, keep_last=rc.keep_last,
                    trainer_state={"run": identity, "step": step, "counters": counters, "judge": vars(judge_stats), "last_eval": last_eval,
                                   "best": best, "final": True},
                    extra={"lag_history": history} if lag else None)
    state_dict = acc.get_state_dict(model)
    summary = {"steps": step, "processes": acc.num_processes, "algorithm": rc.algorithm, "pre_clip": pre_clip_ratio,
               "grouped_forward": grouped,
               "adv_filter": adv_filter, **({"label_noise_flipped": label_noise_flipped} if rc.stress_label_noise else {}),
               **counters, "judge_calls": judge_stats.calls,
               "judge_failures": judge_stats.failures, **last_eval, **({"best": best} if rc.keep_best else {})}
    if acc.is_main_process:
        save_hf(acc.unwrap_model(model), processor, out / "model", state_dict=state_dict)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        from rich.console import Console

        Console().print(f"rl done: {step} rollout steps ({rc.algorithm}); model in [bold]{out / 'model'}[/]; "
                        f"{counters['skipped_updates']} updates skipped as non-finite")
        if best is not None:
            Console().print(f"best periodic eval: {best['metric']} {best['value']:.4f} at step {best['step']} "
                            f"([bold]{out / 'best'}[/])")
    log.close()
    if judge_engine is not None:
        judge_engine.close()
    acc.wait_for_everyone()
    acc.end_training()
    return summary
