"""`r1rm rl`: reinforcement learning of a generative reward model — StableReinforce and its baselines.

Algorithm (one rollout step), top to bottom:
1. Take `rl.rollout_batch_size` prompts (file order or a seeded shuffle per epoch; each process
   its share) and sample `rl.n_samples_per_prompt` responses each with the policy
   (`rl.rollout_engine`: hf generate on the training model, or colocated vLLM).
2. Score each response (METHOD §2): format, result, consistency (`rl.consistency.mode`: rule,
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
Departure from the paper: none by default; the released script's settings are a recipe. The
stress tests (`rl.stress.*`, r1rm.core.stress) inject faults on purpose; all are off by default.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from r1rm.config import Config
from r1rm.errors import ConfigError, DataError
from r1rm.runtime import training
from r1rm.runtime.consistency import ConsistencyStats
from r1rm.runtime.training import Training


def resolved_algorithm_options(cfg: Config) -> tuple[float | None, str]:
    """(Pre-CLIP ratio or None, advantage filter) with StableReinforce's defaults."""
    stable = cfg.rl.algorithm == "stable_reinforce"
    pre_clip = cfg.rl.pre_clip if cfg.rl.pre_clip is not None else stable
    adv_filter = cfg.rl.adv_filter or ("paper" if stable else "none")
    return (cfg.rl.pre_clip_ratio if pre_clip else None), adv_filter


def run(cfg: Config) -> dict:
    from r1rm.runtime.checkpoint import recover_best
    from r1rm.runtime.consistency import make_consistency_engine
    from r1rm.runtime.progress import make_progress

    rc = cfg.rl
    identity = training.checked_identity(cfg, "rl")  # another run's checkpoints: refused before any write
    plan = _plan(cfg)
    t = training.start_training(cfg, rc, identity=identity, accum=plan.accum, total_steps=plan.total_updates,
                                reference=rc.kl_coef > 0)  # no reference model at β = 0
    pre_clip_ratio, adv_filter = resolved_algorithm_options(cfg)
    checker = make_consistency_engine(cfg) if rc.consistency.mode == "model" else None
    sampler = _sampler(cfg, t, plan)
    if rc.keep_best and t.acc.is_main_process:
        recover_best(t.out)  # a swap a kill interrupted
    ckpt, state = training.resume(t, cfg)
    step, totals = state.get("step", 0), _Totals.of(state)
    resumed_at = step
    _start_stale_policy(t, sampler, ckpt, step=step, lag=rc.stress.rollout_lag)
    # colocated vLLM: the trainer's weights (a resumed checkpoint's) into the engine before the first rollout
    start_sync = {f"{k}_start": v for k, v in _push_weights(t, sampler).items()}
    log = training.open_log(t, cfg, step=step)

    with make_progress(enabled=cfg.runtime.progress and t.acc.is_main_process, unit="steps") as bar:
        task = bar.add_task("rl", total=plan.total_rollouts, completed=step)
        while step < plan.total_rollouts:
            mine = _prompts_of_step(cfg, t, plan, step)
            t_step = time.perf_counter()
            ro = _rollout(cfg, t, plan, sampler, mine, step=step, counters=totals.counters)  # 1.
            _sleep_engine(sampler)  # colocated vLLM frees its memory for the update (rl.vllm_sleep_level)
            rw = _rewards(cfg, ro, checker, totals.consistency)  # 2.
            t_train = time.perf_counter()
            lp = _old_logprobs(cfg, t, plan, ro, sampler, step=step)  # 3.
            adv, dropped, t_adv = _advantages(cfg, t, plan, ro, rw, lp, adv_filter, step=step,
                                              counters=totals.counters)  # 4.
            upd = _update(cfg, t, plan, ro, lp, adv, pre_clip_ratio=pre_clip_ratio, step=step,
                          counters=totals.counters)  # 5.
            sync = _push_weights(t, sampler)  # wakes colocated vLLM, pushes, checks
            now = time.perf_counter()
            step += 1
            _advance_stale_policy(t, sampler, lag=rc.stress.rollout_lag)
            times = {"rollout": ro.t_rollout, "reward": rw.t_reward, "train": now - t_train, "generate": ro.t_gen,
                     "step": now - t_step, "adv": t_adv}
            metrics = _metrics(t, ro, rw, lp, adv, dropped, upd, totals=totals, times=times)  # 6.
            metrics.update({**start_sync, **sync})
            start_sync = {}
            _eval_log_save(cfg, t, plan, sampler, metrics, totals, step=step, log=log)
            bar.update(task, advance=1, description=f"rl reward {metrics['reward']:.3f} acc {metrics['accuracy']:.2f}")

    done = training.finished_summary(t, ckpt, step=step, resumed_at=resumed_at)
    if done is not None:
        training.close(t, log, checker, sampler.vllm, wait=False)
        return done
    state_dict = training.final_state_dict(t, step=step, keep_last=rc.keep_last, state=totals.state(),
                                           extra=_lag_extra(sampler))
    summary = {"steps": step, "processes": t.acc.num_processes, "algorithm": rc.algorithm, "pre_clip": pre_clip_ratio,
               "grouped_forward": plan.grouped, "speedups": plan.speedups, "adv_filter": adv_filter,
               **({"label_noise_flipped": plan.label_noise_flipped} if rc.stress.label_noise else {}),
               **totals.counters, "consistency_calls": totals.consistency.calls,
               "consistency_failures": totals.consistency.failures,
               "consistency_engine_errors": totals.consistency.engine_errors,
               **({"consistency_first_error": totals.consistency.first_error} if totals.consistency.first_error else {}),
               **totals.last_eval,
               **({"best": totals.best} if rc.keep_best else {})}
    training.write_outputs(t, state_dict, summary)
    if t.acc.is_main_process:
        from rich.console import Console

        Console().print(f"rl done: {step} rollout steps ({rc.algorithm}); model in [bold]{t.out / 'model'}[/]; "
                        f"{totals.counters['skipped_updates']} updates skipped as non-finite")
        if totals.best is not None:
            Console().print(f"best periodic eval: {totals.best['metric']} {totals.best['value']:.4f} at step "
                            f"{totals.best['step']} ([bold]{t.out / 'best'}[/])")
    training.close(t, log, checker, sampler.vllm)
    return summary


# ================================================================ set-up
@dataclass(frozen=True)
class Plan:
    """What the config and the data fix before any process starts."""

    items: list  # the RL items (rl.stress.label_noise applied)
    label_noise_flipped: int
    n: int  # samples per prompt
    per_proc_train: int  # sequences of a train batch per process
    grouped: bool  # updates forward each prompt once for its n samples
    accum: int  # micro-batches per optimizer step
    steps_per_epoch: int
    total_rollouts: int
    total_updates: int
    on_policy: bool  # old log-probs = the update pass's own: their forward pass is skipped
    speedups: dict  # {"shared_prefill": "on" | "off (why)", "grouped_forward": ...} for summary.json


def _plan(cfg: Config) -> Plan:
    """The run's checks, items and sizes: a config or data mistake stops before anything is written."""
    from r1rm.data.training_sets import read_items, with_label_noise
    from r1rm.runtime.accel import split_batch

    rc = cfg.rl
    training.check_keep_best(cfg, "rl")
    if rc.order_consistency_weight and not rc.both_orders:
        raise ConfigError(f"rl.order_consistency_weight={rc.order_consistency_weight} compares each item's verdicts "
                          "in both orders, which are rolled out only with rl.both_orders=true",
                          fix="set rl.both_orders=true, or rl.order_consistency_weight=0")
    items = read_items(cfg.data.train, image_root=cfg.data.image_root, target_field=None,
                       max_pixels=cfg.model.max_pixels)
    items, flipped = with_label_noise(items, rc.stress.label_noise)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lag = rc.stress.rollout_lag
    if lag and (cfg.runtime.deepspeed or rc.rollout_engine != "hf"):
        raise ConfigError(f"rl.stress.rollout_lag={lag} keeps whole weight copies for the hf rollout engine; "
                          f"it does not run with DeepSpeed or rl.rollout_engine={rc.rollout_engine}",
                          fix="drop runtime.deepspeed and use rl.rollout_engine=hf, or set rl.stress.rollout_lag=0")
    if rc.rollout_engine == "vllm" and cfg.engine.tensor_parallel_size != 1:
        raise ConfigError(f"rl.rollout_engine=vllm runs one engine in every training process, tensor parallel 1; "
                          f"engine.tensor_parallel_size={cfg.engine.tensor_parallel_size} is not supported there",
                          fix="set engine.tensor_parallel_size=1 (docs/training.md, vLLM rollouts and placement)")
    if rc.rollout_batch_size % world:
        raise ConfigError(f"rl.rollout_batch_size={rc.rollout_batch_size} is not divisible by the {world} processes",
                          fix=f"set rl.rollout_batch_size to a multiple of {world}")
    n = rc.n_samples_per_prompt
    per_proc_train = rc.train_batch_size // world
    # an update forwards each prompt once for its n samples: micro batches must hold whole groups; not
    # under DeepSpeed (its engine expects one forward per backward; this path makes two — DDP is fine,
    # tests/integration/test_grouped_ddp.py)
    grouped = (rc.share_prompt_forward and n > 1 and rc.micro_batch_size % n == 0 and per_proc_train % n == 0
               and not cfg.model.gradient_checkpointing and not cfg.runtime.deepspeed)
    # ... and only for a model family whose grouped forward is tested equal to the plain one
    speedups = _speedups(cfg, grouped)
    grouped = speedups["grouped_forward"] == "on"
    accum = split_batch(rc.train_batch_size, rc.micro_batch_size, world, keys=("rl.train_batch_size", "rl.micro_batch_size"))
    steps_per_epoch = len(items) // rc.rollout_batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{len(items)} RL prompts are fewer than one rollout batch of {rc.rollout_batch_size}",
                        fix="lower rl.rollout_batch_size or add data")
    total_rollouts = rc.max_steps or math.ceil(rc.epochs * steps_per_epoch)
    updates_per_rollout = (rc.rollout_batch_size * rc.samples_per_item // rc.train_batch_size) * rc.ppo_epochs
    # one update per rollout, sampled by the model being updated, and no KL term that needs the old
    # log-probs: they equal the update pass's own (detached), so their extra forward pass is skipped
    on_policy = updates_per_rollout == 1 and rc.rollout_engine == "hf" and rc.kl_coef == 0 and not lag
    return Plan(items=items, label_noise_flipped=flipped, n=n, per_proc_train=per_proc_train, grouped=grouped,
                accum=accum, steps_per_epoch=steps_per_epoch, total_rollouts=total_rollouts,
                total_updates=total_rollouts * updates_per_rollout, on_policy=on_policy, speedups=speedups)


def _speedups(cfg: Config, grouped: bool) -> dict:
    """The Qwen-derived speed-ups this run uses, each "on" or "off (why)": the family's own verdict
    (r1rm.models.families) where the config asks for it."""
    from r1rm.models.families import speedups
    from r1rm.models.loading import model_config

    state = speedups(model_config(cfg.model))
    if not grouped and state["grouped_forward"] == "on":
        state["grouped_forward"] = "off (rl.share_prompt_forward, group size, micro batch, DeepSpeed or checkpointing)"
    if not cfg.engine.share_prefill and state["shared_prefill"] == "on":
        state["shared_prefill"] = "off (engine.share_prefill=false)"
    if cfg.rl.rollout_engine != "hf":
        state["shared_prefill"] = f"off (rl.rollout_engine={cfg.rl.rollout_engine})"
    return state


@dataclass
class Sampler:
    """Who samples the rollouts (step 1) and gives their old log-probs (step 3): the policy being
    trained, colocated vLLM (pushed the weights after each update), or with rl.stress.rollout_lag a
    stale copy of the policy holding the oldest weights of `history`."""

    eos_id: int  # appended to a response that ended there
    vision_ids: frozenset  # vision placeholders: a response holding one is refused
    vllm: Any | None = None
    probe: Any | None = None  # vllm: the weight-sync probe (r1rm.runtime.weight_sync.Probe)
    tol: float = 0.0  # vllm: the probe's largest per-token log-prob gap allowed
    sleep_level: int = 0  # vllm: rl.vllm_sleep_level
    asleep: bool = False  # vllm: slept since the last rollout
    stale: Any | None = None
    history: list = field(default_factory=list)  # weights at the start of steps max(0, step−lag)..step


def _sampler(cfg: Config, t: Training, plan: Plan) -> Sampler:
    """The rollout sampler; with rl.rollout_engine=vllm an engine in this process, on its device, in the
    trainer's dtype and pixel budget (docs/training.md, "vLLM rollouts and placement")."""
    from r1rm.engines.hf import VISION_PLACEHOLDERS

    vocab = t.tok.get_vocab()
    eos_id = t.tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in vocab else t.tok.eos_token_id
    sampler = Sampler(eos_id=eos_id, vision_ids=frozenset(vocab[x] for x in VISION_PLACEHOLDERS if x in vocab))
    if cfg.rl.rollout_engine == "vllm":
        from r1rm.engines import media_budget
        from r1rm.engines.vllm import VLLMEngine
        from r1rm.runtime.weight_sync import default_tol

        # the precision the trainer computes in: its float32 master weights run under bf16 / fp16 autocast
        # on a GPU (a 7B engine in float32 would take twice the memory the recipes leave it)
        amp = {"bf16": "bfloat16", "fp16": "float16"}.get(t.acc.mixed_precision, "float32")
        dtype = amp if cfg.model.dtype == "auto" else cfg.model.dtype
        sampler.sleep_level = cfg.rl.vllm_sleep_level
        sampler.vllm = VLLMEngine(cfg.model.path, gpu_memory_utilization=cfg.engine.gpu_memory_utilization,
                                  dtype=dtype, seed=cfg.seed, enable_sleep_mode=sampler.sleep_level > 0,
                                  max_model_len=_engine_context(cfg, t),
                                  media=media_budget(cfg), colocated=True, revision=cfg.model.revision,
                                  trust_remote_code=cfg.model.trust_remote_code)
        sampler.probe = _probe(cfg, t, plan, eos_id=eos_id)
        tol = cfg.rl.logprob_check_tol
        sampler.tol = tol if tol is not None else default_tol(dtype)
    return sampler


def _engine_context(cfg: Config, t: Training) -> int:
    """The rollout engine's context: the longest prompt plus the response, within the model's own
    (vLLM otherwise sizes its cache for the model's full context, 128k tokens for Qwen2.5-VL)."""
    config = t.acc.unwrap_model(t.model).config
    own = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    want = cfg.rl.max_prompt_len + cfg.rl.max_new_tokens
    return min(want, own) if own else want


def _prompt_limit(cfg: Config, t: Training) -> int:
    """The longest prompt a rollout takes (a longer one is skipped and counted): rl.max_prompt_len, and
    no more than the model's positions leave for rl.max_new_tokens (the start refuses max_new_tokens
    that leave none: r1rm.runtime.training.checked_identity)."""
    from r1rm.models.loading import max_positions

    own = max_positions(t.acc.unwrap_model(t.model).config)
    return min(cfg.rl.max_prompt_len, own - cfg.rl.max_new_tokens) if own else cfg.rl.max_prompt_len


def _probe(cfg: Config, t: Training, plan: Plan, *, eos_id: int):
    """The weight-sync probe: the first RL item's prompt as rollouts show it (its video parts left out:
    the probe scores images and text), with a fixed response. The same on every process."""
    from r1rm.data.chat import record_messages
    from r1rm.engines import media_budget
    from r1rm.runtime.weight_sync import make_probe

    it = plan.items[0]
    msgs = record_messages(it.rec, prompt=cfg.data.prompt, image_root=it.root,
                           video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)
    msgs = [{**m, "content": [p for p in m["content"] if not (isinstance(p, dict) and p.get("type") == "video")]}
            if isinstance(m.get("content"), list) else m for m in msgs]
    return make_probe(t.processor, msgs, media=media_budget(cfg), eos_id=eos_id)


@dataclass
class _Totals:
    """Run totals the metrics and summary.json report, carried by the checkpoints."""

    counters: dict
    consistency: ConsistencyStats
    last_eval: dict
    best: dict | None  # rl.keep_best: {"step", "metric", "value"} of out/best

    @classmethod
    def of(cls, state: dict) -> _Totals:
        """From a checkpoint's trainer state ({} for a fresh start). Its best is the best as of that
        checkpoint: a best/ saved after it is re-derived when its step replays."""
        counters = state.get("counters", {"skipped_updates": 0, "nonfinite_microbatches": 0, "skipped_long_prompts": 0})
        return cls(counters=counters, consistency=ConsistencyStats(**state.get("consistency", {})),
                   last_eval=state.get("last_eval", {}), best=state.get("best"))

    def state(self) -> dict:
        return {"counters": self.counters, "consistency": vars(self.consistency), "last_eval": self.last_eval,
                "best": self.best}


# ---------------------------------------------------------------- rl.stress.rollout_lag
def _weights(t: Training) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in t.acc.unwrap_model(t.model).state_dict().items()}


def _start_stale_policy(t: Training, sampler: Sampler, ckpt, *, step: int, lag: int) -> None:
    """The stale copy and its weight history: the start weights, or a resumed checkpoint's."""
    if not lag:
        return
    import copy

    from r1rm.core.stress import lag_window_complete
    from r1rm.runtime.checkpoint import load_extra

    sampler.stale = copy.deepcopy(t.acc.unwrap_model(t.model)).eval().requires_grad_(False)
    extra = load_extra(ckpt) if ckpt is not None else None
    if ckpt is not None and (extra is None or not lag_window_complete(extra.get("lag_history", []), step=step, lag=lag)):
        raise ConfigError(f"checkpoint {ckpt} holds no rollout-lag weights for rl.stress.rollout_lag={lag}",
                          fix="start this run afresh (runtime.resume=false) or in a new output_dir")
    sampler.history = extra["lag_history"] if extra is not None else [_weights(t)]


def _advance_stale_policy(t: Training, sampler: Sampler, *, lag: int) -> None:
    """After an update: the window of weights moves on by one step."""
    if sampler.stale is not None:
        from r1rm.core.stress import lag_window

        sampler.history = lag_window(sampler.history, _weights(t), lag=lag)


def _lag_extra(sampler: Sampler) -> dict | None:
    """What a checkpoint keeps besides the model for an exact resume of a stale rollout engine."""
    return {"lag_history": sampler.history} if sampler.stale is not None else None


# ================================================================ 1. rollouts
@dataclass(frozen=True)
class Rollout:
    """Step 1: per prompt shown its encoding and whether it fits; per sample (n a prompt) the rest."""

    prompts: list[dict]  # processor encodings of the prompts shown
    keep: list[bool]  # within rl.max_prompt_len (a longer prompt is skipped, never cut)
    requests: list  # the engine requests of the prompts kept
    seqs: list  # prompt + response (runtime.batches.Encoded)
    texts: list[str]
    labels: list[int]
    task_types: list
    valid: list[float]  # 1.0 a sampled response; 0.0 a masked placeholder
    t_gen: float
    t_rollout: float


def _prompts_of_step(cfg: Config, t: Training, plan: Plan, step: int) -> list[int]:
    """This process's share of the step's rollout batch: the data position is the step."""
    from r1rm.data.training_sets import epoch_order

    rc = cfg.rl
    epoch, b = divmod(step, plan.steps_per_epoch)
    order = epoch_order(len(plan.items), seed=cfg.seed, epoch=epoch, shuffle=rc.shuffle)
    return order[b * rc.rollout_batch_size:(b + 1) * rc.rollout_batch_size][t.acc.process_index::t.acc.num_processes]


def _rollout(cfg: Config, t: Training, plan: Plan, sampler: Sampler, mine: list[int], *, step: int,
             counters: dict) -> Rollout:
    from r1rm.engines.base import SamplingParams

    rc = cfg.rl
    t0 = time.perf_counter()
    # each item as given, and with rl.both_orders also swapped (label follows) in the same batch
    shown = [(i, rec) for i in mine for rec in ((plan.items[i].rec, plan.items[i].rec.swapped()) if rc.both_orders
                                                else (plan.items[i].rec,))]
    prompts, keep, requests = _encode_prompts(cfg, t.processor, plan.items, shown, counters, limit=_prompt_limit(cfg, t))
    sampling = SamplingParams(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, n=plan.n,
                              seed=cfg.seed * 100_003 + step * 131 + t.acc.process_index)
    t_gen = time.perf_counter()
    results = _generate(cfg, t, sampler, requests, sampling)
    t_gen = time.perf_counter() - t_gen
    res_iter = iter(results)
    seqs, texts, labels, task_types, valid = [], [], [], [], []
    for (_i, rec), enc, ok in zip(shown, prompts, keep, strict=True):
        for s in (next(res_iter) if ok else [None] * plan.n):
            seq = _sequence(enc, s, sampler, counters)
            # a prompt over max_prompt_len, or a refused response: a masked placeholder keeps processes in step
            seqs.append(seq if seq is not None else _sequence_placeholder(enc, sampler))
            texts.append(s.text if seq is not None else "")
            valid.append(1.0 if seq is not None else 0.0)
            labels.append(rec.label)
            task_types.append(rec.task_type)
    return Rollout(prompts=prompts, keep=keep, requests=requests, seqs=seqs, texts=texts, labels=labels,
                   task_types=task_types, valid=valid, t_gen=t_gen, t_rollout=time.perf_counter() - t0)


def _encode_prompts(cfg: Config, processor, items: list, shown: list, counters: dict, *,
                    limit: int) -> tuple[list, list, list]:
    from r1rm.data.chat import record_messages
    from r1rm.data.media import fit_visuals
    from r1rm.engines.base import Request
    from r1rm.runtime.rollout import encode_prompt

    prompts, keep, requests = [], [], []
    for i, rec in shown:
        it = items[i]
        # resized once here (several visuals share the pixel budget); the engine gets the result
        msgs = fit_visuals(record_messages(rec, prompt=cfg.data.prompt, image_root=it.root,
                                           video_max_frames=cfg.model.video_max_frames,
                                           max_pixels=cfg.model.max_pixels))
        enc = encode_prompt(processor, msgs)
        ok = enc["input_ids"].shape[1] <= limit
        counters["skipped_long_prompts"] += 0 if ok else 1
        prompts.append(enc)
        keep.append(ok)
        if ok:
            requests.append(Request(msgs))
    return prompts, keep, requests


def _generate(cfg: Config, t: Training, sampler: Sampler, requests: list, sampling) -> list:
    from r1rm.engines.hf import HFEngine
    from r1rm.runtime.accel import gathered_for_generation

    if sampler.vllm is not None:
        return sampler.vllm.generate(requests, sampling)
    if sampler.stale is not None:
        sampler.stale.load_state_dict(sampler.history[0])
        return HFEngine(sampler.stale, t.processor, batch_size=cfg.engine.batch_size,
                        share_prefill=cfg.engine.share_prefill).generate(requests, sampling)
    engine = HFEngine(t.acc.unwrap_model(t.model), t.processor, batch_size=cfg.engine.batch_size,
                      share_prefill=cfg.engine.share_prefill)
    with gathered_for_generation(t.acc, t.model):
        return engine.generate(requests, sampling)


def _sequence(enc: dict, sample, sampler: Sampler, counters: dict):
    """Prompt + sampled response as a training sequence; None for no sample (a skipped prompt) or a
    response holding a vision placeholder (masked out, counted)."""
    from r1rm.runtime.rollout import build_sequence

    if sample is None:
        return None
    try:
        return build_sequence(enc, list(sample.token_ids) + ([sampler.eos_id] if sample.finished else []),
                              forbidden=sampler.vision_ids)
    except ValueError:
        counters["invalid_responses"] = counters.get("invalid_responses", 0) + 1
        return None


def _sequence_placeholder(enc: dict, sampler: Sampler):
    from r1rm.runtime.rollout import build_sequence

    return build_sequence(enc, [sampler.eos_id])


# ================================================================ 2. rewards
@dataclass(frozen=True)
class Rewards:
    """Step 2, per sample: the reward terms (METHOD §2) and their total (0 for a masked sample)."""

    fmt: list[float]
    result: list[float]
    consistency: list[int]
    type: list[float]
    order: list[float]  # rl.order_consistency_weight: agreement with the other order (0s when off)
    total: list[float]
    t_reward: float


def _rewards(cfg: Config, ro: Rollout, checker, stats: ConsistencyStats) -> Rewards:
    from r1rm.core.rewards import combine, format_reward, order_agreement, result_reward, type_reward
    from r1rm.runtime.consistency import consistency_scores

    rc = cfg.rl
    t0 = time.perf_counter()
    fmt = [format_reward(x, prompt=cfg.data.prompt) for x in ro.texts]
    res = [result_reward(x, lab) for x, lab in zip(ro.texts, ro.labels, strict=True)]
    cons = [0] * len(ro.texts)
    right = [k for k, r in enumerate(res) if r > 0]  # consistency only matters when the result is right
    scores = consistency_scores(rc.consistency.mode, [ro.texts[k] for k in right], engine=checker,
                                temperature=rc.consistency.temperature, retries=rc.consistency.retries, stats=stats)
    for k, c in zip(right, scores, strict=True):
        cons[k] = c
    msrl = cfg.data.prompt == "msrl"
    typ = [type_reward(x, tt) if msrl else 0.0 for x, tt in zip(ro.texts, ro.task_types, strict=True)]
    # both orders of an item are rolled out by the same process, one after the other (_rollout)
    order = (order_agreement(res, ro.valid, rc.n_samples_per_prompt) if rc.order_consistency_weight
             else [0.0] * len(res))
    totals = [(combine(fmt=f, result=r, consistency=c, type_score=ty, format_weight=rc.format_weight,
                       consistency_weight=rc.consistency_weight, type_weight=rc.type_weight if msrl else 0.0)
               + rc.order_consistency_weight * o) * v
              for f, r, c, ty, o, v in zip(fmt, res, cons, typ, order, ro.valid, strict=True)]
    return Rewards(fmt=fmt, result=res, consistency=cons, type=typ, order=order, total=totals,
                   t_reward=time.perf_counter() - t0)


# ================================================================ 3. old and reference log-probs
@dataclass(frozen=True)
class LogProbs:
    """Step 3, (B, T) over the rollout's sequences, right-padded to the longest."""

    old_logp: Any  # the rollout policy's log-probs (zeros, never read, when on-policy)
    mask: Any  # valid response tokens (none for a masked sample)
    ref_logp: Any | None  # the reference model's (rl.kl_coef > 0)
    kl: Any | None  # the KL estimate of old vs reference on valid tokens
    gaps: Any | None  # rl.stress.logprob_mismatch: subtracted from old_logp in the update


def _old_logprobs(cfg: Config, t: Training, plan: Plan, ro: Rollout, sampler: Sampler, *, step: int) -> LogProbs:
    import torch

    from r1rm.core.policy_loss import kl_estimate
    from r1rm.runtime.rollout import response_mask, token_logprobs

    rc, acc = cfg.rl, t.acc
    policy = sampler.stale if sampler.stale is not None else t.model
    old_rows, mask_rows, ref_rows = [], [], []
    t.model.eval()
    with torch.no_grad():
        for k in range(0, len(ro.seqs), rc.micro_batch_size):
            chunk = ro.seqs[k:k + rc.micro_batch_size]
            if plan.on_policy:
                m = response_mask(chunk).to(acc.device)
                logp = torch.zeros_like(m)  # never read: the update pass supplies old log-probs
            with acc.autocast():
                if not plan.on_policy:
                    logp, m, _ = token_logprobs(policy, chunk, pad_id=t.tok.pad_token_id, device=acc.device)
                if t.ref is not None:
                    ref_logp, _, _ = token_logprobs(t.ref, chunk, pad_id=t.tok.pad_token_id, device=acc.device)
                    ref_rows += list(ref_logp)
            old_rows += list(logp)
            mask_rows += list(m * torch.tensor(ro.valid[k:k + len(chunk)], device=m.device)[:, None])
    t.model.train()
    width = max(x.shape[0] for x in old_rows)

    def stack(rows: list) -> torch.Tensor:
        return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[0])) for r in rows])

    old_logp, mask = stack(old_rows), stack(mask_rows)
    ref_logp = stack(ref_rows) if t.ref is not None else None
    kl = kl_estimate(old_logp, ref_logp, kind=rc.kl_estimator) * mask if ref_logp is not None else None
    return LogProbs(old_logp=old_logp, mask=mask, ref_logp=ref_logp, kl=kl,
                    gaps=_logprob_gaps(cfg, mask, step=step, rank=acc.process_index))


def _logprob_gaps(cfg: Config, mask, *, step: int, rank: int):
    """rl.stress.logprob_mismatch: old log-probs off by rare large gaps (an engine that disagrees
    with the trainer); seeded by seed, step and process, so a resumed run draws the same."""
    st = cfg.rl.stress
    if not st.logprob_mismatch:
        return None
    from r1rm.core.stress import engine_logprob_gaps, logprob_gap_generator

    return engine_logprob_gaps(mask, share=st.logprob_mismatch, gap=st.logprob_gap,
                               generator=logprob_gap_generator(seed=cfg.seed, step=step, rank=rank))


# ================================================================ 4. advantages
def _advantages(cfg: Config, t: Training, plan: Plan, ro: Rollout, rw: Rewards, lp: LogProbs, adv_filter: str, *,
                step: int, counters: dict) -> tuple[Any, Any, float]:
    """(adv (B, T), the filter's dropped mask, seconds): the rl.algorithm estimator on the rewards,
    normalised with the rollout batch's statistics across processes where it needs them."""
    import torch

    from r1rm.core.advantages import (
        finish_advantages,
        masked_moments,
        moments_to_mean_std,
        needs_batch_moments,
        raw_advantages,
    )

    rc = cfg.rl
    t0 = time.perf_counter()
    trained = rw.total
    if rc.stress.reward_outliers:  # rewards far off the batch's, for training only (metrics report the true ones)
        from r1rm.core.stress import outlier_generator, with_reward_outliers

        trained, n_out = with_reward_outliers(
            rw.total, ro.valid, share=rc.stress.reward_outliers, value=rc.stress.outlier_reward,
            generator=outlier_generator(seed=cfg.seed, step=step, rank=t.acc.process_index))
        counters["stress_reward_outliers"] = counters.get("stress_reward_outliers", 0) + n_out
    reward_t = torch.tensor(trained, device=t.acc.device)
    raw = raw_advantages(rc.algorithm, reward_t, lp.mask, kl=lp.kl if rc.kl_in == "reward" else None,
                         kl_coef=rc.kl_coef, group_size=plan.n, scale_std=rc.grpo_scale_std)
    mean, std = 0.0, 1.0
    if needs_batch_moments(rc.algorithm, adv_filter=adv_filter):
        mean, std = moments_to_mean_std(t.acc.reduce(masked_moments(raw, lp.mask), reduction="sum"))
    adv, dropped = finish_advantages(rc.algorithm, raw, lp.mask, mean=mean, std=std, adv_filter=adv_filter,
                                     sigma=rc.adv_filter_sigma)
    return adv, dropped, time.perf_counter() - t0


# ================================================================ 5. policy updates
def _update(cfg: Config, t: Training, plan: Plan, ro: Rollout, lp: LogProbs, adv, *, pre_clip_ratio: float | None,
            step: int, counters: dict) -> dict:
    """rl.ppo_epochs passes over the rollout in train batches (micro-batches + accumulation); returns
    the update's stats summed over its micro-batches (extremes kept), and its gradient norms."""
    import torch

    from r1rm.runtime.accel import apply_update

    rc, acc = cfg.rl, t.acc
    stats = {"clip_frac": 0.0, "preclip_high_frac": 0.0, "preclip_low_frac": 0.0, "ratio_max": 0.0,
             "ratio_min": math.inf, "loss_token_max": 0.0, "approx_kl": 0.0, "entropy": 0.0, "loss": 0.0,
             "micro": 0, "grad_norm": None, "grad_norm_max": None}
    for ppo_epoch in range(rc.ppo_epochs):
        for batch_ids in _train_batches(ro.seqs, plan, seed=cfg.seed, step=step, ppo_epoch=ppo_epoch):
            tok_total = _reduce_sum(acc, [float(lp.mask[batch_ids].sum())])[0]
            bad = torch.zeros((), device=acc.device)
            for start in range(0, len(batch_ids), rc.micro_batch_size):
                ids = batch_ids[start:start + rc.micro_batch_size]
                with acc.accumulate(t.model):
                    _micro_batch(cfg, t, plan, ro, lp, adv, ids, pre_clip_ratio=pre_clip_ratio, tok_total=tok_total,
                                 batch_len=len(batch_ids), bad=bad, stats=stats, counters=counters)
                    if acc.sync_gradients:
                        grad_norm = apply_update(acc, t.params, t.optimizer, t.scheduler, bad=bad,
                                                 max_grad_norm=rc.max_grad_norm, deepspeed=t.deepspeed,
                                                 counters=counters)
                        stats["grad_norm"] = grad_norm
                        if grad_norm is not None:  # the largest over the step's updates (nan/inf kept)
                            gn, top = float(grad_norm), stats["grad_norm_max"]
                            if top is None or not math.isfinite(gn) or gn > top:
                                stats["grad_norm_max"] = gn
    return stats


def _train_batches(seqs: list, plan: Plan, *, seed: int, step: int, ppo_epoch: int) -> list[list[int]]:
    """One PPO epoch's train batches of this process: a seeded permutation of the rollout (a
    prompt's n samples stay together when grouped), each batch in micro batches of similar
    length (less padding: the update sums their gradients, so which sequences share a micro
    batch does not change it)."""
    import torch

    g = torch.Generator().manual_seed(seed * 7919 + step * 31 + ppo_epoch)
    unit = plan.n if plan.grouped else 1
    perm = [k * unit + j for k in torch.randperm(len(seqs) // unit, generator=g).tolist() for j in range(unit)]
    batches = []
    for start in range(0, len(perm), plan.per_proc_train):
        units = [perm[u:u + unit] for u in range(start, min(start + plan.per_proc_train, len(perm)), unit)]
        batches.append([k for grp in sorted(units, key=lambda grp: max(seqs[k].n_tokens for k in grp)) for k in grp])
    return batches


def _micro_batch(cfg: Config, t: Training, plan: Plan, ro: Rollout, lp: LogProbs, adv, ids: list[int], *,
                 pre_clip_ratio: float | None, tok_total: float, batch_len: int, bad, stats: dict,
                 counters: dict) -> None:
    """Forward and backward of one micro batch (inside accumulate); its stats added to `stats`. A
    non-finite loss backs a zero gradient instead and marks the update `bad` (skipped, counted)."""
    import torch

    from r1rm.core.policy_loss import aggregate, clipped_policy_loss, kl_estimate
    from r1rm.runtime.rollout import grouped_token_logprobs, token_logprobs

    rc, acc, n = cfg.rl, t.acc, plan.n
    with acc.autocast():
        if plan.grouped:
            logp, _, ent = grouped_token_logprobs(
                t.model, [[ro.seqs[k] for k in ids[u:u + n]] for u in range(0, len(ids), n)],
                pad_id=t.tok.pad_token_id, device=acc.device, with_entropy=True)
        else:
            logp, _, ent = token_logprobs(t.model, [ro.seqs[k] for k in ids], pad_id=t.tok.pad_token_id,
                                          device=acc.device, with_entropy=True)
    w = logp.shape[1]
    mask = lp.mask[ids][:, :w]
    old_logp = logp.detach() if plan.on_policy else lp.old_logp[ids][:, :w]
    if lp.gaps is not None:
        old_logp = old_logp - lp.gaps[ids][:, :w]
    loss, st = clipped_policy_loss(logp, old_logp, adv[ids][:, :w], mask, clip_eps_low=rc.clip_eps,
                                   clip_eps_high=rc.clip_eps_high, pre_clip_ratio=pre_clip_ratio, agg=rc.loss_agg)
    if lp.ref_logp is not None and rc.kl_in == "loss":
        loss = loss + rc.kl_coef * aggregate(kl_estimate(logp, lp.ref_logp[ids][:, :w], kind=rc.kl_estimator),
                                             mask, mode=rc.loss_agg)
    if rc.loss_agg == "token_mean":  # the mean over the train batch's tokens on all processes
        scale = float(mask.sum()) * acc.num_processes / max(tok_total, 1.0)
    else:
        scale = len(ids) / batch_len
    if not torch.isfinite(loss):
        bad.add_(1)
        counters["nonfinite_microbatches"] += 1
        loss = logp.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0
    acc.backward(loss * scale * plan.accum)
    stats["loss"] += float(loss.detach()) * scale
    stats["micro"] += 1
    for key in ("clip_frac", "preclip_high_frac", "preclip_low_frac", "approx_kl"):
        stats[key] += st[key]
    stats["ratio_max"] = max(stats["ratio_max"], st["ratio_max"])
    stats["ratio_min"] = min(stats["ratio_min"], st["ratio_min"])
    stats["loss_token_max"] = max(stats["loss_token_max"], st["loss_token_max"])
    stats["entropy"] += float((ent.detach() * mask).sum() / mask.sum().clamp(min=1))


def _sleep_engine(sampler: Sampler) -> None:
    """Colocated vLLM sleeps through the update (rl.vllm_sleep_level; `_push_weights` wakes it)."""
    if sampler.vllm is not None and sampler.sleep_level:
        sampler.vllm.sleep(level=sampler.sleep_level)
        sampler.asleep = True


def _push_weights(t: Training, sampler: Sampler) -> dict:
    """Colocated vLLM: wake the engine, load the trainer's weights into it (every process into its own,
    ZeRO-3 gathering a module at a time), then check it on the probe — StaleWeightsError on every
    process when the largest per-token gap on any is past the tolerance. The step's metrics ({} for hf)."""
    if sampler.vllm is None:
        return {}
    from r1rm.runtime.weight_sync import push_and_check

    if sampler.asleep:
        sampler.vllm.wake_up()
        sampler.asleep = False
    r = push_and_check(sampler.vllm, t.acc, t.model, sampler.probe, pad_id=t.tok.pad_token_id, tol=sampler.tol,
                       reduce_max=lambda gap: _reduce_max(t.acc, gap))
    return {"weight_sync_gap": r["gap"], "time_weight_sync_s": r["seconds"]}


# ================================================================ 6. metrics, eval, checkpoints
def _reduce_sum(acc, values: list[float]) -> list[float]:
    import torch

    t = torch.tensor(values, device=acc.device, dtype=torch.float64)
    return acc.reduce(t, reduction="sum").tolist()


def _reduce_max(acc, value: float) -> float:
    if acc.num_processes == 1:
        return value
    import torch

    return float(acc.reduce(torch.tensor(value, device=acc.device), reduction="max"))


def _metrics(t: Training, ro: Rollout, rw: Rewards, lp: LogProbs, adv, dropped, upd: dict, *, totals: _Totals,
             times: dict) -> dict:
    """The step's metrics: sums over every process's samples, tokens and micro batches, divided."""
    from r1rm.core.parsing import extract_answer

    acc = t.acc
    parsed = sum(1 for x, v in zip(ro.texts, ro.valid, strict=True) if v and extract_answer(x, allow_fallback=False).choice)
    local = {"reward": sum(rw.total), "format": sum(rw.fmt), "result": sum(rw.result),
             "consistency": sum(rw.consistency), "type": sum(rw.type), "order": sum(rw.order),
             "samples": max(sum(ro.valid), 1.0),
             "parsed": float(parsed), "tokens": float(lp.mask.sum()), "dropped": float(dropped.sum()),
             "adv_abs": float((adv.abs() * lp.mask).sum()),
             "kl": float(lp.kl.sum()) if lp.kl is not None else 0.0, "clip_frac": upd["clip_frac"],
             "approx_kl": upd["approx_kl"], "entropy": upd["entropy"], "micro": float(max(upd["micro"], 1)),
             "loss": upd["loss"], "label1": float(sum(v for v, lab in zip(ro.valid, ro.labels, strict=True) if lab == 1)),
             "preclip_high_frac": upd["preclip_high_frac"], "preclip_low_frac": upd["preclip_low_frac"]}
    g = dict(zip(local, _reduce_sum(acc, list(local.values())), strict=True))
    nv, nt, nm = g["samples"], max(g["tokens"], 1.0), g["micro"]
    grad_norm = upd["grad_norm"]
    return {
        "reward": g["reward"] / nv, "reward_format": g["format"] / nv, "reward_result": g["result"] / nv,
        "reward_consistency": g["consistency"] / nv, "reward_type": g["type"] / nv,
        "reward_order_agreement": g["order"] / nv, "accuracy": g["result"] / nv,
        "parse_fail_rate": 1.0 - g["parsed"] / nv, "response_length": g["tokens"] / nv,
        "rollout_samples": int(g["samples"]), "label1_share": g["label1"] / nv, "adv_filtered": g["dropped"] / nt,
        "adv_abs_mean": g["adv_abs"] / nt,  # the advantages' fingerprint: mean |Â| over valid tokens
        "kl_ref": g["kl"] / nt if lp.kl is not None else None,
        "clip_frac": g["clip_frac"] / nm, "approx_kl": g["approx_kl"] / nm, "entropy": g["entropy"] / nm,
        "loss": g["loss"] / acc.num_processes,
        "preclip_high_frac": g["preclip_high_frac"] / nm, "preclip_low_frac": g["preclip_low_frac"] / nm,
        "ratio_max": _reduce_max(acc, upd["ratio_max"]), "ratio_min": -_reduce_max(acc, -upd["ratio_min"]),
        "loss_token_max": _reduce_max(acc, upd["loss_token_max"]),
        "grad_norm": None if grad_norm is None else float(grad_norm), "grad_norm_max": upd["grad_norm_max"],
        "lr": t.scheduler.get_last_lr()[0], "consistency_failures": totals.consistency.failures,
        "time_rollout_s": times["rollout"], "time_reward_s": times["reward"], "time_train_s": times["train"],
        "time_generate_s": times["generate"], "step_time_s": times["step"],
        # everything but generate / forward / backward / optimizer: prompt encoding, rewards, advantages
        "time_overhead_s": (times["rollout"] - times["generate"]) + times["reward"] + times["adv"],
        **totals.counters,
    }


def _eval_log_save(cfg: Config, t: Training, plan: Plan, sampler: Sampler, metrics: dict, totals: _Totals, *,
                   step: int, log) -> None:
    """The periodic held-out eval (and rl.keep_best's best/), the metrics row, the checkpoint."""
    rc = cfg.rl
    evaluated = training.periodic_eval(cfg, t, rc, step=step, total=plan.total_rollouts, best=totals.best,
                                       max_new_tokens=rc.max_new_tokens)
    if evaluated is not None:
        totals.last_eval, totals.best = evaluated
        metrics.update(totals.last_eval)
    if step % cfg.runtime.log_every_steps == 0 or step == plan.total_rollouts:
        log.log(step, metrics)
    if step % rc.save_every_steps == 0 and step < plan.total_rollouts:
        training.save(t, step=step, keep_last=rc.keep_last, state=totals.state(), extra=_lag_extra(sampler))
