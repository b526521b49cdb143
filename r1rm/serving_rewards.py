"""The reward API of `r1rm judge --serve`: judge a pair, rank candidates, reward a policy's responses.

A FastAPI router that r1rm.serving's app includes, so its auth, limits, timeouts, metrics and access log
apply. Callers send questions and responses, never prompts: every pair is put to the judge exactly as
`r1rm judge` puts it (`record_messages` with `data.prompt`, as given and swapped), through the app's
batcher (`app.state.batcher`), so concurrent calls share engine batches.

- `POST /v1/judge`: one pair → `choice`, `p1` = P(response 1 is better) (r1rm.core.reward_api), each
  sample's reasoning per order, whether the orders agree, unparsed samples counted.
- `POST /v1/rank`: N candidates → every pair in both orders → win matrix, win rates, Bradley–Terry
  strengths, ranking and best (r1rm.core.ranking: what `r1rm judge` writes for a candidates item).
- `POST /get_reward`: OpenRLHF's remote reward-model protocol (OpenRLHF v0.11.0, `--remote_rm_url
  http://HOST:PORT/get_reward`): {query, prompts, labels} → {rewards, scores, extra_logs}; each policy
  response (query minus prompt) is judged against a reference (its label, or `judge.reference_response`)
  and its reward is p1 with the policy's response as response 1. Images (the protocol carries text): data
  URLs inside the prompt text, a label given as a JSON object {"reference", "images", "question"}, or an
  extra `images` field (one list of data URLs per query).

Images are data URLs only (the server reads no file and fetches no URL), each passed through the media
gate (r1rm.data.media.admit_image) and all of one request (every query of a /get_reward call together)
bounded by `judge.max_request_pixels`. Bodies are read with r1rm's guarded JSON reader (a duplicate key or
NaN is a 400, as on the chat route) and then validated by the pydantic models below.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from r1rm.core.reward_api import (
    SampleVerdict,
    aggregate_p1,
    pop_data_urls,
    question_from_prompt,
    response_from_query,
    sample_p1,
    to_response1,
)

router = APIRouter()

# Request images are PIL images, never files: the record names them by placeholder paths under this root
# so that `record_messages` builds the prompt as for any record, and the placeholders are swapped back.
_MEDIA_ROOT = "/r1rm-request-media"
_TEXT_LIMIT = 1 << 20  # characters per question / response: far above any model's context


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JudgeBody(_Body):
    question: str = Field(max_length=_TEXT_LIMIT)
    images: list[str] = Field(default_factory=list, description="image data URLs (data:image/png;base64,...)")
    video: list[str] = Field(default_factory=list, description="a video as its frames, each an image data URL")
    response1: str = Field(max_length=_TEXT_LIMIT)
    response2: str = Field(max_length=_TEXT_LIMIT)
    both_orders: bool = True
    k: int = Field(1, ge=1, description="samples per order (at most judge.max_k)")
    temperature: float | None = Field(None, ge=0, le=2)
    model: str | None = None  # accepted for OpenAI-style clients; the server has one model


class RankBody(_Body):
    question: str = Field(max_length=_TEXT_LIMIT)
    images: list[str] = Field(default_factory=list)
    video: list[str] = Field(default_factory=list)
    candidates: list[str] = Field(min_length=2)
    both_orders: bool = True
    k: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    model: str | None = None


class RewardBody(BaseModel):
    # OpenRLHF's payload; fields it may add in later versions are ignored, not refused
    model_config = ConfigDict(extra="ignore")
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list[Any] | None = None
    images: list[list[str]] | None = None


@dataclass
class Pair:
    """One pair to judge: the question, its decoded images or video frames, and the two responses."""

    question: str
    response1: str
    response2: str
    images: list = field(default_factory=list)
    video: list = field(default_factory=list)
    param: str | None = None  # the request field an error about this pair names


def api_error(status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error",
              code: str | None = None):
    """r1rm.serving's ApiError (rendered in OpenAI's error shape by the app); imported when raised, as
    r1rm.serving imports this module."""
    from r1rm.serving import ApiError

    return ApiError(status, message, type=kind, param=param, code=code)


async def read_body(request: Request, model: type[BaseModel]):
    """The request's JSON body through r1rm's guarded reader (duplicate keys, NaN, deep nesting → 400), then
    validated by `model` (400 naming the first invalid field)."""
    from r1rm.data.files import LineError, loads_json

    try:
        data = loads_json(await request.body())
    except LineError as e:
        raise api_error(400, f"body is not valid JSON: {e.brief}", code=e.reason) from None
    if not isinstance(data, dict):
        raise api_error(400, "body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or None
        raise api_error(400, f"{loc}: {first.get('msg', 'invalid value')}" if loc else first.get("msg", "invalid body"),
                        param=loc, code=first.get("type")) from None


def decode_media(urls_by_param: dict[str, list[str]], cfg) -> dict[str, list]:
    """{param: [data URL]} → {param: [PIL image]} through r1rm.serving's request image gate (data URLs only,
    the media gate per image, judge.max_request_pixels over the request); ApiError 400 naming the part."""
    from r1rm.serving import admit_request_images

    flat = [(f"{param}[{i}]", url) for param, urls in urls_by_param.items() for i, url in enumerate(urls)]
    images = iter(admit_request_images(flat, max_pixels=cfg.model.max_pixels,
                                       max_request_pixels=cfg.judge.max_request_pixels))
    return {param: [next(images) for _ in urls] for param, urls in urls_by_param.items()}


def pair_messages(pair: Pair, cfg, *, swapped: bool) -> list[dict]:
    """The judge's chat messages for `pair` (as given or swapped), built exactly as `r1rm judge` builds them."""
    from r1rm.data.chat import record_messages
    from r1rm.data.files import RowError
    from r1rm.data.records import parse_record

    names = {f"image-{i}.png": img for i, img in enumerate(pair.images)}
    frames = {f"frame-{i}.png": img for i, img in enumerate(pair.video)}
    row = {"question": pair.question, "response1": pair.response1, "response2": pair.response2}
    if names:
        row["images"] = list(names)
    if frames:
        row["video"] = list(frames)
    try:
        rec = parse_record(row, require_label=False)
        msgs = record_messages(rec.swapped() if swapped else rec, prompt=cfg.data.prompt, image_root=_MEDIA_ROOT,
                               video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)
    except RowError as e:
        raise api_error(400, str(e), param=pair.param) from None
    by_path = {f"{_MEDIA_ROOT}/{k}": v for k, v in {**names, **frames}.items()}
    for m in msgs:
        for part in m["content"]:
            if part.get("type") == "image":
                part["image"] = by_path[str(part["image"])]
            elif part.get("type") == "video":
                part["video"] = [by_path[str(f)] for f in part["video"]]
    return msgs


def sampling(cfg, *, k: int, temperature: float | None):
    """The run's sampling (`generation.*`, as `r1rm judge`) with k samples per prompt; temperature None =
    generation.temperature for k = 1, and 1.0 for k > 1 when that is greedy (voting needs samples)."""
    from r1rm.engines import sampling_from_config

    if k > cfg.judge.max_k:
        raise api_error(400, f"k={k} exceeds judge.max_k={cfg.judge.max_k}", param="k")
    base = sampling_from_config(cfg)
    if temperature is None:
        temperature = base.temperature if k == 1 or base.temperature > 0 else 1.0
    return replace(base, n=k, temperature=float(temperature))


async def judge_pairs(request: Request, pairs: list[Pair], *, both_orders: bool, k: int,
                      temperature: float | None) -> list[list[dict]]:
    """Every pair judged k times per order in one batcher call → per pair, one dict per sample."""
    from r1rm.core.parsing import extract_answer, extract_tag
    from r1rm.engines.base import Request as EngineRequest
    from r1rm.serving import ApiError, engine_failure

    cfg = request.app.state.cfg
    params = sampling(cfg, k=k, temperature=temperature)
    orders = ("as_given", "swapped") if both_orders else ("as_given",)
    reqs = await asyncio.to_thread(
        lambda: [EngineRequest(pair_messages(p, cfg, swapped=o == "swapped")) for p in pairs for o in orders])
    try:
        results = iter(await request.app.state.batcher.generate(reqs, params))
    except ApiError:
        raise
    except Exception as e:  # noqa: BLE001 (the engine failed on this request alone)
        raise engine_failure(e) from None
    out = []
    for _pair in pairs:
        samples = []
        for order in orders:
            for s, sample in enumerate(next(results)):
                if sample.error is not None:  # an engine failure is not a verdict
                    if sample.error.startswith("prompt_too_long"):
                        raise api_error(400, sample.error, kind="invalid_request_error")
                    raise api_error(500, f"generation failed: {sample.error}", kind="server_error")
                raw = extract_answer(sample.text).choice
                probs = sample.choice_probs
                v = SampleVerdict(order, raw, probs)
                samples.append({"order": order, "sample": s, "text": sample.text,
                                "reasoning": extract_tag(sample.text, "think"), "raw_choice": raw,
                                "choice": to_response1(raw, order), "p_choice": probs.get(raw) if probs and raw else None,
                                "p1": sample_p1(v), "finished": sample.finished, "_verdict": v})
        out.append(samples)
    return out


def verdict(samples: list[dict]) -> dict:
    """A pair's JSON verdict from its sample dicts (`judge_pairs`)."""
    agg = aggregate_p1([s.pop("_verdict") for s in samples])
    return {"choice": agg.choice, "p1": agg.p1, "p1_source": agg.p1_source, "orders_agree": agg.orders_agree,
            "order_choices": agg.order_choices, "votes": {str(c): n for c, n in agg.votes.items()},
            "unparsed": agg.n_unparsed, "unparsed_by_order": agg.unparsed,
            "samples": {o: [s for s in samples if s["order"] == o] for o in agg.order_choices}}


def _check_model(body: JudgeBody | RankBody, request: Request) -> None:
    served = request.app.state.model_name
    if body.model is not None and body.model != served:
        raise api_error(404, f"model '{body.model}' is not served here; this server serves '{served}' (or leave "
                        "'model' out)", param="model", kind="not_found_error")


def _media_pair(body: JudgeBody | RankBody, cfg) -> tuple[list, list]:
    if body.images and body.video:
        raise api_error(400, "give either 'images' or 'video', not both", param="video")
    media = decode_media({"images": body.images, "video": body.video}, cfg)
    return media["images"], media["video"]


@router.post("/v1/judge")
async def judge(request: Request) -> dict:
    """Which of two responses is better, and P(response 1 is better)."""
    body = await read_body(request, JudgeBody)
    cfg = request.app.state.cfg
    _check_model(body, request)
    images, video = await asyncio.to_thread(_media_pair, body, cfg)
    pair = Pair(body.question, body.response1, body.response2, images, video)
    (samples,) = await judge_pairs(request, [pair], both_orders=body.both_orders, k=body.k, temperature=body.temperature)
    return {"object": "judgement", "model": request.app.state.model_name, "k": body.k, **verdict(samples)}


@router.post("/v1/rank")
async def rank(request: Request) -> dict:
    """N candidates → every pair judged (both orders) → win matrix, Bradley–Terry strengths, ranking, best."""
    from r1rm.core.ranking import count_win, ranking_summary

    body = await read_body(request, RankBody)
    cfg = request.app.state.cfg
    _check_model(body, request)
    n = len(body.candidates)
    if n > cfg.judge.max_candidates:
        raise api_error(400, f"{n} candidates exceed judge.max_candidates={cfg.judge.max_candidates}", param="candidates")
    images, video = await asyncio.to_thread(_media_pair, body, cfg)
    index = list(itertools.combinations(range(n), 2))
    pairs = [Pair(body.question, body.candidates[i], body.candidates[j], images, video, "candidates") for i, j in index]
    results = await judge_pairs(request, pairs, both_orders=body.both_orders, k=body.k, temperature=body.temperature)
    wins = [[0.0] * n for _ in range(n)]
    undecided, p1 = 0, [[None] * n for _ in range(n)]
    for (i, j), samples in zip(index, results, strict=True):
        for s in samples:
            undecided += not count_win(wins, i, j, s["choice"])
        v = verdict(samples)
        p1[i][j], p1[j][i] = v["p1"], 1.0 - v["p1"]
    return {"object": "ranking", "model": request.app.state.model_name, "n_candidates": n, "k": body.k,
            **ranking_summary(wins), "undecided_verdicts": undecided, "p1": p1}


def _reference(label: Any, cfg, i: int) -> tuple[str, list[str], str | None]:
    """(reference response, image data URLs, question override) from one OpenRLHF label."""
    where = f"labels[{i}]"
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as e:
            raise api_error(400, f"{where} starts with '{{' but is not JSON ({e.msg})", param=where) from None
    if isinstance(label, dict):
        extra = set(label) - {"reference", "images", "question"}
        ok = (not extra and isinstance(label.get("reference", ""), str) and isinstance(label.get("images", []), list)
              and isinstance(label.get("question", ""), str))
        if not ok:
            raise api_error(400, f"{where} as an object takes 'reference' (text), 'images' (data URLs) and 'question' "
                            f"(text) only", param=where)
        ref, images, question = label.get("reference") or "", list(label.get("images", [])), label.get("question")
    elif label is None or isinstance(label, str):
        ref, images, question = label or "", [], None
    else:
        raise api_error(400, f"{where} must be a string (the reference response) or a JSON object", param=where)
    ref = ref or cfg.judge.reference_response or ""
    if not ref.strip():
        raise api_error(400, f"{where} gives no reference response and judge.reference_response is not set: put the "
                        "reference in the dataset's label column, or start the server with judge.reference_response=...",
                        param=where)
    return ref, images, question


@dataclass
class _RewardItem:
    """One query of a /get_reward call before its images are decoded."""

    question: str
    response: str
    reference: str
    urls: dict[str, list[str]]  # {param: [image data URL]}


def _reward_item(body: RewardBody, i: int, cfg) -> _RewardItem:
    """Query i → its question, response, reference and image data URLs (decoded later, with all the others)."""
    query = body.query[i]
    prompt = body.prompts[i] if body.prompts is not None else None
    response = response_from_query(query, prompt)
    if response is None:
        raise api_error(400, f"query[{i}] does not start with prompts[{i}] and holds no assistant turn of a known "
                        "chat template: cannot tell the response from the prompt", param=f"query[{i}]")
    ref, label_images, question = _reference(body.labels[i] if body.labels is not None else None, cfg, i)
    # without prompts (OpenRLHF < 0.6) the question is read from the query's last user turn
    source, prompt_images = pop_data_urls(prompt if prompt is not None else query)
    extra = body.images[i] if body.images is not None else []
    urls = {f"images[{i}]": extra, f"prompts[{i}]": prompt_images, f"labels[{i}].images": label_images}
    return _RewardItem(question if question is not None else question_from_prompt(source), response, ref, urls)


def _reward_pairs(body: RewardBody, cfg) -> list[tuple[Pair | None, float | None]]:
    """Every query → (the pair to judge, None), or (None, reward) when there is nothing to judge. The images
    of all queries are decoded together: one request, one judge.max_request_pixels budget."""
    items = [_reward_item(body, i, cfg) for i in range(len(body.query))]
    media = decode_media({param: urls for item in items for param, urls in item.urls.items()}, cfg)
    out = []
    for i, item in enumerate(items):
        if not item.response.strip():
            out.append((None, 0.0))  # an empty response: nothing to judge, the worst reward
        elif item.response.strip() == item.reference.strip():
            out.append((None, 0.5))  # the reference itself: a tie
        else:
            images = [img for param in item.urls for img in media[param]]
            out.append((Pair(item.question, item.response, item.reference, images, param=f"query[{i}]"), None))
    return out


@router.post("/get_reward")
async def get_reward(request: Request) -> dict:
    """OpenRLHF's remote reward model: reward = P(policy response better than the reference)."""
    body = await read_body(request, RewardBody)
    cfg = request.app.state.cfg
    if len(body.query) > cfg.judge.max_reward_queries:
        raise api_error(400, f"{len(body.query)} queries exceed judge.max_reward_queries={cfg.judge.max_reward_queries}: "
                        "send them in smaller batches (OpenRLHF: a smaller micro_rollout_batch_size)", param="query")
    for name in ("prompts", "labels", "images"):
        value = getattr(body, name)
        if value is not None and len(value) != len(body.query):
            raise api_error(400, f"'{name}' has {len(value)} items but 'query' has {len(body.query)}", param=name)
    items = await asyncio.to_thread(_reward_pairs, body, cfg)
    pairs = [p for p, _ in items if p is not None]
    results = iter(await judge_pairs(request, pairs, both_orders=cfg.judge.both_orders, k=1, temperature=None)
                   if pairs else [])
    rewards, unparsed = [], []
    for pair, fixed in items:
        if pair is None:
            rewards.append(fixed)
            unparsed.append(0)
            continue
        v = verdict(next(results))
        rewards.append(v["p1"])
        unparsed.append(v["unparsed"])
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"judge_unparsed": unparsed}}
