"""The reward API of `r1rm judge --serve` (r1rm.serving_rewards) over HTTP: /v1/judge against `r1rm judge`,
p1's vote-share fallback, /v1/rank, OpenRLHF's /get_reward and verl's custom reward function, each called
the way its framework calls it (clients written after OpenRLHF v0.11.0 and verl v0.7.0)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import io
import json
import threading
import time

import httpx
import pytest

RESPONSE_MARKS = ("ALPHA", "BETA", "GOODANS", "BADANS")


def _png(colour: str = "red", size: tuple[int, int] = (56, 56)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(colour: str = "red", size: tuple[int, int] = (56, 56)) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(colour, size)).decode()


def _config(model: str, *overrides: str):
    from r1rm.config import load_config

    return load_config(None, [f"model.path={model}", "runtime.device=cpu", "runtime.progress=false",
                              "generation.max_new_tokens=12", "engine.batch_size=8", *overrides])


@contextlib.contextmanager
def serving(engine, cfg):
    """S1's app (r1rm.serving.make_app) over `engine`, on a free port of 127.0.0.1 (uvicorn in a thread)."""
    import uvicorn

    from r1rm.serving import make_app

    server = uvicorn.Server(uvicorn.Config(make_app(engine, cfg=cfg), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class FakeJudge:
    """An engine without a model: for each request it finds which marked response is shown first and
    answers from `script[first response's mark]` (one text per sample, cycled to n); `probs` gives
    the choice probabilities a sample reports (None: an engine without token probabilities)."""

    def __init__(self, script: dict[str, list[str]], probs: dict[str, dict[int, float]] | None = None):
        self.script = script
        self.probs = probs or {}
        self.requests: list = []

    def generate(self, requests, params, progress=None):
        from r1rm.engines.base import Sample

        out = []
        for r in requests:
            self.requests.append(r)
            text = "".join(p.get("text", "") for m in r.messages for p in m["content"] if isinstance(p, dict))
            shown = sorted((text.find(m), m) for m in RESPONSE_MARKS if text.find(m) >= 0)
            first = shown[0][1] if shown else ""
            texts = self.script.get(first, ["no answer"])
            out.append([Sample(text=texts[s % len(texts)], choice_probs=self.probs.get(first)) for s in range(params.n)])
        return out

    def close(self):
        pass


def _soft_answer_model(tiny, dst, delta: float = 0.05):
    """The scripted tiny judge that always writes <think>x</think><answer>1</answer>, with "2" a close
    second at the answer token, so P("1") renormalised over {1, 2} is about 0.64, not 1."""
    from safetensors.torch import load_file, save_file
    from scripted import fixed_answer_model
    from transformers import AutoTokenizer

    path = fixed_answer_model(tiny, dst)
    tok = AutoTokenizer.from_pretrained(path)
    chain = tok("\n<think>x</think><answer>1</answer><|im_end|>")["input_ids"]
    one, two = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")
    at = chain.index(one) - 1  # the position whose next token is the answer
    weights = load_file(path / "model.safetensors")
    weights["lm_head.weight"][two, at] = 10.0 - delta
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_judge_and_rank_equal_r1rm_judge(cli, tiny, tmp_path):
    """Greedy, k = 1: /v1/judge gives `r1rm judge`'s choice, agreement and per-order P(choice), and p1 is
    the mean of the two orders' P(response 1); /v1/rank gives its candidates output."""
    from r1rm.engines import make_engine

    model = _soft_answer_model(tiny, tmp_path / "soft")
    (tmp_path / "a.png").write_bytes(_png("red"))
    pair = {"id": "p", "question": "What colour?", "images": ["a.png"], "response1": "Red.", "response2": "Blue."}
    cands = {"id": "c", "question": "What colour?", "images": ["a.png"], "candidates": ["Red.", "Blue.", "Green."]}
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(pair) + "\n" + json.dumps(cands) + "\n")
    common = [f"model.path={model}", "runtime.device=cpu", "runtime.progress=false", "generation.max_new_tokens=12",
              "engine.batch_size=8"]
    proc = cli("judge", *common, f"output_dir={tmp_path / 'o'}", f"judge.input={inp}")
    assert proc.returncode == 0, proc.stderr
    want_pair, want_rank = (json.loads(x) for x in (tmp_path / "o" / "verdicts.jsonl").read_text().splitlines())
    given, swapped = want_pair["orders"]["as_given"], want_pair["orders"]["swapped"]
    assert given["raw_choice"] == swapped["raw_choice"] == 1 and 0.55 < given["p_choice"] < 0.8

    cfg = _config(str(model))
    engine = make_engine(cfg)
    with serving(engine, cfg) as url, httpx.Client(base_url=url, timeout=120) as client:
        body = {"question": pair["question"], "images": [_data_url("red")], "response1": "Red.", "response2": "Blue."}
        got = client.post("/v1/judge", json=body).json()
        one = client.post("/v1/judge", json={**body, "both_orders": False}).json()
        ranked = client.post("/v1/rank", json={"question": cands["question"], "images": [_data_url("red")],
                                              "candidates": cands["candidates"]}).json()
    assert (got["choice"], got["orders_agree"]) == (want_pair["choice"], want_pair["agree"]) == (None, False)
    for order, want in (("as_given", given), ("swapped", swapped)):
        (s,) = got["samples"][order]
        assert s["raw_choice"] == want["raw_choice"] and s["choice"] == want["choice"]
        assert s["p_choice"] == pytest.approx(want["p_choice"], abs=1e-4) and s["text"] == want["text"]
    # p1 by hand from `r1rm judge`'s records: as given P("1"), swapped P("2") = 1 - P("1")
    assert got["p1"] == pytest.approx((given["p_choice"] + 1 - swapped["p_choice"]) / 2, abs=1e-4)
    assert got["p1_source"] == "probs" and got["unparsed"] == 0
    # one order: the judge's "1" with its probability
    assert one["choice"] == 1 and one["p1"] == pytest.approx(given["p_choice"], abs=1e-4) and one["orders_agree"] is None
    for key in ("wins", "ranking", "best", "best_reason", "undecided_verdicts", "n_candidates"):
        assert ranked[key] == want_rank[key], key
    for a, b in zip(ranked["scores"], want_rank["scores"], strict=True):
        assert a["candidate"] == b["candidate"] and a["win_rate"] == pytest.approx(b["win_rate"])
        assert a["strength"] == pytest.approx(b["strength"], abs=1e-9)


def test_p1_is_the_vote_share_without_token_probabilities():
    # as given (ALPHA first): 1, 1, 2 → ALPHA, ALPHA, BETA; swapped (BETA first): 2 → ALPHA, unparsed, 1 → BETA
    engine = FakeJudge({"ALPHA": ["<think>a</think><answer>1</answer>", "<answer>1</answer>", "<answer>2</answer>"],
                        "BETA": ["<answer>2</answer>", "I cannot decide", "<answer>1</answer>"]})
    cfg = _config("fake")
    with serving(engine, cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        got = client.post("/v1/judge", json={"question": "Which?", "response1": "ALPHA", "response2": "BETA", "k": 3,
                                              "temperature": 1.0}).json()
        # per order: as given 2/3, swapped 1/2 (its unparsed sample left out) → p1 = 7/12
        assert got["p1"] == pytest.approx(7 / 12) and got["choice"] == 1 and got["p1_source"] == "votes"
        assert got["unparsed"] == 1 and got["unparsed_by_order"] == {"as_given": 0, "swapped": 1}
        assert got["votes"] == {"1": 3, "2": 2}
        # swapped: one vote each way, mean p1 0.5 → undecided; one order undecided → the orders do not agree
        assert got["order_choices"] == {"as_given": 1, "swapped": None} and got["orders_agree"] is False
        assert [s["reasoning"] for s in got["samples"]["as_given"]] == ["a", None, None]
        assert len(engine.requests) == 2  # one prompt per order, k samples each
        # a video as its frames: one video part of decoded frames, in order
        engine.requests.clear()
        frames = [_data_url(c) for c in ("red", "green", "blue")]
        client.post("/v1/judge", json={"question": "Which?", "video": frames, "response1": "ALPHA", "response2": "BETA"})
        (part,) = [p for p in engine.requests[0].messages[0]["content"] if p["type"] == "video"]
        assert [f.getpixel((0, 0)) for f in part["video"]] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
        # nothing parsed: no choice, p1 = 0.5
        got = client.post("/v1/judge", json={"question": "Which?", "response1": "GOODANS", "response2": "BADANS"}).json()
        assert (got["choice"], got["p1"], got["unparsed"], got["orders_agree"]) == (None, 0.5, 2, None)
        # refused requests: OpenAI's error shape, 400, naming the field
        for bad, param in (({"k": cfg.judge.max_k + 1}, "k"), ({"images": ["/etc/passwd"]}, "images[0]"),
                           ({"images": [_data_url()], "video": [_data_url()]}, "video"),
                           ({"images": ["data:image/png;base64,AAAA"]}, "images[0]")):
            r = client.post("/v1/judge", json={"question": "q", "response1": "ALPHA", "response2": "BETA", **bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        r = client.post("/v1/judge", json={"question": "q", "response1": "ALPHA", "response2": "BETA", "model": "other"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        r = client.post("/v1/judge", json={"question": "q", "response1": "ALPHA", "response2": "ALPHA"})
        assert r.status_code == 400 and "identical" in r.json()["error"]["message"]
        r = client.post("/v1/rank", json={"question": "q", "candidates": ["ALPHA"] * (cfg.judge.max_candidates + 1)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "candidates"


# ---------------------------------------------------------------- OpenRLHF
async def openrlhf_fetch_rewards(url: str, queries: list[str], prompts: list[str], labels: list[str]) -> dict:
    """OpenRLHF v0.11.0's SingleTurnAgentExecutor._fetch_rewards_via_http for one server: POST {query,
    prompts, labels}, raise_for_status, .json(), 5 tries one second apart (aiohttp there, httpx here)."""
    payload = {"query": queries, "prompts": prompts, "labels": labels}
    async with httpx.AsyncClient(timeout=180) as session:
        for _ in range(5):
            try:
                response = await session.post(url, json=payload)
                response.raise_for_status()
                return response.json()
            except httpx.HTTPError:
                await asyncio.sleep(1)
    raise RuntimeError("Request error for 5 times")


def openrlhf_remote_rm_fn(api_url: str, queries, prompts, labels, score_key: str = "rewards"):
    """OpenRLHF v0.6-v0.8's remote_rm_utils.remote_rm_fn: requests.post, `score_key` of the JSON."""
    import requests

    response = requests.post(url=api_url, json={"query": queries, "prompts": prompts, "labels": labels},
                             headers={"Content-Type": "application/json"}, timeout=180)
    response.raise_for_status()
    response = response.json()
    assert score_key in response, f"{score_key} not in {response}"
    return response.get(score_key)


def _chatml(question: str, image: str | None = None) -> str:
    vision = f"<|vision_start|>{image or ''}<|image_pad|><|vision_end|>" if image is not None else ""
    return f"<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n{vision}{question}<|im_end|>\n<|im_start|>assistant\n"


def test_openrlhf_get_reward():
    # the judge prefers GOODANS with P 0.9 wherever it is shown
    engine = FakeJudge({"GOODANS": ["<answer>1</answer>"], "BADANS": ["<answer>2</answer>"]},
                       probs={"GOODANS": {1: 0.9, 2: 0.1}, "BADANS": {1: 0.1, 2: 0.9}})
    cfg = _config("fake")
    red, blue = _data_url("red", (56, 56)), _data_url("blue", (84, 56))
    prompt = _chatml("What is shown?")
    with serving(engine, cfg) as url:
        out = asyncio.run(openrlhf_fetch_rewards(
            f"{url}/get_reward",
            [prompt + "GOODANS<|im_end|>", prompt + "BADANS<|im_end|><|endoftext|>", prompt + "same<|im_end|>", prompt],
            [prompt] * 4, ["BADANS", "GOODANS", "same", "GOODANS"]))
        assert out["rewards"] == pytest.approx([0.9, 0.1, 0.5, 0.0]) and out["scores"] == out["rewards"]
        assert out["extra_logs"]["judge_unparsed"] == [0, 0, 0, 0]
        assert [r.messages[0]["content"][-1]["text"].count("What is shown?") for r in engine.requests] == [1] * 4
        # OpenRLHF v0.6-v0.8's synchronous client (requests: installed with the dev extras' trackers)
        if importlib.util.find_spec("requests") is not None:
            rewards = openrlhf_remote_rm_fn(f"{url}/get_reward", [prompt + "GOODANS"], [prompt], ["BADANS"])
            assert rewards == pytest.approx([0.9])

        # images: a data URL in the prompt text, a label given as a JSON object, an extra `images` field
        engine.requests.clear()
        mm_prompt = _chatml("Which colour?", red)
        label = json.dumps({"reference": "BADANS", "images": [blue]})
        body = {"query": [mm_prompt.replace("<|image_pad|>", "<|image_pad|>" * 3) + "GOODANS<|im_end|>"],
                "prompts": [mm_prompt], "labels": [label], "images": [[red]]}
        got = httpx.post(f"{url}/get_reward", json=body, timeout=60).json()
        assert got["rewards"] == pytest.approx([0.9])
        parts = engine.requests[0].messages[0]["content"]
        images = [p["image"] for p in parts if p["type"] == "image"]
        # the extra field's image, then the prompt's, then the label's; decoded by the media gate
        assert [(im.size, im.getpixel((0, 0))) for im in images] == [((56, 56), (255, 0, 0)), ((56, 56), (255, 0, 0)),
                                                                       ((84, 56), (0, 0, 255))]
        text = parts[-1]["text"]
        assert "Which colour?" in text and "data:image" not in text and "<|vision_start|>" not in text
        # no reference anywhere: 400 saying how to give one
        r = httpx.post(f"{url}/get_reward", json={"query": [prompt + "GOODANS"], "prompts": [prompt], "labels": [""]})
        assert r.status_code == 400 and "judge.reference_response" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/get_reward", json={"query": ["a", "b"], "prompts": ["a"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompts"
    # a configured baseline response stands in for empty labels
    with serving(engine, _config("fake", "judge.reference_response=BADANS")) as url:
        got = httpx.post(f"{url}/get_reward", json={"query": [prompt + "GOODANS"], "prompts": [prompt], "labels": [""]})
        assert got.json()["rewards"] == pytest.approx([0.9])


# ---------------------------------------------------------------- verl
def test_verl_custom_reward_function(tmp_path, monkeypatch):
    """verl v0.7.0 loads `custom_reward_function.path` / `.name` and calls it as its naive and batch reward
    managers do (keyword arguments)."""
    import importlib.util

    from r1rm.integrations import verl_reward

    engine = FakeJudge({"GOODANS": ["<answer>1</answer>"], "BADANS": ["<answer>2</answer>"]},
                       probs={"GOODANS": {1: 0.8, 2: 0.2}, "BADANS": {1: 0.2, 2: 0.8}})
    (tmp_path / "x.png").write_bytes(_png("green"))
    # verl's loader: a module from a file path (verl.utils.import_utils.load_extern_object)
    spec = importlib.util.spec_from_file_location("custom_module", verl_reward.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("R1RM_API_KEY", "sekret")  # the server's key (judge.api_key_env) is the client's too
    with serving(engine, _config("fake")) as url:
        monkeypatch.setenv("R1RM_JUDGE_URL", url + "/v1")
        score = module.compute_score(data_source="d", solution_str="GOODANS", ground_truth="BADANS",
                                     extra_info={"question": "Which?", "images": [str(tmp_path / "x.png")]})
        assert isinstance(score, float) and score == pytest.approx(0.8)
        image = [p for p in engine.requests[0].messages[0]["content"] if p["type"] == "image"][0]["image"]
        assert image.getpixel((0, 0)) == (0, 128, 0)
        scores = module.compute_score_batch(data_sources=["d"] * 3, solution_strs=["GOODANS", "BADANS", "GOODANS"],
                                            ground_truths=["BADANS", "GOODANS", "BADANS"],
                                            extra_infos=[{"question": "q"}] * 3)
        assert scores == pytest.approx([0.8, 0.2, 0.8])
        with pytest.raises(module.JudgeServerError, match="extra_info has no 'question'"):
            module.compute_score("d", "GOODANS", "BADANS", {})
        with pytest.raises(module.JudgeServerError, match="HTTP 400.*identical"):  # a 4xx is not retried
            module.compute_score("d", "GOODANS", "GOODANS", {"question": "q"})
        with pytest.raises(module.JudgeServerError, match="HTTP 401.*set R1RM_API_KEY"):
            module.compute_score("d", "GOODANS", "BADANS", {"question": "q"}, api_key="wrong")
    # the server is gone: retried, then a clear error
    monkeypatch.setenv("R1RM_JUDGE_RETRIES", "1")
    with pytest.raises(module.JudgeServerError, match="gave no reward after 2 attempts"):
        module.compute_score("d", "GOODANS", "BADANS", {"question": "q"})
    monkeypatch.delenv("R1RM_JUDGE_URL")
    with pytest.raises(module.JudgeServerError, match="R1RM_JUDGE_URL is not set"):
        module.compute_score("d", "GOODANS", "BADANS", {"question": "q"})
