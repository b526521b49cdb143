"""The default engine: batched `model.generate` of a transformers chat VLM.

Requests are sorted by an estimate of their prompt length (text characters plus a fixed
weight per image or video frame) and generated `batch_size` at a time with LEFT padding,
so the prompts of a batch end at the same position; results come back in request order.

Decoding follows r1rm's `SamplingParams`, not the checkpoint's `generation_config.json`
(Qwen2.5-VL ships temperature 0.1, top_k 1, repetition_penalty 1.05): every sampling
field is set explicitly, because transformers 5 fills fields left unset from the
checkpoint's config (`GenerationMixin._prepare_generation_config`).

- temperature 0: greedy. With n > 1 the request is generated once and the n samples are
  copies (greedy decoding is deterministic; sampling is off, so no diversity is invented).
- temperature > 0: sampling with temperature/top_p/top_k, n samples per request. With n > 1
  the prompt is prefilled ONCE per request and its KV cache copied to the n rows
  (`share_prefill`, default on; on only for a family of r1rm.models.families tested equal to the plain
  forward, else off with one line on stderr and in `engine.speedups`): `generate` then continues from the cache, so the prompt's
  forward runs once instead of n times (RL's n samples per prompt: at group 4 a quarter of
  the prefill). The prefill uses generate's own position ids
  (`_prepare_position_ids_for_generation`: left padding, Qwen's 3-D mrope positions and the
  rope deltas the decode steps continue from; r1rm.models.prefill). share_prefill=False:
  `num_return_sequences`, which repeats each prompt n times before the prefill. With
  `params.seed` the global torch RNG is seeded inside `torch.random.fork_rng` (the caller's RNG state is left untouched), so the same call
  gives the same samples.
- Generation stops on the model's EOS ids (generation_config, else the tokenizer's).
  `Sample.finished` is True when the sample ended with EOS, False when cut at
  max_new_tokens; `token_ids` exclude EOS and padding; `text` is decoded without
  special tokens.

Choice probabilities: a `ChoiceLogitsRecorder` logits processor keeps, at each step,
only the raw logits of the "1" and "2" tokens — (rows, 2) floats per step instead of the
full vocabulary (152k for Qwen). transformers 5 applies user logits processors before the
sampling warpers (temperature, top-k, top-p are appended after `logits_processor` in
`_get_logits_processor`), so the recorder sees unwarped logits. Only processors the
checkpoint's generation config switches on (penalties, bad words, min length...) run
before it; r1rm sets repetition_penalty=1.0 and Qwen-VL checkpoints set none of the
others. r1rm.core.choice then finds the answer position and softmaxes the two logits
there. When "1" or "2" is not a single token of the tokenizer, choice_probs is None.

Token log-probabilities (`SamplingParams.logprobs`, for CMKD's most-confident chain): a
`TokenLogprobRecorder` keeps only the previous step's log-softmax of the raw logits
(rows x V, before temperature, like the choice logits) and, when it is called for the
next step, gathers the log-prob of the token chosen at the previous step (the last
column of `input_ids`); the last step is gathered after `generate` returns. So memory is
one (rows, V) tensor plus (rows, T) floats, never all steps' logits. `Sample.mean_logprob`
is the mean over the sample's `token_ids` (EOS and padding excluded; None when empty) and
`Sample.token_logprobs` the per-token values; with `SamplingParams.top_logprobs` = k it also
keeps each step's k most likely (log p, token id) from the same log-softmax (`Sample.top_logprobs`,
(rows, T, k) more). `Sample.prompt_token_ids` is the prompt as the
processor encoded it (left padding removed).

Media: an engine from `make_engine` holds the run's MediaBudget and passes every request through
r1rm.data.media.prepare_visuals (the one preprocessing of every engine) before the processor,
which then has nothing left to resize (it is bounded by the same pixels, `load_processor`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from r1rm.core.choice import CHOICES, choice_probs_at_answer
from r1rm.data.media import MediaBudget, budget_factor, fit_visuals, map_parts, open_rgb, prepare_visuals
from r1rm.engines.base import ProgressFn, Request, Sample, SamplingParams
from r1rm.errors import InputFileError
from r1rm.models.prefill import cache_kwarg, prefill_repeated

# One image (or video frame) counts as this many characters when sorting prompts by length:
# a Qwen2.5-VL image is tens to hundreds of tokens, i.e. about a paragraph of text.
VISUAL_CHARS = 1000


class ChoiceLogitsRecorder(LogitsProcessor):
    """Records the raw logits of two token ids at every generation step; leaves scores unchanged."""

    def __init__(self, token_ids: tuple[int, int]):
        self.token_ids = torch.tensor(token_ids, dtype=torch.long)
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # scores: (rows, V) → keep (rows, 2)
        if self.token_ids.device != scores.device:
            self.token_ids = self.token_ids.to(scores.device)
        self.steps.append(scores[:, self.token_ids].detach().float())
        return scores

    def logits(self) -> torch.Tensor:
        """(rows, T, 2) on CPU: the two logits at each of the T steps."""
        if not self.steps:
            return torch.empty(0, 0, 2)
        return torch.stack(self.steps, dim=1).cpu()


class TokenLogprobRecorder(LogitsProcessor):
    """Log-prob of each generated token under the raw logits, one step behind; leaves scores unchanged."""

    def __init__(self, top_k: int = 0) -> None:
        self._prev: torch.Tensor | None = None  # (rows, V) log-softmax of the previous step
        self.steps: list[torch.Tensor] = []  # one (rows,) per finished step
        self.top_k = top_k  # also keep each step's top_k (log p, token id), most likely first
        self.top_steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # one ((rows, k), (rows, k)) per step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: (rows, L) ends with the token chosen at the previous step
        if self._prev is not None:
            self._gather(input_ids[:, -1])
        self._prev = torch.log_softmax(scores.detach().float(), dim=-1)
        return scores

    def _gather(self, chosen: torch.Tensor) -> None:
        # chosen: (rows,) token ids
        prev = self._prev
        self.steps.append(prev.gather(1, chosen.to(prev.device).long()[:, None]).squeeze(1))
        if self.top_k:
            self.top_steps.append(torch.topk(prev, min(self.top_k, prev.shape[-1]), dim=-1))

    def finish(self, last_tokens: torch.Tensor) -> None:
        """Gather the final step from the last generated token of each row (rows,)."""
        if self._prev is not None:
            self._gather(last_tokens)
            self._prev = None

    def logprobs(self) -> torch.Tensor:
        """(rows, T) on CPU: log p of the token chosen at each of the T steps."""
        if not self.steps:
            return torch.empty(0, 0)
        return torch.stack(self.steps, dim=1).cpu()

    def top(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """((rows, T, k) log p, (rows, T, k) token ids) on CPU, most likely first; None without top_k."""
        if not self.top_k or not self.top_steps:
            return None
        return (torch.stack([v for v, _ in self.top_steps], dim=1).cpu(),
                torch.stack([i for _, i in self.top_steps], dim=1).cpu())


class _Forbid(LogitsProcessor):
    """Give the listed token ids probability 0 (after any recorder has read the raw logits)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.ids] = float("-inf")
        return scores


def prompt_size(messages: list[dict]) -> int:
    """Cheap prompt-length estimate for sorting: text characters + VISUAL_CHARS per image / frame."""
    size = 0
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            size += len(content)
            continue
        for part in content or ():
            kind = part.get("type")
            if kind == "text" or "text" in part:
                size += len(part.get("text") or "")
            elif kind == "video" or "video" in part:
                video = part.get("video")
                size += VISUAL_CHARS * (len(video) if isinstance(video, (list, tuple)) else 8)
            else:
                size += VISUAL_CHARS
    return size


def _media(value: object) -> object:
    """A path (str or Path) as str after checking it exists; PIL images and URLs pass through."""
    if isinstance(value, Path) or (
        isinstance(value, str) and not value.startswith(("http://", "https://", "data:"))
    ):
        if not Path(value).exists():
            raise InputFileError(f"media file not found: '{value}'", fix="check the image/video paths of the request")
        return str(value)
    return value


def _frame(value: object) -> object:
    """A video frame as a PIL image (paths are opened through the media gate, r1rm.data.media.open_rgb)."""
    value = _media(value)
    if isinstance(value, str):
        return open_rgb(value)
    return value


def _prepare_messages(messages: list[dict], media: MediaBudget | None = None) -> list[dict]:
    """Copy of the messages with media paths checked and as str (transformers rejects pathlib.Path).

    With `media` (engines from make_engine): the one preprocessing of every engine first
    (r1rm.data.media.prepare_visuals), so images and frames reach the processor as PIL images
    already at the run's budget. Video frames given as paths are opened as PIL images:
    transformers 5.23's `make_batched_videos` takes each frame path for a whole video when the
    first chat of a batch has no video (video_utils.py, the nested frame-path shortcut reads videos[0][0]).
    """
    fitted = prepare_visuals(messages, media) if media is not None else fit_visuals(messages)
    return map_parts(fitted, _prepare_part)


def _prepare_part(part: dict) -> dict:
    part = dict(part)
    for key in ("image", "path"):
        if key in part:
            part[key] = _media(part[key])
    if isinstance(part.get("video"), (list, tuple)):
        part["video"] = [_frame(f) for f in part["video"]]
    elif "video" in part:
        part["video"] = _media(part["video"])
    return part


def _single_token_ids(tokenizer, texts: Sequence[str]) -> tuple[int, ...] | None:
    """The id of each text when every one encodes to exactly one token, else None."""
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return tuple(i[0] for i in ids) if all(len(i) == 1 for i in ids) else None


class _Pieces(Sequence):
    """Decoded text of each token of a sequence, decoded lazily (only what choice lookup reads)."""

    def __init__(self, tokenizer, ids: list[int]):
        self._tok, self._ids, self._cache = tokenizer, ids, {}

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        if i not in self._cache:
            self._cache[i] = self._tok.decode([self._ids[i]], skip_special_tokens=False)
        return self._cache[i]


# every family's (r1rm.models.families): Qwen-VL, InternVL, LLaVA-OneVision
VISION_PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                       "<IMG_CONTEXT>", "<img>", "</img>", "<video>", "<image>")


def shared_prefill_allowed(model) -> tuple[bool, str]:
    """(whether the model's family has shared prefill tested equal to the plain forward, the state for logs)."""
    from r1rm.models.families import speedups

    state = speedups(model)["shared_prefill"]
    return state == "on", state


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    """A line on stderr, once per process (a switched-off speed-up)."""
    import sys

    if line not in _SAID:
        _SAID.add(line)
        print(line, file=sys.stderr)


class HFEngine:
    """Batched generation with a transformers model + processor (see the module docstring)."""

    gives_top_logprobs = True  # Sample.top_logprobs for SamplingParams.top_logprobs

    def __init__(self, model, processor, *, batch_size: int = 16, device: str | torch.device | None = None,
                 share_prefill: bool = True, media: MediaBudget | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model if device is None else model.to(device)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        # left padding: every prompt of a batch ends where generation starts
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        # the prompt prefilled once for n samples only where the family is tested equal (else off, said once)
        allowed, state = shared_prefill_allowed(model)
        self.share_prefill = share_prefill and allowed
        self.speedups = {"shared_prefill": state if share_prefill else "off (engine.share_prefill=false)"}
        if share_prefill and not allowed:
            _say_once(f"engine: shared prefill {state}")
        # the run's budget for images and video frames (None: the processor's own, shares only), its
        # sides rounded as this processor rounds them (Qwen3-VL: 32; tiling processors: area only)
        self.media = media if media is None else dataclasses.replace(media, factor=budget_factor(processor))
        self.device = next(model.parameters()).device
        self.choice_ids = _single_token_ids(self.tokenizer, CHOICES)
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos)
        # a generated vision placeholder would be read back as an image slot with no image
        # ("image features and image tokens do not match"): the model may never emit one
        vocab = self.tokenizer.get_vocab()
        own = [getattr(processor, k, None) for k in ("image_token", "video_token")]
        self.suppress_ids = sorted({vocab[t] for t in (*VISION_PLACEHOLDERS, *own) if t in vocab})
        from r1rm.models.loading import max_positions

        self.max_positions = max_positions(getattr(model, "config", None))

    # ------------------------------------------------------------------ generation
    def generate(
        self, requests: Sequence[Request], params: SamplingParams, progress: ProgressFn | None = None
    ) -> list[list[Sample]]:
        """`params.n` samples per request, in request order. `progress(k)`: k more requests done."""
        order = sorted(range(len(requests)), key=lambda i: prompt_size(requests[i].messages))
        results: list[list[Sample] | None] = [None] * len(requests)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=self._rng_devices()):
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    for i, samples in zip(chunk, self._generate_batch([requests[i] for i in chunk], params), strict=True):
                        results[i] = samples
                    if progress is not None:
                        progress(len(chunk))
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _rng_devices(self) -> list[int]:
        if self.device.type == "cuda":
            return [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        return []

    def _generation_config(self, params: SamplingParams, n_return: int) -> GenerationConfig:
        sampling = not params.greedy
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sampling,
            # under greedy these are inert; 1.0 / 1.0 / 50 are the values transformers does not warn about
            temperature=params.temperature if sampling else 1.0,
            top_p=params.top_p if sampling else 1.0,
            top_k=params.top_k if sampling else 50,
            repetition_penalty=1.0,
            num_return_sequences=n_return,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=getattr(self.model.generation_config, "bos_token_id", None),
        )

    @torch.inference_mode()
    def _generate_batch(self, batch: list[Request], params: SamplingParams) -> list[list[Sample]]:
        inputs = self.processor.apply_chat_template(
            [_prepare_messages(r.messages, self.media) for r in batch],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            # transformers 5: tokenizer/processor kwargs go in processor_kwargs, not **kwargs
            processor_kwargs={"padding": True},
        )
        too_long = self._too_long(inputs, params)
        if too_long:  # refused per request (Sample.error), the rest of the batch generated without them
            rest = iter(self._generate_batch([r for i, r in enumerate(batch) if i not in too_long], params)
                        if len(too_long) < len(batch) else [])
            return [[Sample(text="", error=too_long[i]) for _ in range(params.n)] if i in too_long else next(rest)
                    for i in range(len(batch))]
        inputs = inputs.to(device=self.device, dtype=self.model.dtype)
        n_return = 1 if params.greedy else params.n
        recorder = ChoiceLogitsRecorder(self.choice_ids) if self.choice_ids is not None else None
        token_lp = TokenLogprobRecorder(params.top_logprobs) if params.logprobs else None
        # the recorders see the raw logits; vision placeholders are forbidden only after them
        suppress = _Forbid(self.suppress_ids) if self.suppress_ids else None
        gen_inputs, n_gen = dict(inputs), n_return
        if n_return > 1 and self.share_prefill and inputs["input_ids"].shape[1] > 1:
            gen_inputs, n_gen = self._prefill_once(inputs, n_return), 1
        out = self.model.generate(
            **gen_inputs,
            generation_config=self._generation_config(params, n_gen),
            logits_processor=LogitsProcessorList([p for p in (recorder, token_lp, suppress) if p is not None]),
        )
        generated = out[:, inputs["input_ids"].shape[1] :].cpu()
        choice_logits = recorder.logits() if recorder else None
        logprobs = top = None
        if token_lp is not None:
            token_lp.finish(out[:, -1])
            logprobs, top = token_lp.logprobs(), token_lp.top()
        rows = [
            self._sample(generated[r], None if choice_logits is None else choice_logits[r],
                         None if logprobs is None else logprobs[r], None if top is None else (top[0][r], top[1][r]))
            for r in range(len(generated))
        ]
        per_request = [rows[i * n_return : (i + 1) * n_return] for i in range(len(batch))]
        if n_return < params.n:
            per_request = [[copy.deepcopy(s[0]) for _ in range(params.n)] for s in per_request]
        ids, mask = inputs["input_ids"].cpu(), inputs["attention_mask"].cpu().bool()
        for i, samples in enumerate(per_request):
            prompt = ids[i][mask[i]].tolist()  # left padding removed
            for s in samples:
                s.prompt_token_ids = prompt
        return per_request

    def _too_long(self, inputs: dict, params: SamplingParams) -> dict[int, str]:
        """{row: why} for prompts that leave the model's positions fewer than max_new_tokens: generating
        them runs far past what the model was trained for (a 100 KB prompt took 72 s for one token)."""
        if self.max_positions is None:
            return {}
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return {i: f"prompt_too_long: the prompt has {n} tokens, with max_new_tokens {params.max_new_tokens} more than the "
                   f"model's {self.max_positions} positions (max_position_embeddings); shorten the item or lower "
                   "generation.max_new_tokens"
                for i, n in enumerate(lengths) if n + params.max_new_tokens > self.max_positions}

    def _prefill_once(self, inputs: dict, n: int) -> dict:
        """Forward each prompt but its last token once, copy the KV cache to n rows per prompt and
        return generate's inputs that continue from it (input_ids / attention_mask repeated n times)."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        _, cache, _ = prefill_repeated(self.model, inputs, n, upto=ids.shape[1] - 1)
        return {"input_ids": ids.repeat_interleave(n, dim=0), "attention_mask": mask.repeat_interleave(n, dim=0),
                cache_kwarg(self.model): cache}

    def _sample(
        self, generated: torch.Tensor, choice_logits: torch.Tensor | None, logprobs: torch.Tensor | None = None,
        top: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Sample:
        """One generated row (T,) → Sample; choice_logits: (T, 2) or None; logprobs: (T,) or None; top: the
        top-k ((T, k) log p, (T, k) token ids) or None."""
        ids = generated.tolist()
        end = next((t for t, tok in enumerate(ids) if tok in self.eos_ids), None)
        finished = end is not None
        ids = ids[:end] if finished else ids
        probs = None
        if choice_logits is not None:
            candidates = [t for t, tok in enumerate(ids) if tok in self.choice_ids]
            probs = choice_probs_at_answer(_Pieces(self.tokenizer, ids), choice_logits, candidates=candidates)
        token_lps = logprobs[: len(ids)].tolist() if logprobs is not None else None
        # the float32 mean, as before per-token log-probs were kept (cmkd ranks chains by it)
        mean_lp = float(logprobs[: len(ids)].mean()) if logprobs is not None and ids else None
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        tops = None
        if top is not None:
            tops = [list(zip(i.tolist(), v.tolist(), strict=True)) for v, i in zip(top[0][: len(ids)], top[1][: len(ids)],
                                                                                    strict=True)]
        return Sample(text=text, token_ids=ids, choice_probs=probs, finished=finished, mean_logprob=mean_lp,
                      token_logprobs=token_lps, top_logprobs=tops)

    def close(self) -> None:
        """Drop the engine's references to the model (the caller may still hold it)."""
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
