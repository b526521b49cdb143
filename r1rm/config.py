"""The one configuration schema shared by every r1rm subcommand.

A run's config is built in three steps: the YAML recipe (`--recipe FILE.yaml`, which
may `inherit:` other recipes) → dotted overrides from the command line
(`rl.lr=1e-6`, values parsed as YAML) → validation by the pydantic model `Config`.
Unknown keys are errors that name the key and suggest the closest valid one; every
error names where the value came from (recipe file:line, or the override).
Each run writes its resolved config to `<output_dir>/config.yaml`.
"""

from __future__ import annotations

import difflib
import math
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from r1rm.core.algorithms import ALGORITHMS
from r1rm.data.files import YamlError, check_output_dir, load_yaml, write_text_atomic
from r1rm.errors import ConfigError, InputFileError
from r1rm.errors import where as file_line  # `where` names arguments here
from r1rm.recipes import closest_names, find_builtin, locate, resolve_shipped

# Upper bounds of the numbers whose meaning bounds them (docs/errors.md, "Numbers"):
# tokens: past every released model's context (2^20); the load-time check then holds a run to its
# model's own positions (r1rm.models.loading.check_context)
MAX_TOKENS = 1 << 20
# seeds: torch takes 64-bit seeds, but r1rm derives per-step seeds as seed x ~10^6 + offsets
# (r1rm.commands.rl, r1rm.core.stress) that must stay below 2^64; 2^32 - 1 (numpy's legacy seed
# range) leaves that room and is the range seeds are commonly written in
SEED_MAX = 2**32 - 1
# pixels per image: Qwen2-VL / 2.5-VL's own largest max_pixels (16384 visual tokens of 28x28)
MAX_PIXELS = 16384 * 28 * 28
# samples per prompt / item (generation.n, eval.k, rl.n_samples_per_prompt, build.cmkd.n)
MAX_SAMPLES = 1024


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types (bool, int, float) a field's annotation admits, through Optional / unions / lists."""
    if annotation in (bool, int, float):
        return {annotation}
    return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation))) if typing.get_args(annotation) else set()


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # booleans are not integers and integers are not booleans: pydantic's lax mode would read
    # eval.k=true as 1 and runtime.progress=1 as true; YAML's true/false are the only booleans
    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_no_number(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
        items = value if isinstance(value, list) else [value]
        if kinds and bool not in kinds and any(isinstance(v, bool) for v in items):
            raise ValueError(f"{value!r} is a boolean, not a number; write a number")
        if kinds == {bool} and not isinstance(value, bool) and value is not None:
            raise ValueError(f"{value!r} is not a boolean; write true or false")
        return value

    # a rate, a learning rate or a timeout that is NaN or infinite means nothing (".inf" and "nan"
    # parse as floats)
    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number; write a finite value")
        return value


# ---------------------------------------------------------------- model
class LoraConfig(Section):
    r: int = Field(0, ge=0, le=4096, description="LoRA rank; 0 disables LoRA (full fine-tuning).")
    alpha: int = Field(16, ge=1, le=1 << 16, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names LoRA adapts (language model only).",
    )


class ModelConfig(Section):
    path: str = Field("", description="Checkpoint folder (HF format) or a hub model id (from the hub cache when offline); `r1rm tiny-model` makes one.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of model.path; None = the default branch.")
    trust_remote_code: bool = Field(
        False, description="Let transformers run the checkpoint's own modelling code (families transformers lacks natively)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] | None = Field(
        None, description="Attention kernel; None lets transformers choose."
    )
    min_pixels: int = Field(3136, gt=0, le=MAX_PIXELS, description="Smallest image area (pixels) the processor resizes up to.")
    max_pixels: int = Field(
        501760, gt=0, le=MAX_PIXELS, description="Largest image area (pixels) per sample; 640*28*28 as in R1-Reward RL and "
        "eval; at most 16384*28*28 (Qwen2-VL's own largest)."
    )
    video_max_frames: int = Field(8, ge=1, le=768, description="Frames sampled uniformly from a video (frames folder).")
    freeze_vision_tower: bool = Field(False, description="Freeze the vision encoder (MSRL stage 1).")
    freeze_projector: bool = Field(False, description="Freeze the vision-language projector / merger (MSRL stage 1).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _pixels(self) -> ModelConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels}); lower model.min_pixels or raise model.max_pixels"
            )
        return self


# ---------------------------------------------------------------- data
# the synthetic task's colours and shape kinds (r1rm.data.synthetic.COLOURS / SHAPES): a simulated
# teacher's blind spot names some of them
SyntheticAttribute = Literal["red", "green", "blue", "yellow", "purple", "circle", "square", "triangle"]
# how the simulated teacher errs (r1rm.data.synthetic.TEACHER_MISTAKES)
TeacherMistake = Literal["perception", "position"]


class _SyntheticCount(Section):
    n: int = Field(200, ge=1, le=10_000_000, description="Examples to generate (synth: train.jsonl; a synthetic build-data source: its rows).")


class SyntheticScenes(_SyntheticCount):
    """How the synthetic task's examples are drawn: `synth` reads them from data.synthetic, a build-data
    source of format synthetic from its own flat keys ({name, format: synthetic, n: 200, levels: [...]})."""

    levels: list[int] = Field(default_factory=lambda: [1], description="Difficulty levels (1-5; 6 = image-generation pairs) mixed evenly.")
    modality: Literal["image", "caption", "text"] = Field("image", description="How the scene is shown to the judge.")
    image_size: int = Field(112, ge=28, le=4096, description="Rendered image side in pixels.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Generator seed (0 to 2^32-1); None uses the top-level seed.")
    teacher_error: float = Field(
        0.0, ge=0, le=1, description="Simulated imperfect teacher: share of its traces in the blind spot that are "
        "mistaken (it sees what the wrong response says and concludes it); labels stay true."
    )
    teacher_blind: list[SyntheticAttribute] = Field(
        default_factory=list, description="The simulated teacher's blind spot: colours / shape kinds whose scenes it "
        "may misjudge; empty = every scene."
    )
    teacher_mistake: TeacherMistake = Field(
        "perception", description="How the simulated teacher errs: perception (sees what the wrong response says) or "
        "position (reasons correctly but names Response 1; only where the label is 2)."
    )


class _HeldOutSizes(_SyntheticCount):
    n_eval: int = Field(100, ge=0, le=10_000_000, description="Held-out examples (eval.jsonl, drawn with seed + 1000).")
    n_val: int = Field(0, ge=0, le=10_000_000, description="Validation examples for choosing checkpoints (val.jsonl, seed + 2000); 0: none.")


# pydantic takes fields base-first along the reversed MRO: n, n_eval, n_val, levels, ... (the order
# config.yaml and the config table have always had)
class SyntheticConfig(SyntheticScenes, _HeldOutSizes):
    @model_validator(mode="after")
    def _levels(self) -> SyntheticConfig:
        bad = [lv for lv in self.levels if lv not in range(1, 7)]
        if bad or not self.levels:
            raise ValueError(f"levels must be a non-empty list of integers 1-6, got {self.levels}")
        return self


class DataConfig(Section):
    train: list[str] = Field(default_factory=list, description="Canonical JSONL files to train on.")
    eval: list[str] = Field(default_factory=list, description="Canonical JSONL files for held-out evaluation.")
    image_root: str | None = Field(
        None, description="Folder image/video paths resolve against; default: the folder of each data file."
    )
    prompt: Literal["r1reward", "msrl"] = Field(
        "r1reward", description="Judge prompt: the byte-exact R1-Reward prompt, or the MSRL prompt with <type> tags."
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


# ---------------------------------------------------------------- generation / engine
class GenerationConfig(Section):
    max_new_tokens: int = Field(
        1024, ge=1, le=MAX_TOKENS, description="Most tokens generated per sample; with the prompt it must fit the model's "
        "positions (max_position_embeddings): checked when the model is checked, a longer prompt is refused."
    )
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding; 1.0 for sampling (voting).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    top_k: int = Field(0, ge=0, le=MAX_TOKENS, description="Top-k sampling; 0 disables.")
    n: int = Field(1, ge=1, le=MAX_SAMPLES, description="Samples per request (K for voting).")


class EngineConfig(Section):
    kind: Literal["hf", "vllm", "openai"] = Field("hf", description="Generation engine; never falls back silently.")
    batch_size: int = Field(16, ge=1, le=65536, description="Requests per generate call (hf) or in flight (vllm).")
    share_prefill: bool = Field(
        True, description="hf, n > 1 samples: prefill each prompt once and copy its KV cache to the n samples."
    )
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the endpoint's API key.")
    model_name: str | None = Field(None, description="Model name sent to the endpoint; default: model.path.")
    concurrency: int = Field(8, ge=1, le=4096, description="Concurrent requests to an endpoint.")
    timeout_s: float = Field(
        120.0, gt=0, description="openai: total deadline of one attempt at a request (connect, send, the whole "
        "reply); a reply still arriving then is cut off, counted as a timeout and retried."
    )
    max_retries: int = Field(
        3, ge=0, description="openai: retries per failed request (connection errors, timeouts, HTTP 408/429/5xx)."
    )
    backoff_s: float = Field(
        1.0, gt=0, description="openai: base of the exponential backoff; the sleep before retry a is uniform in "
        "[0, min(60, backoff_s * 2**(a-1))] s (full jitter), or the server's Retry-After (capped at 120 s)."
    )
    retry_budget_s: float = Field(
        300.0, gt=0, description="openai: no retry of a request starts once this many seconds since its first "
        "attempt would be spent (long enough for a rate-limited API's 429s)."
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="openai: most requests started per minute (retries included); None = no limit."
    )
    video_as: Literal["video", "frames"] = Field(
        "video", description="openai: a video goes as one video_url part of its frames (vLLM serve), or as one "
        "image_url part per frame (endpoints without video input, e.g. OpenAI's: the model then sees images)."
    )
    tensor_parallel_size: int = Field(1, ge=1, le=1024, description="vLLM tensor parallel degree.")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM share of GPU memory.")


# ---------------------------------------------------------------- training
class OptimConfig(Section):
    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for adamw).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps with linear warm-up.")
    lr_schedule: Literal["cosine", "constant", "linear"] = Field("cosine", description="Schedule after warm-up.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Gradient clipping norm; null = no clipping (the norm is still measured and logged)."
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw (betas 0.9/0.95, the papers' choice) or plain sgd (no momentum: a stress setting "
        "where the loss scale reaches the weights unnormalised)."
    )


class PeriodicEvalConfig(Section):
    """sft and rl: the periodic greedy both-orders eval on data.eval and the best checkpoint it keeps."""

    eval_every_steps: int = Field(0, ge=0, description="Held-out eval (data.eval, both orders, greedy) interval in "
                                  "steps (and at the last step); 0 disables.")
    eval_limit: int | None = Field(None, ge=1, description="Held-out items used by the periodic eval (None: all).")
    keep_best: bool = Field(
        False, description="Keep the model with the best periodic-eval best_metric in output_dir/best (best.json: "
        "step, value); give data.eval a validation split, not the test set."
    )
    best_metric: Literal["both_orders_strict", "both_orders_mean", "chosen_first", "chosen_second"] = Field(
        "both_orders_strict", description="keep_best: the periodic-eval accuracy to maximise (ties keep the earlier step)."
    )


class SFTConfig(PeriodicEvalConfig, OptimConfig):
    epochs: float = Field(1.0, gt=0, le=10_000, description="Passes over the training data (R1-Reward: 1).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(256, ge=1, description="Global batch size in samples (R1-Reward: 256).")
    micro_batch_size: int = Field(1, ge=1, description="Samples per process per forward pass.")
    max_seq_len: int = Field(8192, ge=16, le=MAX_TOKENS, description="Longest prompt + target in tokens.")
    on_truncation: Literal["skip", "error"] = Field(
        "skip", description="A sample longer than max_seq_len is skipped and counted, or stops the run."
    )
    save_every_steps: int = Field(500, ge=1, description="Checkpoint interval in optimizer steps.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    target_field: str = Field(
        "target", description="meta field holding the assistant target (teacher trace); falls back to meta.trace."
    )
    drop_last: bool = Field(True, description="Drop the last incomplete global batch of each epoch.")


class ConsistencyConfig(Section):
    """The RL consistency checker (METHOD §2): does the reasoning's conclusion agree with the answer?"""

    mode: Literal["rule", "model", "none"] = Field(
        "rule", description="rule = deterministic check; model = an engine (rl.consistency.engine_kind); "
        "none = no consistency term."
    )
    engine_kind: Literal["openai", "hf", "vllm"] = Field(
        "openai", description="mode model: an endpoint (openai) or a local model (hf, vllm)."
    )
    base_url: str | None = Field(None, description="mode model, openai: the endpoint, e.g. http://127.0.0.1:8001/v1.")
    model_name: str | None = Field(None, description="mode model: the model name (openai) or checkpoint (hf, vllm).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable with the endpoint's key.")
    timeout_s: float = Field(60.0, gt=0, description="Endpoint: total deadline of one attempt at a request.")
    max_retries: int = Field(
        1, ge=0, description="Endpoint: retries of a request after a connection error, timeout or HTTP 429/5xx "
        "(engine.backoff_s and Retry-After pace them)."
    )
    retry_budget_s: float = Field(
        120.0, gt=0, description="Endpoint: no retry of a request starts once this many seconds since its first "
        "attempt would be spent."
    )
    temperature: float = Field(0.1, ge=0, description="Checker temperature (released code: 0.1).")
    retries: int = Field(3, ge=1, description="Checker attempts before 'undecided' (released code: 3).")


class StressConfig(Section):
    """Stress tests only (r1rm.core.stress): faults injected on purpose; all off by default."""

    label_noise: float = Field(
        0.0, ge=0, lt=0.5, description="This share of the RL items get the wrong label (picked by a hash of the "
        "item's uid: the same items in every run and seed): noisy preference labels, whose rare low rewards are the "
        "outlying advantages the advantage filter drops."
    )
    rollout_lag: int = Field(
        0, ge=0, le=64, description="Rollouts sampled by, and old log-probs taken from, the policy as it was this many "
        "rollout steps earlier (an asynchronous or stale-weights rollout engine), so ratios start far from 1: the "
        "off-policy gap Pre-CLIP bounds. Keeps that many weight copies in CPU memory; hf engine, no DeepSpeed. "
        "0 = on-policy rollouts."
    )
    logprob_mismatch: float = Field(
        0.0, ge=0, le=1, description="This share of the response tokens get old log-probs off by "
        "±rl.stress.logprob_gap nats (sign at random; seeded by seed and step), as if the old log-probs came from an "
        "inference engine that disagrees with the trainer on rare tokens: ratios far from 1 before any update, the "
        "overflow Pre-CLIP bounds. 0 = none."
    )
    logprob_gap: float = Field(
        12.0, gt=0, description="rl.stress.logprob_mismatch: the gap in nats (12: ratios of e^±12, about 1.6e5 and "
        "6e-6, past Pre-CLIP's 10^3 bound)."
    )
    reward_outliers: float = Field(
        0.0, ge=0, le=1, description="This share of the rollout samples (seeded by seed and step) are trained on the "
        "reward rl.stress.outlier_reward instead of theirs — rewards far outside the batch's, whose advantages lie far "
        "outside 3 sigma: what the advantage filter drops. Metrics report the true rewards. 0 = none."
    )
    outlier_reward: float = Field(-10.0, description="rl.stress.reward_outliers: the reward those samples get.")


class RLConfig(PeriodicEvalConfig, OptimConfig):
    lr: float = Field(1e-6, gt=0, description="Peak learning rate (R1-Reward paper: 1e-6; released script: 3e-7).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps with linear warm-up.")
    algorithm: Literal[ALGORITHMS] = Field(
        "stable_reinforce", description="Advantage estimator + loss."
    )
    epochs: float = Field(5.0, gt=0, le=10_000, description="Passes over the RL prompts (paper: 5; released script: 1).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many rollout steps.")
    rollout_batch_size: int = Field(256, ge=1, description="Prompts per rollout (paper: 256).")
    train_batch_size: int = Field(128, ge=1, description="Samples per optimizer step (paper: 128).")
    micro_batch_size: int = Field(1, ge=1, description="Samples per process per forward pass.")
    ppo_epochs: int = Field(1, ge=1, description="Optimisation passes over each rollout.")
    n_samples_per_prompt: int = Field(1, ge=1, le=MAX_SAMPLES, description="Responses sampled per prompt (GRPO group size G).")
    share_prompt_forward: bool = Field(
        True, description="Updates forward a prompt once for its n samples (micro batches of whole groups: "
        "micro_batch_size and the train batch multiples of n; not with DeepSpeed or gradient checkpointing)."
    )
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    max_new_tokens: int = Field(1024, ge=1, le=MAX_TOKENS, description="Rollout response length cap.")
    max_prompt_len: int = Field(
        20480, ge=16, le=MAX_TOKENS, description="Longest prompt in tokens; longer prompts are skipped, never cut "
        "(and so are prompts that leave the model's positions fewer than rl.max_new_tokens)."
    )
    clip_eps: float = Field(0.2, gt=0, description="PPO clip epsilon (low side).")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper clip epsilon (GRPO/DAPO asymmetric; MSRL: 0.28).")
    pre_clip: bool | None = Field(None, description="Clamp the log-ratio before exp; None = on for stable_reinforce.")
    pre_clip_ratio: float = Field(1000.0, gt=1, description="Pre-CLIP bounds the ratio to [1/x, x] (paper: 10^3).")
    adv_filter: Literal["paper", "official", "none"] | None = Field(
        None, description="Advantage filter; None = 'paper' (|A|>3 → 0) for stable_reinforce, 'none' otherwise."
    )
    adv_filter_sigma: float = Field(3.0, gt=0, description="Filter threshold in standard deviations.")
    grpo_scale_std: bool = Field(True, description="GRPO: divide group-centred rewards by the group std.")
    kl_coef: float = Field(0.0, ge=0, description="KL coefficient β; 0 loads no reference model.")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="KL estimator.")
    kl_in: Literal["reward", "loss"] = Field("reward", description="Apply KL as a per-token reward or a loss term.")
    loss_agg: Literal["seq_mean_token_mean", "token_mean"] = Field(
        "seq_mean_token_mean", description="Token mean per sequence then batch mean (paper), or token mean over batch."
    )
    format_weight: float = Field(0.5, ge=0, description="Weight of the format reward.")
    consistency_weight: float = Field(0.5, ge=0, description="Weight of the consistency reward (multiplies result).")
    order_consistency_weight: float = Field(
        0.0, ge=0, description="r1rm's addition, with rl.both_orders: each sample also earns w × (1 − |its result − the "
        "mean result of the same item's samples in the other order|), so a verdict that flips when the responses swap "
        "(position bias) earns less than one that holds in both orders. 0 = off (the papers' reward)."
    )
    type_weight: float = Field(0.2, ge=0, description="MSRL task-type reward weight (prompt msrl only).")
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    save_every_steps: int = Field(50, ge=1, description="Checkpoint interval in rollout steps.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    shuffle: bool = Field(True, description="Shuffle prompts each epoch; false keeps file order (curriculum).")
    both_orders: bool = Field(
        False, description="Roll every item out as given and swapped in the same batch: label-balanced batches, "
        "no net push toward one position (2*n samples per item)."
    )
    rollout_engine: Literal["hf", "vllm"] = Field(
        "hf", description="Rollouts: hf generate on the training model, or vLLM colocated in every training process "
        "(tensor parallel 1), each sampling its share of the prompts, with the weights pushed after every update."
    )
    logprob_check_tol: float | None = Field(
        None, gt=0, description="vLLM: the largest per-token |logp gap| between trainer and engine on the weight-sync "
        "probe after a push (the run stops past it); None = by dtype: 1e-3 float32 (measured 4.8e-7 on CPU), 0.5 "
        "bfloat16 / float16 (not measured: set it from the weight_sync_gap metric of your first steps)."
    )
    vllm_sleep_level: int = Field(
        1, ge=0, le=1, description="vLLM rollouts: 1 = after each rollout the engine sleeps through the update (its "
        "weights offloaded to CPU memory, its KV cache freed) and wakes for the weight push and the next rollout; 0 "
        "keeps its memory all along. (vLLM's level 2, which drops the weights, is not offered: colocated trainers "
        "report corrupted rollouts after it, vllm-project/vllm#29341.) vLLM's CPU build has no sleep mode: the "
        "calls are no-ops there."
    )
    stress: StressConfig = Field(default_factory=StressConfig)

    @property
    def samples_per_item(self) -> int:
        """Responses sampled per RL item in a rollout: n, twice that with both_orders."""
        return self.n_samples_per_prompt * (2 if self.both_orders else 1)

    @model_validator(mode="after")
    def _batches(self) -> RLConfig:
        samples = self.rollout_batch_size * self.samples_per_item
        if samples % self.train_batch_size:
            what = "rollout_batch_size*n_samples_per_prompt" + ("*2 (both_orders)" if self.both_orders else "")
            raise ValueError(
                f"{what} ({samples}) is not divisible by train_batch_size "
                f"({self.train_batch_size}); make train_batch_size a divisor of it"
            )
        if self.algorithm == "grpo" and self.n_samples_per_prompt < 2:
            raise ValueError("grpo needs n_samples_per_prompt >= 2 (a group); set rl.n_samples_per_prompt=8")
        return self


# ---------------------------------------------------------------- judge / eval / vote
class JudgeConfig(Section):
    input: str | None = Field(None, description="JSONL of pairs (canonical, label optional) or of question + candidates.")
    both_orders: bool = Field(True, description="Judge every pair as given and swapped (exposes position bias).")
    served_model_name: str | None = Field(None, description="--serve: model id reported by /v1/models; default: model.path.")
    host: str = Field("127.0.0.1", description="--serve: bind address (a non-loopback one needs an API key or judge.allow_public).")
    port: int = Field(8000, ge=0, le=65535, description="--serve: port (0 picks a free one).")
    api_key_env: str = Field(
        "R1RM_API_KEY", min_length=1,
        description="--serve: environment variable holding the bearer token clients must send; unset or empty = no auth. "
        "The key itself is never written to disk.",
    )
    allow_public: bool = Field(False, description="--serve: allow binding a non-loopback judge.host without an API key.")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, le=1 << 31, description="--serve: largest request body (413 above).")
    max_request_pixels: int = Field(
        128 * 1024 * 1024, ge=1, description="--serve: most decoded pixels over one request's images, read from their "
        "headers before decoding (400 above); each image is also bounded by the media gate (64 x model.max_pixels)."
    )
    max_inflight_pixels: int = Field(
        512 * 1024 * 1024, ge=1, description="--serve: most decoded image pixels held by all requests in the server at once "
        "(reserved from image headers before decoding, released when the request is answered); a request that would pass "
        "it gets 503 with Retry-After. At least judge.max_request_pixels. RGB costs 3-4 bytes per pixel."
    )
    max_queue: int = Field(256, ge=1, description="--serve: requests waiting for the engine; more get 503 with Retry-After.")
    max_reward_queries: int = Field(
        256, ge=1, description="--serve, POST /get_reward: most queries per request (400 above); each is judged in both "
        "orders when judge.both_orders."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="--serve: a connection whose request headers are not complete within this (from its first byte, "
        "or from connecting) gets 408 and is closed."
    )
    body_timeout_s: float = Field(30.0, gt=0, description="--serve: a request whose body is not complete within this of its headers gets 408 and is closed.")
    keep_alive_s: float = Field(
        75.0, gt=0, description="--serve: idle keep-alive connections are closed after this; longer than clients' own idle "
        "expiry (httpx 5 s, aiohttp 15 s), so a client never reuses a connection the server is closing."
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="--serve: on SIGTERM, how long in-flight requests may finish (new ones get 503) before exit."
    )
    reference_response: str | None = Field(
        None, description="--serve, POST /get_reward: the baseline response a policy response is judged against when the "
        "request's label is empty; None = every query needs a reference in its label (400 otherwise)."
    )
    max_k: int = Field(16, ge=1, le=256, description="--serve, /v1/judge and /v1/rank: largest `k` (samples per order) a request may ask.")
    max_candidates: int = Field(
        16, ge=2, le=256, description="--serve, /v1/rank: most candidates per request (N candidates cost N(N-1) judge prompts with both orders)."
    )

    @model_validator(mode="after")
    def _pixel_budgets(self) -> JudgeConfig:
        if self.max_inflight_pixels < self.max_request_pixels:
            raise ValueError(f"judge.max_inflight_pixels ({self.max_inflight_pixels}) is below judge.max_request_pixels "
                             f"({self.max_request_pixels}): a request at the limit could never be served; raise "
                             "max_inflight_pixels or lower max_request_pixels")
        return self

    @model_validator(mode="before")
    @classmethod
    def _removed_api_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("judge.api_key was removed (a key in a recipe ends up on disk): put the key in the environment "
                             "variable named by judge.api_key_env (default R1RM_API_KEY), e.g. `export R1RM_API_KEY=...`")
        return data


class EvalConfig(Section):
    benchmark: Literal["vl-rewardbench", "multimodal-rewardbench", "mm-rlhf-rewardbench", "genai-bench", "canonical"] = Field(
        "canonical", description="Benchmark format of eval.path (genai-bench: image/video generation pairs; ties and "
        "both-bad votes counted, not scored)."
    )
    path: str | None = Field(
        None, description="Benchmark: a hub dataset id, a hub snapshot folder, a parquet file or folder, or JSONL; default: data.eval."
    )
    subset: str | None = Field(None, description="Hub dataset config (subset) of eval.path, e.g. GenAI-Bench's; None = its only/default one.")
    split: str | None = Field(None, description="Split of eval.path (hub id or snapshot); None = the benchmark's test split or its only one.")
    image_root: str | None = Field(None, description="Folder the benchmark's image paths resolve against.")
    orders: list[Literal["chosen_first", "chosen_second"]] = Field(
        default_factory=lambda: ["chosen_first", "chosen_second"], description="Orders each pair is judged in."
    )
    k: int = Field(1, ge=1, le=MAX_SAMPLES, description="Samples per item and order (voting needs k > 1).")
    temperature: float | None = Field(
        None, ge=0, description="Sampling temperature; None = greedy (0) when k is 1, 1.0 when k > 1 (METHOD §5)."
    )
    answer_fallback: bool = Field(
        True, description="Count a last standalone 1/2 as the answer when <answer> is missing (rate reported)."
    )
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N items.")
    skip_missing_media: bool = Field(False, description="Skip (and count) items whose image is missing instead of failing.")

    @model_validator(mode="after")
    def _orders(self) -> EvalConfig:
        if not self.orders:
            raise ValueError("orders must name at least one of chosen_first, chosen_second")
        if len(set(self.orders)) != len(self.orders):
            raise ValueError(f"orders has repeats: {self.orders}")
        return self


class VoteConfig(Section):
    generations: str | None = Field(None, description="generations.jsonl from eval; default: <output_dir>/generations.jsonl.")
    k_max: int | None = Field(None, ge=1, le=MAX_SAMPLES, description="Largest K in the curve; default: all samples present.")


# ---------------------------------------------------------------- build-data
class _SourceSettings(Section):
    name: str = Field(description="Source name: written to each record's `source`; counts and label balance are per source.")
    format: Literal[
        "canonical", "jsonl", "parquet", "hf_disk", "mm-rlhf", "vl-rewardbench", "r1reward-rl", "text_pref", "genai",
        "synthetic"
    ] = Field(description="Row layout of the files (docs/data.md, section Sources).")
    path: str | list[str] | None = Field(
        None, description="File(s) or folder(s): jsonl/json, parquet (or a folder of them), a datasets.save_to_disk folder, "
        "or a build-data output folder (canonical); none for synthetic."
    )
    image_root: str | None = Field(None, description="Folder media paths resolve against; default: each file's folder.")
    fields: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="Field names (jsonl/parquet/hf_disk/text_pref): {question, chosen, rejected, response1, response2, label, "
        "image, video, caption, id, category, preference}; a list means the first name present.",
    )
    category: str | None = Field(None, description="Category for rows that carry none.")
    limit: int | None = Field(None, ge=1, description="Read at most this many rows of the source.")
    role: Literal["main", "replay"] = Field(
        "main", description="caption mode: 'replay' marks stage-1 text samples mixed in at build.caption.replay_ratio."
    )
    require_label: bool = Field(True, description="Reject rows without a label; false keeps unlabelled pairs (cmkd: majority).")
    strip_image_dirs: bool = Field(
        False, description="Keep only the file name of each image path (released rows hold the authors' absolute paths)."
    )
    split: str | None = Field(None, description="Split of a hub id, snapshot folder or saved DatasetDict; default: its only (or train) split.")
    subset: str | None = Field(None, description="Hub dataset config (subset) when path is a hub dataset id.")


# _SourceSettings' fields first, then SyntheticScenes' (read only for format synthetic): the order the
# build-data manifest has always recorded
class SourceConfig(SyntheticScenes, _SourceSettings):
    @model_validator(mode="after")
    def _path(self) -> SourceConfig:
        if self.format != "synthetic" and not self.path:
            raise ValueError(f"source '{self.name}' (format {self.format}) needs a path; set path: FILE or [FILES]")
        if self.format == "synthetic" and any(lv not in range(1, 7) for lv in self.levels):
            raise ValueError(f"source '{self.name}': levels must be integers 1-6, got {self.levels}")
        return self


class TeacherConfig(Section):
    attempts: int = Field(3, ge=1, le=100, description="Teacher attempts per sample until its answer matches the label (R1-Reward: 3).")
    temperature: float = Field(0.0, ge=0, description="Temperature of the first attempt (R1-Reward: 0).")
    retry_temperature: float = Field(
        1.0, ge=0, description="Temperature of attempts 2..N (seeded with seed + attempt) so that retries can differ."
    )


class CaptionConfig(Section):
    source: Literal["auto", "field", "model"] = Field(
        "auto", description="Caption from the record's caption field, from the captioner model (the run's model), or the field when present (auto)."
    )
    prompt: str = Field(
        "Describe this image in detail: the objects, their attributes and positions, and any text.",
        description="Captioner prompt for images.",
    )
    video_prompt: str = Field(
        "Describe this video in detail: the scenes, objects, actions and any text.",
        description="Captioner prompt for videos (frames).",
    )
    replay_ratio: float = Field(
        4.0, ge=0, description="caption:text ratio; floor(n_caption / ratio) replay samples are mixed in (0 = none; MSRL: 4)."
    )


class CMKDConfig(Section):
    n: int = Field(8, ge=1, le=MAX_SAMPLES, description="Reasoning chains sampled per item on its caption version.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the chains.")


class BuildConfig(Section):
    mode: Literal["clean", "teacher", "caption", "cmkd"] = Field(
        "clean",
        description="clean: sources → validated, deduplicated, balanced shards; teacher: + cold-start SFT/RL sets; "
        "caption: + captions and replay (MSRL stage 2); cmkd: + cross-modal distillation SFT set.",
    )
    sources: list[SourceConfig] = Field(default_factory=list, description="Input sources: [{name, format, path, ...}].")
    shard_size: int = Field(50000, ge=1, description="Records per output shard data-NNNNN.jsonl.")
    shuffle: bool = Field(True, description="Shuffle the output with the seed (else: source order, then row order).")
    resize_images: bool = Field(
        True, description="Resize images above model.max_pixels with the Qwen rule (smart_resize) into images/; false leaves them to the processor."
    )
    resize_factor: int = Field(28, ge=1, le=1024, description="smart_resize factor: patch size x spatial merge (Qwen2-VL/2.5-VL: 28).")
    max_reject_rate: float = Field(
        0.1, ge=0, le=1, description="Fail (exit 2, rejects.jsonl written) when a source rejects more than this share of its rows."
    )
    curriculum: bool = Field(True, description="teacher: order sft.jsonl and rl.jsonl easy → hard by attempts needed.")
    chunk_size: int | None = Field(
        None, ge=1, description="Model requests per engine call (teacher, captioner, cmkd; the most a kill loses); "
        "default max(engine.batch_size, engine.concurrency).",
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    cmkd: CMKDConfig = Field(default_factory=CMKDConfig)

    @model_validator(mode="after")
    def _sources(self) -> BuildConfig:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"sources: names must be unique, repeated: {dup}")
        if self.mode != "caption" and any(s.role == "replay" for s in self.sources):
            raise ValueError("a source has role 'replay' but build.mode is not 'caption'; drop the role or set build.mode=caption")
        return self


# ---------------------------------------------------------------- runtime
class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when available.")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config (recipes/deepspeed/zero2.json, zero3.json).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="Autocast for training; auto = bf16 on CUDA, none on CPU. Weights stay fp32 (master copy)."
    )
    num_workers: int = Field(0, ge=0, le=1024, description="Data loader workers.")
    log_every_steps: int = Field(1, ge=1, description="Metrics logging interval.")
    report_to: list[str] | Literal["all", "none"] = Field(
        "all", description="Experiment trackers (accelerate's: tensorboard, wandb, mlflow, ...); all = every one installed, "
        "none = only metrics.jsonl (always written)."
    )
    project: str = Field("r1rm", description="Tracker project / experiment name (W&B project, MLflow experiment).")
    progress: bool = Field(True, description="Show rich progress bars.")
    resume: bool = Field(True, description="Resume from the last complete checkpoint / partial outputs.")


class Config(Section):
    output_dir: str = Field("out/run", description="Where the run writes config.yaml, outputs and checkpoints.")
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="Global seed, 0 to 2^32-1 (per-step seeds derived from it stay within torch's "
        "64-bit range)."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    vote: VoteConfig = Field(default_factory=VoteConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


# ================================================================ loading
_INHERIT = "inherit"

# keys renamed on 2026-12-06, old -> new: a recipe or override still spelling one is told its new
# name, and a run written before the renames is refused on resume (runtime.checkpoint)
RENAMED_KEYS = {
    "rl.stress_label_noise": "rl.stress.label_noise",
    "rl.stress_rollout_lag": "rl.stress.rollout_lag",
    "rl.stress_logprob_mismatch": "rl.stress.logprob_mismatch",
    "rl.stress_logprob_gap": "rl.stress.logprob_gap",
    "rl.stress_reward_outliers": "rl.stress.reward_outliers",
    "rl.stress_outlier_reward": "rl.stress.outlier_reward",
    "rl.consistency_judge": "rl.consistency.mode",
    "judge.engine_kind": "rl.consistency.engine_kind",
    "judge.base_url": "rl.consistency.base_url",
    "judge.model_name": "rl.consistency.model_name",
    "judge.timeout_s": "rl.consistency.timeout_s",
    "judge.temperature": "rl.consistency.temperature",
    "judge.retries": "rl.consistency.retries",
    # 2026-12-06 (trackers through accelerate)
    "runtime.tensorboard": "runtime.report_to",
    "runtime.wandb_project": "runtime.project",
}

# keys removed, old -> how to say it now (a recipe spelling one is refused by its section's validator)
REMOVED_KEYS = {
    "judge.api_key": "put the key in the environment variable named by judge.api_key_env (default R1RM_API_KEY): "
                     "a key in a recipe or on the command line ends up on disk",
}

def _load_yaml_with_lines(path: Path) -> tuple[Any, dict[str, int]]:
    """A recipe's value through the one guarded YAML loader (data.files.load_yaml: no alias bombs,
    no recursive aliases, no `!!python/` tags, no key given twice) and the line of every key as
    `{dotted.path: line}`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError("recipe is not valid UTF-8 text", where=str(path), fix="save the recipe as UTF-8") from None
    try:
        data, node = load_yaml(text)
    except YamlError as e:
        what = e.brief if e.brief.startswith("not valid YAML") else f"recipe refused: {e.brief}"
        raise ConfigError(what.replace("not valid YAML", "recipe is not valid YAML", 1), where=file_line(path, e.line),
                          fix=e.hint) from None
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")
        elif isinstance(n, yaml.SequenceNode):
            # list items (e.g. build.sources) are keyed by index: build.sources.0.format
            for i, v in enumerate(n.value):
                lines[f"{prefix}{i}"] = v.start_mark.line + 1
                walk(v, f"{prefix}{i}.")

    if node is not None:
        walk(node, "")
    return data, lines


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _inherited(p: Path, parent: str, where: str) -> Path:
    """An `inherit:` entry of recipe p: a file relative to p's folder, else a built-in recipe name."""
    local = p.parent / parent
    if local.is_file():
        return local
    found = find_builtin(parent)
    if found is not None:
        return found
    close = closest_names(parent)
    raise InputFileError(f"inherited recipe not found: '{parent}' (neither {local} nor a built-in recipe)", where=where,
                         fix=(f"closest built-in recipes: {', '.join(close)}; " if close else "")
                         + "write a path relative to this recipe's folder or a name `r1rm recipes` lists")


def _resolve_recipe_paths(data: dict, p: Path, origins: dict[str, str]) -> None:
    """Shipped files a recipe names (runtime.deepspeed) resolve against the recipe's own folder first
    (docs/config.md, "Recipes and paths"); made absolute here, while that folder is known."""
    runtime = data.get("runtime")
    value = runtime.get("deepspeed") if isinstance(runtime, dict) else None
    if isinstance(value, str) and value:
        found = resolve_shipped(value, p.parent)
        if found is None:
            raise InputFileError(f"runtime.deepspeed: DeepSpeed config not found: '{value}'",
                                 where=origins.get("runtime.deepspeed", str(p)),
                                 fix="write a path relative to the recipe's folder or the current folder, or a built-in "
                                 "one: deepspeed/zero2.json, deepspeed/zero3.json")
        runtime["deepspeed"] = str(found)


def load_recipe(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Read a YAML recipe (following `inherit:`); return (raw dict, {dotted key: 'file:line'}).
    `path` is a file, or (at the top level) a built-in recipe name such as `tiny/eval` (r1rm.recipes)."""
    p = Path(path) if _seen else locate(path)
    if not p.is_file():
        raise InputFileError(f"recipe not found: '{p}'", fix="pass an existing YAML file or a built-in name to --recipe (`r1rm recipes`)")
    if p.resolve() in _seen:
        raise ConfigError(f"recipe inherits itself in a cycle: {' -> '.join(map(str, _seen + (p,)))}", where=str(p))
    data, lines = _load_yaml_with_lines(p)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a recipe must be a YAML mapping of sections, got {type(data).__name__}", where=str(p),
                          fix="write `section:` blocks such as `model:`, `rl:` at the top level")
    origins = {k: f"{p}:{ln}" for k, ln in lines.items()}
    _resolve_recipe_paths(data, p, origins)
    parents = data.pop(_INHERIT, None)
    if parents is None:
        return data, origins
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(x, str) for x in parents):
        raise ConfigError("'inherit' must be a recipe path or a list of them", where=origins.get(_INHERIT, str(p)))
    merged: dict = {}
    merged_origins: dict[str, str] = {}
    for parent in parents:
        pd, po = load_recipe(_inherited(p, parent, origins.get(_INHERIT, str(p))), _seen + (p.resolve(),))
        merged = _deep_merge(merged, pd)
        merged_origins.update(po)
    merged_origins.update(origins)
    return _deep_merge(merged, data), merged_origins


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (['a','b','c'], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' has no '='", fix="write overrides as dotted.key=value, e.g. rl.lr=1e-6")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not part for part in parts):
        raise ConfigError(f"override '{text}' has an empty key part", fix="write overrides as dotted.key=value, e.g. rl.lr=1e-6")
    try:
        value = load_yaml(raw)[0] if raw.strip() else None
    except YamlError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e.brief.removeprefix('not valid YAML: ')})",
                          fix="quote strings and write lists as [a, b]" if e.brief.startswith("not valid") else e.hint) from None
    # YAML 1.1 reads 1e-6 as a string: pydantic's lax mode turns it into the float a float field wants
    return parts, value


def _suggest(key: str, options: list[str], prefix: str = "") -> str:
    """'did you mean 'prefix.closest'?' or the list of valid keys."""
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    return f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(options))}"


def _model_at(parts: list[str]) -> type[BaseModel] | None:
    """The section model reached by following `parts` from Config, or None if it is a leaf."""
    model: type[BaseModel] = Config
    i = 0
    while i < len(parts):
        field = model.model_fields.get(parts[i])
        if field is None:
            return None
        ann = field.annotation
        item = typing.get_args(ann)[0] if typing.get_origin(ann) is list and typing.get_args(ann) else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif isinstance(item, type) and issubclass(item, BaseModel) and i + 1 < len(parts) and parts[i + 1].isdigit():
            # a list of sections (build.sources): the next part is the item's index
            model = item
            i += 1
        else:
            return None
        i += 1
    return model


def apply_override(raw: dict, parts: list[str], value: Any, text: str) -> None:
    """Set raw[parts...] = value, checking every key against the schema as it goes."""
    node = raw
    model: type[BaseModel] = Config
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        if part not in model.model_fields:
            if dotted in RENAMED_KEYS:
                raise ConfigError(f"override '{text}': '{dotted}' was renamed to {RENAMED_KEYS[dotted]}",
                                  fix=f"write {RENAMED_KEYS[dotted]}=VALUE")
            if dotted in REMOVED_KEYS:
                raise ConfigError(f"override '{text}': '{dotted}' was removed", fix=REMOVED_KEYS[dotted])
            prefix = "".join(p + "." for p in parts[:i])
            raise ConfigError(f"override '{text}': unknown key '{dotted}'", fix=_suggest(part, list(model.model_fields), prefix))
        if i == len(parts) - 1:
            node[part] = value
            return
        sub = _model_at(parts[: i + 1])
        if sub is None:
            raise ConfigError(f"override '{text}': '{dotted}' is a value, not a section",
                              fix=f"write {dotted}=VALUE")
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
        model = sub


def _format_validation(err: ValidationError, origins: dict[str, str], overridden: dict[str, str]) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        dotted = ".".join(loc)
        # an override replaces the whole value at its key: an error inside it (a list item, a
        # nested key) is the override's, not the recipe line that the override replaced
        src = next((overridden[p] for p in (".".join(loc[:i]) for i in range(len(loc), 0, -1)) if p in overridden), None)
        src = src or origins.get(dotted)
        if src is None:
            # a model-level validator points at its section: use the section's location
            src = overridden.get(dotted) or next((origins[k] for k in origins if dotted and k.startswith(dotted + ".")), None)
            src = src or origins.get(dotted)
            # a missing key: point at the nearest enclosing key the recipe has (e.g. the list item)
            parents = [".".join(loc[:i]) for i in range(len(loc) - 1, 0, -1)]
            src = src or next((origins[p] for p in parents if p in origins), None)
        if e["type"] == "extra_forbidden" and dotted in RENAMED_KEYS:
            msg = f"unknown key '{dotted}' (renamed to {RENAMED_KEYS[dotted]})"
        elif e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1]) or Config
            sug = _suggest(loc[-1], list(parent.model_fields), "".join(x + "." for x in loc[:-1]))
            msg = f"unknown key '{dotted}' ({sug})"
        elif e["type"] == "value_error":
            msg = f"{dotted or 'config'}: {str(e['msg']).removeprefix('Value error, ')}"
        else:
            msg = f"{dotted}: {e['msg']} (got {e.get('input')!r})"
        lines.append(f"{src}: {msg}" if src else msg)
    what = "invalid config:\n  " + "\n  ".join(lines)
    return ConfigError(what, fix="edit the recipe or the override named above (`r1rm <cmd> --print-config` shows the resolved config)")


def _resolve_override_paths(raw: dict, overridden: dict[str, str]) -> None:
    """runtime.deepspeed given as an override: the current folder first, then the built-in recipes
    folder (`runtime.deepspeed=deepspeed/zero3.json`); absolute in the resolved config."""
    runtime = raw.get("runtime")
    value = runtime.get("deepspeed") if isinstance(runtime, dict) else None
    src = overridden.get("runtime.deepspeed") or overridden.get("runtime")
    if not (src and isinstance(value, str) and value) or (Path(value).is_absolute() and Path(value).is_file()):
        return
    found = resolve_shipped(value, None)
    if found is None:
        raise InputFileError(f"runtime.deepspeed: DeepSpeed config not found: '{value}'", where=src,
                             fix="give a path relative to the current folder or a built-in one: deepspeed/zero2.json, "
                             "deepspeed/zero3.json")
    runtime["deepspeed"] = str(found)


def load_config(recipe: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Recipe → dotted overrides → validated Config; raises ConfigError/InputFileError on any mistake."""
    raw, origins = load_recipe(recipe) if recipe is not None else ({}, {})
    overridden: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(raw, parts, value, text)
        overridden[".".join(parts)] = f"override '{text}'"
    _resolve_override_paths(raw, overridden)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise _format_validation(e, origins, overridden) from None


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_config(cfg: Config, out_dir: str | os.PathLike | None = None) -> Path:
    """Write the resolved config to `<output_dir>/config.yaml` (atomically) and return its path."""
    out = Path(out_dir or cfg.output_dir)
    check_output_dir(out)  # a file in its place, or a parent that is a file: exit 2 naming it, no traceback
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    write_text_atomic(path, config_to_yaml(cfg))
    return path


def schema_rows(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every leaf of the schema, in declaration order."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += schema_rows(ann, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        typ = getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")
        rows.append((f"{prefix}{name}", typ or str(ann), repr(default), field.description or ""))
    return rows
