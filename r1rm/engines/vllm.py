"""A thin engine over vLLM's offline `LLM.chat`; the only r1rm module that imports `vllm`.

vLLM is an optional extra (`pip install 'r1rm[vllm]'` on a CUDA machine). Without it,
`VLLMEngine(...)` raises MissingDependencyError; r1rm never falls back to the hf engine.

The translation functions are pure and module-level so they are tested without vLLM:

- `to_vllm_messages`: r1rm messages → the OpenAI-style messages `LLM.chat` takes
  (vllm/renderers/chat_utils.py), after the one preprocessing every engine applies
  (r1rm.data.media.prepare_visuals with the run's MediaBudget): each image, decoded and
  fitted to the budget, becomes an `image_pil` part (no encoding round trip); a video, its
  frames sampled and fitted, becomes ONE `video_url` part (vLLM's frame-sequence data URL,
  PNG frames: r1rm.engines.openai_client.video_data_url), read with every frame at
  VIDEO_FPS (`media_io_kwargs`, set by the engine), so Qwen2.5-VL's temporal positions
  are the hf engine's. The engine gives vLLM's processor the same pixel bounds
  (`mm_processor_kwargs` min_pixels / max_pixels), which then has nothing left to resize.
- `to_vllm_sampling`: SamplingParams → the keyword arguments of `vllm.SamplingParams`
  (top_k 0 → -1, "all tokens"; logprobs=20, the top-20 per generated token, vLLM's
  default `max_logprobs`). With temperature 0 and n > 1, one sample is generated and
  copied n times, as in the hf engine.
- `from_vllm_output`: a `RequestOutput` → Samples (text, token_ids, finished = the
  finish_reason is "stop", choice_probs from the logprobs at the token after `<answer>`).
  vLLM V1 returns raw logprobs (before temperature / penalties; `logprobs_mode` default
  "raw_logprobs"), so these match the hf engine's raw-logit softmax. When only one of
  "1"/"2" is among the top 20, the other counts as 0. `mean_logprob` is the mean of the
  sampled tokens' logprobs (always present: vLLM includes the sampled token), `token_logprobs`
  each of them, `prompt_token_ids` the prompt as vLLM encoded it (`RequestOutput.prompt_token_ids`,
  images expanded: tests/with_vllm/test_vllm_eval.py compares it with the hf engine's).

RL rollouts (`colocated=True`, r1rm.commands.rl): `load_weights` pushes the trainer's weights in
place, `prompt_logprobs` scores the weight-sync probe, `sleep` / `wake_up` free the engine's memory
during the update; tests/with_vllm/test_vllm_rl.py runs them against vLLM's CPU build.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from typing import Any

from r1rm.core.choice import choice_probs_from_logprobs, find_answer_position
from r1rm.data.media import MediaBudget, prepare_visuals
from r1rm.engines.base import ProgressFn, Request, Sample, SamplingParams
from r1rm.engines.openai_client import VIDEO_IO_KWARGS, to_openai_content
from r1rm.errors import ConfigError, MissingDependencyError

N_LOGPROBS = 20


# ---------------------------------------------------------------- translation (pure)
def to_vllm_messages(messages: list[dict], media: MediaBudget | None = None) -> list[dict]:
    """r1rm chat messages → `LLM.chat` messages: `prepare_visuals` (`media` None: images decoded, no
    budget), then images as `image_pil` parts and each video as one `video_url` part of its frames."""
    out = []
    for msg in prepare_visuals(messages, media or MediaBudget()):
        content = msg.get("content")
        if isinstance(content, list):
            content = [q for part in content for q in _vllm_content(part)]
        out.append({**msg, "content": content})
    return out


def _vllm_content(part: Any) -> list[dict]:
    from PIL import Image

    if isinstance(part, dict) and part.get("type") == "image" and isinstance(part.get("image"), Image.Image):
        return [{"type": "image_pil", "image_pil": part["image"]}]
    return to_openai_content(part, video_as="video")


def vllm_media_kwargs(media: MediaBudget | None) -> dict[str, Any]:
    """`LLM` keyword arguments of the one preprocessing: the processor bounded by the run's pixels
    (`mm_processor_kwargs`, images and video frames) and video_url frame sequences read whole at VIDEO_FPS."""
    kwargs: dict[str, Any] = {"media_io_kwargs": copy.deepcopy(VIDEO_IO_KWARGS)}
    bounds = {} if media is None else {"min_pixels": media.min_pixels, "max_pixels": media.max_pixels}
    bounds = {k: v for k, v in bounds.items() if v is not None}
    if bounds:
        kwargs["mm_processor_kwargs"] = bounds
    return kwargs


def to_vllm_sampling(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` (one sample under greedy; see module docstring)."""
    return dict(
        n=1 if params.greedy else params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        max_tokens=params.max_new_tokens,
        seed=params.seed,
        logprobs=N_LOGPROBS,
    )


def per_request_sampling(params: SamplingParams, count: int) -> list[dict[str, Any]]:
    """`to_vllm_sampling` for each of `count` requests. A seed is one per request: seed + i·n for request i
    (vLLM seeds a request's j-th sample seed + j), so no two samples of a call share a random stream —
    one seed for all would give every prompt of an RL rollout batch the same random numbers."""
    kw = to_vllm_sampling(params)
    if kw["seed"] is None:
        return [kw] * count
    return [{**kw, "seed": kw["seed"] + i * kw["n"]} for i in range(count)]


def _choice_probs(token_ids: Sequence[int], logprobs: Sequence[Any] | None) -> dict[int, float] | None:
    """{1: p1, 2: p2} from a completion's per-token logprobs ({token id: Logprob}), or None."""
    if not logprobs:
        return None

    class _Pieces(Sequence):
        # the decoded text of each sampled token, read from its own logprob entry
        def __len__(self) -> int:
            return min(len(token_ids), len(logprobs))

        def __getitem__(self, i):
            entry = logprobs[i].get(token_ids[i])
            return (getattr(entry, "decoded_token", None) or "") if entry is not None else ""

    i = find_answer_position(_Pieces())
    if i is None:
        return None
    top: dict[str, float] = {}
    for lp in logprobs[i].values():
        text = getattr(lp, "decoded_token", None)
        if text is not None:
            top[text] = max(top.get(text, float("-inf")), lp.logprob)
    return choice_probs_from_logprobs(top)


def _token_logprobs(token_ids: Sequence[int], logprobs: Sequence[Any] | None) -> list[float] | None:
    """Log-prob of each sampled token, from each step's {token id: Logprob}; None if missing."""
    if not logprobs or not token_ids:
        return None
    values = []
    for tok, step in zip(token_ids, logprobs, strict=False):
        entry = step.get(tok) if step else None
        if entry is None:
            return None
        values.append(entry.logprob)
    return values


def _mean_logprob(token_ids: Sequence[int], logprobs: Sequence[Any] | None) -> float | None:
    """Mean log-prob of the sampled tokens, from each step's {token id: Logprob}; None if missing."""
    values = _token_logprobs(token_ids, logprobs)
    return sum(values) / len(values) if values else None


def ended_on_stop_token(completion: Any) -> bool:
    """vLLM stopped this completion on an EOS or stop token id, which its `token_ids` (and
    `logprobs`) then end with: finish_reason "stop" with no stop string (stop_reason None for
    EOS, the token id for `stop_token_ids` — generation_config's other EOS ids)."""
    return completion.finish_reason == "stop" and not isinstance(getattr(completion, "stop_reason", None), str)


def _top_logprobs(token_ids: Sequence[int], logprobs: Sequence[Any] | None, k: int) -> list[list[tuple[int, float]]] | None:
    """Per sampled token, the k most likely [(token id, log p)] of its step (vLLM keeps the top N_LOGPROBS, plus
    the sampled token when it ranks lower), most likely first; None if missing."""
    if not k or not logprobs or not token_ids:
        return None
    out = []
    for step in logprobs[: len(token_ids)]:
        ranked = sorted(((tok, e.logprob) for tok, e in (step or {}).items()), key=lambda x: -x[1])
        out.append(ranked[:k])
    return out


def from_vllm_output(output: Any, n: int | None = None, top_k: int = 0) -> list[Sample]:
    """A vLLM `RequestOutput` → Samples; `n` > number of completions copies the first (greedy n > 1);
    `top_k` > 0 fills Sample.top_logprobs (at most N_LOGPROBS).

    Token ids exclude the end-of-sequence token, as the hf engine's do (vLLM's include it): a
    caller that appends EOS to a finished sample (RL rollouts) then has it exactly once."""
    samples = []
    for c in output.outputs:
        ids, logprobs = list(c.token_ids), c.logprobs
        if ended_on_stop_token(c) and ids:
            ids = ids[:-1]
            logprobs = logprobs[: len(ids)] if logprobs else logprobs
        samples.append(
            Sample(
                text=c.text,
                token_ids=ids,
                choice_probs=_choice_probs(ids, logprobs),
                finished=c.finish_reason == "stop",
                mean_logprob=_mean_logprob(ids, logprobs),
                token_logprobs=_token_logprobs(ids, logprobs),
                top_logprobs=_top_logprobs(ids, logprobs, min(top_k, N_LOGPROBS)),
            )
        )
    if n is not None and samples and len(samples) < n:
        samples = [copy.deepcopy(samples[0]) for _ in range(n)]
    prompt = getattr(output, "prompt_token_ids", None)
    if prompt is not None:
        prompt = list(prompt)
        for s in samples:
            s.prompt_token_ids = prompt
    return samples


# ---------------------------------------------------------------- the engine (I/O)
def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise MissingDependencyError("vLLM is not installed", fix="pip install 'r1rm[vllm]' on a CUDA machine") from None
    return vllm


def placement_kwargs(world_size: int) -> dict[str, Any]:
    """`LLM` keyword arguments of a colocated rollout engine, one per training process, tensor parallel 1
    (docs/training.md, "vLLM rollouts and placement"): under several processes vLLM's external launcher,
    so that each engine joins the process group torchrun / accelerate started and sits on the device
    its LOCAL_RANK names (the default executor would put every process's engine on the first device)."""
    return {"distributed_executor_backend": "external_launcher"} if world_size > 1 else {}


def _sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


class VLLMEngine:
    """Generation with a vLLM `LLM` (see the module docstring)."""

    gives_top_logprobs = True  # Sample.top_logprobs for SamplingParams.top_logprobs <= N_LOGPROBS

    def __init__(
        self,
        model_path: str,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        limit_mm_per_prompt: dict[str, int] | None = None,
        enable_sleep_mode: bool = False,
        media: MediaBudget | None = None,
        colocated: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ):
        """`colocated`: an RL rollout engine, one in each training process (`placement_kwargs`), kept in
        this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that `load_weights` reaches its model.
        `enable_sleep_mode` where the platform has it (not vLLM's CPU build: there `sleep` and
        `wake_up` stay accepted no-ops)."""
        if colocated:  # before vLLM reads its environment
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        vllm = _import_vllm()
        if not model_path:
            raise ConfigError("the vllm engine needs a checkpoint: model.path is empty", fix="set model.path")
        self._vllm = vllm
        kwargs: dict[str, Any] = dict(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
            enable_sleep_mode=enable_sleep_mode and _sleep_mode_available(),
            # model.revision / model.trust_remote_code, as every transformers load of r1rm passes them
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        self.colocated = colocated
        if colocated:
            kwargs.update(placement_kwargs(int(os.environ.get("WORLD_SIZE", "1"))))
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if limit_mm_per_prompt is not None:
            kwargs["limit_mm_per_prompt"] = limit_mm_per_prompt
        # the run's budget for images and video frames (the one preprocessing of every engine)
        self.media = media
        kwargs.update(vllm_media_kwargs(media))
        self.llm = vllm.LLM(**kwargs)

    def generate(
        self, requests: Sequence[Request], params: SamplingParams, progress: ProgressFn | None = None
    ) -> list[list[Sample]]:
        """`params.n` samples per request, in request order (vLLM schedules the whole list at once)."""
        sampling = [self._vllm.SamplingParams(**kw) for kw in per_request_sampling(params, len(requests))]
        outputs = self.llm.chat([to_vllm_messages(r.messages, self.media) for r in requests], sampling, use_tqdm=False)
        if progress is not None:
            progress(len(requests))
        return [from_vllm_output(o, params.n, params.top_logprobs if params.logprobs else 0) for o in outputs]

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> int:
        """Load (name, tensor) pairs — the trainer's Hugging Face parameter names, any subset, in any
        order — into the engine's model in place; returns how many were given. Then drops every cache
        computed with the old weights (prefix KV blocks, vision-encoder outputs).

        Needs the engine in this process (colocated=True). vLLM's layerwise reload
        (`Worker.reload_weights(weights_iterator=...)`) maps the names (vLLM's own hf_to_vllm_mapper,
        stacked q/k/v and gate/up) and re-runs each layer's post-load processing: calling
        `model.load_weights` directly, as TRL and OpenRLHF do on GPUs, fails on vLLM's CPU build,
        whose linear layers keep their weights repacked (`AssertionError: Attempted to load weight
        (torch.Size([128, 256])) into parameter (torch.Size([0]))`). Older vLLM without the
        layerwise reload takes that direct path."""
        count = 0

        def counted():
            nonlocal count
            for name, tensor in weights:
                count += 1
                yield name, tensor

        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted(), "is_checkpoint_format": True})
        except TypeError:  # reload_weights() without weights_iterator (vLLM before the layerwise reload)
            self.llm.apply_model(lambda model: model.load_weights(counted()))
        self.llm.reset_prefix_cache()
        # the scheduler's and the worker's caches of vision-encoder outputs and processed media must be
        # dropped together (a reload clears the worker's only: "Encoder cache miss" on the next image)
        reset_encoder = getattr(self.llm.llm_engine, "reset_encoder_cache", None)
        if reset_encoder is not None:
            reset_encoder()
        if hasattr(self.llm, "reset_mm_cache"):
            self.llm.reset_mm_cache()
        return count

    def prompt_logprobs(self, token_ids: Sequence[int], *, images: Sequence[Any] = (), start: int) -> list[float]:
        """log p(token i | tokens before it) for every i >= `start` of a prompt given as token ids with its
        vision placeholders expanded (a processor's encoding; `images` its images in order, PIL) — the
        engine's side of the weight-sync probe (r1rm.runtime.weight_sync).

        vLLM expands the placeholders itself, so each run of one is collapsed to a single token first;
        the ids vLLM then scores must equal `token_ids`, else ValueError (the engine encodes the images
        differently: another pixel budget)."""
        tok = self.llm.get_tokenizer()
        pads = {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>") if t in tok.get_vocab()}
        ids = list(token_ids)
        short = [x for i, x in enumerate(ids) if not (x in pads and i > 0 and ids[i - 1] == x)]
        prompt: dict[str, Any] = {"prompt_token_ids": short}
        if images:
            prompt["multi_modal_data"] = {"image": list(images)}
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        (out,) = self.llm.generate([prompt], params, use_tqdm=False)
        if list(out.prompt_token_ids) != ids:
            raise ValueError(f"vLLM encoded the probe as {len(out.prompt_token_ids)} tokens, the trainer's processor "
                             f"as {len(ids)}: the engine sees other image sizes (pixel budget) than the trainer")
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))]

    def sleep(self, level: int = 1) -> None:
        """Free the engine's device memory until `wake_up` (`LLM.sleep`): level 1 offloads the weights
        to CPU memory and frees the KV cache (level 2 drops the weights; rollouts after it have come out
        corrupted, vllm-project/vllm#29341). Without sleep mode (vLLM's CPU build has none) vLLM ignores the call."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Reallocate after `sleep` (`LLM.wake_up`; tags in ("weights", "kv_cache"), None: both)."""
        self.llm.wake_up(tags=tags)

    def close(self) -> None:
        if self.llm is not None and self.colocated:
            # vLLM's in-process teardown destroys torch.distributed's default process group — the trainer's,
            # which accelerate has yet to end: the process's exit frees a colocated engine instead
            finalizer = getattr(getattr(self.llm.llm_engine, "engine_core", None), "_finalizer", None)
            if finalizer is not None:
                finalizer.detach()
        self.llm = None
