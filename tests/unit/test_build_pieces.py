"""Pure parts of `r1rm build-data`: balance, replay, dedupe, resize rule, trace swap, teacher scoring,
CMKD chain selection, the result cache, the rate limiter, prompt parsing, logprob means."""

from __future__ import annotations

import base64
import io
import json
import math
import random
import shutil
from types import SimpleNamespace

import pytest
from PIL import Image

from r1rm.core.distill import Chain, attempts_needed, cmkd_target, score_attempt, select_chain
from r1rm.core.parsing import format_ok_msrl
from r1rm.core.prompts import r1reward_text, user_message
from r1rm.data.cleaning import balanced_labels, dedupe_key, plan_output, replay_count, swap_record, swap_trace
from r1rm.data.media import smart_resize
from r1rm.data.records import RowError, parse_record
from r1rm.data.sources import _base64_image, parse_r1reward_prompt, render_context
from r1rm.engines.base import SamplingParams
from r1rm.engines.cache import ResultCache, request_key
from r1rm.engines.openai_client import RateLimiter, mean_logprob_from_openai_logprobs
from r1rm.engines.vllm import from_vllm_output
from r1rm.errors import DataError


# ---------------------------------------------------------------- balance, replay, order
@pytest.mark.parametrize("n", range(0, 12))
def test_balanced_labels_differ_by_at_most_one(n):
    labels = balanced_labels(n, random.Random(n))
    assert len(labels) == n and abs(labels.count(1) - labels.count(2)) <= 1
    assert balanced_labels(n, random.Random(n)) == labels  # seeded


def test_replay_count_rounds_down_so_caption_text_is_at_least_the_ratio():
    assert replay_count(40, 4.0) == 10 and replay_count(43, 4.0) == 10 and replay_count(3, 4.0) == 0
    assert replay_count(40, 0) == 0 and replay_count(10, 2.5) == 4


def _entries(n, label=1, start=0):
    return [(start + i, label) for i in range(n)]


def test_plan_balances_each_source_and_mixes_replay_four_to_one():
    entries = [_entries(25, 1), _entries(15, 2, start=100), _entries(30, 1, start=200), _entries(30, 2, start=300)]
    plan = plan_output(entries, ["a", "b", "t1", "t2"], ["main", "main", "replay", "replay"], seed=3, shuffle=True,
                       replay_ratio=4.0)
    assert plan.replay == {"ratio": 4.0, "n_caption": 40, "wanted": 10, "pool": 60, "used": 10}
    out = set(plan.order)
    assert len(plan.order) == len(out) == 50
    for offsets, label in ((range(25), 1), (range(100, 115), 2)):
        final = [label if o not in plan.swap else 3 - label for o in offsets]
        assert abs(final.count(1) - final.count(2)) <= 1
    for start, label in ((200, 1), (300, 2)):
        picked = [o for o in plan.order if start <= o < start + 30]
        final = [label if o not in plan.swap else 3 - label for o in picked]
        assert abs(final.count(1) - final.count(2)) <= 1
    again = plan_output(entries, ["a", "b", "t1", "t2"], ["main", "main", "replay", "replay"], seed=3, shuffle=True,
                        replay_ratio=4.0)
    assert again.order == plan.order and again.swap == plan.swap
    small = plan_output([_entries(40), _entries(3, start=100)], ["a", "t"], ["main", "replay"], seed=0, shuffle=False,
                        replay_ratio=4.0)
    assert small.replay["used"] == 3 and small.order[:40] == list(range(40))  # pool too small: all of it


def test_dedupe_key_ignores_response_order_but_not_context():
    a = parse_record({"question": "q", "response1": "x", "response2": "y", "label": 1, "images": ["i.png"]})
    assert dedupe_key(a) == dedupe_key(a.swapped())
    other = parse_record({"question": "q", "response1": "x", "response2": "y", "label": 1, "images": ["j.png"]})
    assert dedupe_key(a) != dedupe_key(other)


def test_swap_trace_turns_the_judgement_round():
    t = "<think>Response 1 says red. response 2 says blue. So Response 2 is correct.</think><answer>2</answer>"
    assert swap_trace(t) == "<think>Response 2 says red. response 1 says blue. So Response 1 is correct.</think><answer>1</answer>"
    rec = parse_record({"question": "q", "response1": "x", "response2": "y", "label": 2, "meta": {"trace": t, "k": "Response 1"}})
    sw = swap_record(rec)
    assert sw.label == 1 and sw.response1.text == "y" and sw.meta["trace"].endswith("<answer>1</answer>")
    assert sw.meta["k"] == "Response 1"


# ---------------------------------------------------------------- resize rule
def test_smart_resize_hand_worked_values():
    # 640x300 above 12544 px: beta = sqrt(300*640/12544); floor(300/beta/28)*28 = 56, floor(640/beta/28)*28 = 140
    assert smart_resize(300, 640, factor=28, min_pixels=3136, max_pixels=12544) == (56, 140)
    # 20x20 below 3136 px: beta = 2.8 → ceil(20*2.8/28)*28 = 56
    assert smart_resize(20, 20, factor=28, min_pixels=3136, max_pixels=12544) == (56, 56)
    # in range: only rounded to multiples of 28
    assert smart_resize(100, 90, factor=28, min_pixels=3136, max_pixels=12544) == (112, 84)
    with pytest.raises(RowError, match="aspect ratio"):
        smart_resize(10, 3000)


# ---------------------------------------------------------------- teacher scoring
def test_score_attempt_and_attempts_needed():
    s = score_attempt("<think>a</think><answer>2</answer>", 2)
    assert s.answer == 2 and s.correct and s.format_ok
    s = score_attempt("<answer>2</answer>", 2)
    assert s.correct and not s.format_ok
    s = score_attempt("I think 2", 2)  # no fallback for the teacher
    assert s.answer is None and not s.correct
    msrl = "<type>text</type><think>a</think><answer>1</answer>"
    assert score_attempt(msrl, 1, prompt="msrl").format_ok and not score_attempt(msrl, 1).format_ok
    assert attempts_needed([False, True, True]) == 2 and attempts_needed([False] * 3) is None and attempts_needed([True]) == 1


# ---------------------------------------------------------------- CMKD selection
GOOD = "<type>image understanding</type><think>{}</think><answer>{}</answer>"


def test_select_chain_drops_wrong_and_malformed_and_keeps_the_most_confident():
    chains = [
        Chain(GOOD.format("w", 2), -0.01),           # wrong answer
        Chain("<think>x</think><answer>1</answer>", -0.02),  # no <type>: bad format
        Chain(GOOD.format("lo", 1), -1.5),
        Chain(GOOD.format("hi", 1), -0.7),
        Chain(GOOD.format("nolp", 1), None),        # unknown confidence ranks last
    ]
    sel = select_chain(chains, 1)
    assert sel.index == 3 and sel.target == 1 and sel.target_source == "label"
    assert (sel.n_bad_format, sel.n_wrong_answer, sel.n_kept) == (1, 1, 3)
    assert select_chain([Chain(GOOD.format("a", 2), -0.1)], 1).reason == "no_correct_chain"
    assert select_chain([Chain("junk", -0.1)], 1).reason == "no_valid_chain"


def test_select_chain_uses_the_majority_when_unlabelled():
    chains = [Chain(GOOD.format("a", 2), -0.9), Chain(GOOD.format("b", 2), -0.3), Chain(GOOD.format("c", 1), -0.1),
              Chain("bad", 0.0)]
    sel = select_chain(chains, None)
    assert sel.index == 1 and sel.target == 2 and sel.target_source == "majority" and sel.n_wrong_answer == 1
    tie = select_chain([Chain(GOOD.format("a", 2), -0.9), Chain(GOOD.format("c", 1), -0.1)], None)
    assert tie.index is None and tie.reason == "no_majority"


def test_cmkd_target_is_caption_then_chain_in_msrl_format():
    t = cmkd_target(" A red circle. ", GOOD.format("r", 1))
    assert t.startswith("<caption>A red circle.</caption><type>") and format_ok_msrl(t, require_caption=True)


# ---------------------------------------------------------------- cache and rate limit
def test_result_cache_survives_a_cut_line_and_names_a_damaged_one(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = ResultCache(path)
    cache.put("k1", [{"text": "a"}])
    cache.put("k2", [{"text": "b"}], attempt=2)
    assert cache.get("k2") == [{"text": "b"}] and cache.get("nope") is None and len(cache) == 2
    cache.close()
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # a kill in the middle of the second line
    cache = ResultCache(path)
    assert "k1" in cache and "k2" not in cache and cache.n_truncated == 1
    cache.put("k2", [{"text": "b2"}])
    assert cache.get("k2") == [{"text": "b2"}] and cache.get("k1") == [{"text": "a"}]
    cache.close()
    assert len(path.read_text().splitlines()) == 2
    path.write_text('{"key": "k1", "samples": []}\nnot json\n{"key": "k3", "samples": []}\n')
    with pytest.raises(DataError, match=r"c.jsonl:2"):
        ResultCache(path)


def test_request_key_hashes_image_content_not_paths(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    shutil.copy(tmp_path / "a.png", tmp_path / "sub" / "b.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "c.png")
    p = SamplingParams(max_new_tokens=4)
    k = lambda img, params=p: request_key(user_message("q", images=[str(img)]), params, "m")  # noqa: E731
    assert k(tmp_path / "a.png") == k(tmp_path / "sub" / "b.png") != k(tmp_path / "c.png")
    assert k(tmp_path / "a.png") != k(tmp_path / "a.png", SamplingParams(max_new_tokens=4, seed=1))


def test_rate_limiter_spaces_starts():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(120, clock=lambda: now[0], sleep=sleep)  # one start every 0.5 s
    waits = [lim.acquire() for _ in range(4)]
    assert waits == [0.0, 0.5, 0.5, 0.5] and now[0] == pytest.approx(1.5)
    now[0] += 10  # idle: no debt carried over
    assert lim.acquire() == 0.0


def test_requests_per_minute_reaches_the_openai_engine():
    pytest.importorskip("openai")
    from r1rm.config import load_config
    from r1rm.engines import make_engine

    cfg = load_config(None, ["engine.kind=openai", "engine.base_url=http://127.0.0.1:9/v1", "engine.model_name=m",
                             "engine.requests_per_minute=120", "engine.concurrency=3"])
    eng = make_engine(cfg)
    assert eng.limiter.interval_s == pytest.approx(0.5) and eng.concurrency == 3
    eng.close()
    assert make_engine(load_config(None, ["engine.kind=openai", "engine.base_url=http://x/v1", "engine.model_name=m"])).limiter is None


# ---------------------------------------------------------------- sources
def test_parse_r1reward_prompt_round_trips():
    text = r1reward_text("What is it?\nLook closely.", "A cat.\n\nWith stripes.", "A dog.  ")
    assert parse_r1reward_prompt(text) == ("What is it?\nLook closely.", "A cat.\n\nWith stripes.", "A dog.")
    with pytest.raises(RowError) as e:
        parse_r1reward_prompt("Which is better, 1 or 2?")
    assert e.value.reason == "bad_prompt"


def test_render_context_and_base64_detection():
    assert render_context("plain") == "plain"
    assert render_context([{"role": "user", "content": "hi"}]) == "hi"
    assert render_context([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "User: a\n\nAssistant: b"
    with pytest.raises(RowError):
        render_context([])
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    assert _base64_image(b64) == buf.getvalue() and _base64_image("data:image/png;base64," + b64) == buf.getvalue()
    assert _base64_image("images/cat.png") is None and _base64_image("/abs/path/cat.jpg") is None
    assert _base64_image("abcdefghijklmnopqrst") is None  # base64 alphabet but not an image


# ---------------------------------------------------------------- logprob means in the adapters
def test_mean_logprob_from_openai_and_vllm():
    content = [{"token": "a", "logprob": -1.0}, {"token": "b", "logprob": -0.5}, {"token": "c", "logprob": 0.0}]
    assert mean_logprob_from_openai_logprobs(content) == pytest.approx(-0.5)
    assert mean_logprob_from_openai_logprobs(None) is None

    def lp(v):
        return SimpleNamespace(logprob=v, rank=1, decoded_token="t")

    # vLLM's token ids and logprobs end with the EOS that stopped them (5): the mean leaves it out, as hf's does
    done = SimpleNamespace(text="ab", token_ids=[3, 4, 5], finish_reason="stop", stop_reason=None,
                           logprobs=[{3: lp(math.log(0.5)), 9: lp(-3.0)}, {4: lp(math.log(0.25))}, {5: lp(-9.0)}])
    (s,) = from_vllm_output(SimpleNamespace(outputs=[done]))
    assert s.mean_logprob == pytest.approx((math.log(0.5) + math.log(0.25)) / 2)
    bare = SimpleNamespace(text="a", token_ids=[1, 5], finish_reason="stop", stop_reason=None, logprobs=None)
    assert from_vllm_output(SimpleNamespace(outputs=[bare]))[0].mean_logprob is None


def test_openai_body_asks_for_logprobs_only_when_wanted():
    pytest.importorskip("openai")
    from r1rm.engines.openai_client import OpenAIEngine

    eng = OpenAIEngine("http://127.0.0.1:9/v1", "m")
    msgs = [{"role": "user", "content": "hi"}]
    assert "logprobs" not in eng._body(msgs, SamplingParams())
    body = eng._body(msgs, SamplingParams(logprobs=True))
    assert body["logprobs"] is True and "top_logprobs" not in body
    eng.close()
    assert json.dumps(body)  # serialisable
