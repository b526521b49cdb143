"""`r1rm judge --serve` over the tiny model as a client sees it: the real openai client, httpx and raw
sockets against one server on port 0 (started once for this module)."""

import asyncio
import base64
import concurrent.futures
import io
import re
import socket
import threading
import time

import httpx
import pytest

KEY = "sekret-test-key"
HEADER_TIMEOUT_S = 2.0
INFLIGHT_PIXELS = 40_000_000  # judge.max_inflight_pixels of the served model: two 20 Mpx images


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    from conftest import served_process

    out = tmp_path_factory.mktemp("srv")
    with served_process(f"model.path={tiny}", f"output_dir={out}", "runtime.device=cpu", "runtime.progress=false",
                        "generation.max_new_tokens=4", "engine.batch_size=16", "judge.served_model_name=tiny-judge",
                        f"judge.header_timeout_s={HEADER_TIMEOUT_S}", f"judge.body_timeout_s={HEADER_TIMEOUT_S}",
                        "judge.max_request_bytes=4000000", f"judge.max_request_pixels={INFLIGHT_PIXELS}",
                        f"judge.max_inflight_pixels={INFLIGHT_PIXELS}", env={"R1RM_API_KEY": KEY}) as (url, proc, log):
        yield url, proc, log, out


def png_url(w=56, h=56, mode="RGB") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), 0).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_msg(url: str, text="Which response is better?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def peak_rss_kb(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def test_openai_client_models_chat_logprobs_stop_usage(served):
    import openai

    url, _, _, out = served
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["tiny-judge"]
    r = client.chat.completions.create(model="tiny-judge", messages=image_msg(png_url()), max_tokens=5, temperature=0,
                                       logprobs=True)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and r.usage.completion_tokens == len(choice.logprobs.content) >= 1
    assert all(e.logprob <= 0 for e in choice.logprobs.content)
    assert r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    text = client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                          temperature=0).choices[0].message.content
    if len(text.strip()) >= 3:  # stop at a piece of the greedy reply: the reply is cut there
        stop = text.strip()[1:3]
        cut = client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=8, temperature=0, stop=[stop])
        assert cut.choices[0].message.content == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    many = client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                          temperature=1.0, n=3, seed=1)
    assert len(many.choices) == 3
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    # the key lives in the environment only
    assert KEY not in (out / "config.yaml").read_text()


def test_top_logprobs_are_the_log_softmax_of_the_logits(served, tiny):
    """top_logprobs through the openai client equal log_softmax of the model's logits at each greedy step."""
    import openai
    import torch

    from r1rm.config import Config
    from r1rm.engines.hf import _prepare_messages
    from r1rm.models.loading import load_model_for, load_processor_for

    url, _, _, _ = served
    k, messages = 5, [{"role": "user", "content": "Which response is better?"}]
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
    r = client.chat.completions.create(model="tiny-judge", messages=messages, max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=k)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens >= 1

    mcfg = Config.model_validate({"model": {"path": str(tiny)}}).model
    processor, model = load_processor_for(mcfg), load_model_for(mcfg, device="cpu")
    ids = processor.apply_chat_template(_prepare_messages([{"role": "user", "content": [
        {"type": "text", "text": messages[0]["content"]}]}]), add_generation_prompt=True, tokenize=True,
        return_dict=True, return_tensors="pt")["input_ids"]
    assert ids.shape[1] == r.usage.prompt_tokens  # the same prompt
    for entry in content:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
        values, top_ids = torch.topk(logp, k)
        got = [t.logprob for t in entry.top_logprobs]
        assert len(got) == k and got == sorted(got, reverse=True)
        assert max(abs(a - b) for a, b in zip(got, values.tolist(), strict=True)) < 1e-4
        assert [t.token for t in entry.top_logprobs] == [processor.tokenizer.decode([i]) for i in top_ids.tolist()]
        # greedy: the sampled token is the most likely one, with the same log-probability
        assert entry.token == entry.top_logprobs[0].token and abs(entry.logprob - got[0]) < 1e-4
        ids = torch.cat([ids, top_ids[:1][None]], dim=1)


def test_decoded_pixels_stay_within_the_server_budget(served):
    """Many concurrent requests at the request limit: at most judge.max_inflight_pixels are decoded at once
    (the rest get 503 with Retry-After), so the server's peak memory stays bounded."""
    url, proc, _, _ = served
    big = png_url(5000, 4000, mode="1")  # 20 Mpx from a few KB: 80 MB once decoded (PIL keeps RGB in 4 bytes)
    before = peak_rss_kb(proc.pid)

    async def go():
        async with httpx.AsyncClient(headers=auth(), timeout=120) as c:
            return await asyncio.gather(*(c.post(url + "/chat/completions", json={"messages": image_msg(big),
                                                                                  "max_tokens": 2}) for _ in range(12)))

    replies = asyncio.run(go())
    codes = sorted(r.status_code for r in replies)
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    assert all(r.json()["error"]["code"] == "pixel_budget" and r.headers["retry-after"] for r in replies
               if r.status_code == 503)
    grown_mb = (peak_rss_kb(proc.pid) - before) / 1024
    # unbounded, twelve decoded images alone are 960 MB
    assert grown_mb < 450, f"peak RSS grew by {grown_mb:.0f} MB"
    assert httpx.get(url.removesuffix("/v1") + "/health").json()["decoded_pixels"] == 0


def test_200_concurrent_clients_all_answered(served):
    url, _, _, _ = served
    base = url.removesuffix("/v1")

    async def go():
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, headers=auth(), limits=limits, timeout=120) as c:
            before = (await c.get("/metrics")).text
            body = {"model": "tiny-judge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
            replies = await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(200)),
                                           return_exceptions=True)
            after = (await c.get("/metrics")).text
        return before, replies, after

    before, replies, after = asyncio.run(go())
    errors = [r for r in replies if isinstance(r, Exception)]
    assert not errors, errors[:3]  # no connection reset, no timeout
    assert [r.status_code for r in replies] == [200] * 200

    def counter(text, name):
        return int(re.search(rf"^{name} (\d+)$", text, re.M).group(1))

    batches = counter(after, "r1rm_engine_batches_total") - counter(before, "r1rm_engine_batches_total")
    assert counter(after, "r1rm_engine_requests_total") - counter(before, "r1rm_engine_requests_total") == 200
    assert batches < 100  # concurrent requests shared engine calls


def test_decompression_bomb_is_400_and_memory_stays_bounded(served):
    url, proc, _, _ = served
    bomb = png_url(12000, 12000, mode="1")  # ~20 KB that decodes to 144 Mpx (432 MB as RGB)
    assert len(bomb) < 100_000
    before = peak_rss_kb(proc.pid)

    def post(_):
        return httpx.post(url + "/chat/completions", headers=auth(), timeout=60,
                          json={"messages": image_msg(bomb), "max_tokens": 2})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(post, range(4)))
    assert [r.status_code for r in replies] == [400] * 4
    assert replies[0].json()["error"]["code"] == "image_too_large"
    grown_mb = (peak_rss_kb(proc.pid) - before) / 1024
    assert grown_mb < 100, f"peak RSS grew by {grown_mb:.0f} MB"


def test_bad_images_batched_with_good_ones_leave_them_200(served):
    url, _, _, _ = served
    good = {"messages": image_msg(png_url()), "max_tokens": 3, "temperature": 0}
    wide = {"messages": image_msg(png_url(3000, 10)), "max_tokens": 3}  # aspect ratio 300: the processor's refusal
    broken = {"messages": image_msg("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode())}
    bodies = [good] * 6 + [wide] + [good] * 6 + [broken]

    async def go():
        async with httpx.AsyncClient(headers=auth(), timeout=120) as c:
            return await asyncio.gather(*(c.post(url + "/chat/completions", json=b) for b in bodies))

    replies = asyncio.run(go())
    codes = [r.status_code for r in replies]
    assert codes == [200] * 6 + [400] + [200] * 6 + [400]
    assert replies[6].json()["error"]["code"] == "aspect_ratio" and replies[13].json()["error"]["code"] == "corrupt_image"


def _closed_after(sock: socket.socket, trickle: bytes = b"") -> tuple[float, bytes]:
    """Send `trickle` one byte per second (then nothing) until the server closes; (seconds, what came back)."""
    start, got = time.monotonic(), b""
    sock.settimeout(0.05)
    i = 0
    while time.monotonic() - start < 3 * HEADER_TIMEOUT_S + 5:
        if i < len(trickle) and time.monotonic() - start >= i:
            try:
                sock.send(trickle[i : i + 1])
            except OSError:
                break
            i += 1
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return time.monotonic() - start, got


def test_slow_headers_and_missing_body_are_closed_within_the_timeout(served):
    url, _, _, _ = served
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    results = {}

    def slow_headers():
        with socket.create_connection(("127.0.0.1", port)) as s:
            results["headers"] = _closed_after(s, b"GET /health HTTP/1.1\r\nHost: x\r\n" * 4)

    def missing_body():
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                      + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mess")
            results["body"] = _closed_after(s)

    threads = [threading.Thread(target=f) for f in (slow_headers, missing_body)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for what in ("headers", "body"):
        seconds, got = results[what]
        assert HEADER_TIMEOUT_S - 0.5 < seconds < HEADER_TIMEOUT_S + 1.5, (what, seconds)
        assert got.startswith(b"HTTP/1.1 408"), (what, got[:80])
    # the server still answers
    assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_malformed_requests_over_http(served):
    url, _, _, _ = served
    base = url.removesuffix("/v1")
    with httpx.Client(base_url=base, headers=auth(), timeout=30) as c:
        cases = [
            (c.put("/v1/chat/completions", json={}), 405),
            (c.get("/v1/nothing"), 404),
            (c.post("/v1/chat/completions", content=b"{}", headers={"Content-Type": "text/plain"}), 415),
            (c.post("/v1/chat/completions", content=b"{bad json", headers={"Content-Type": "application/json"}), 400),
            (c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}), 400),
            (c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 4_100_000}]}), 413),
            (c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True}), 400),
        ]
        for reply, status in cases:
            assert reply.status_code == status, (reply.request.method, reply.request.url, reply.text[:200])
            assert reply.headers["content-type"] == "application/json" and set(reply.json()["error"]) >= {"message", "type"}
        assert c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200


def test_health_metrics_and_access_log(served):
    url, _, log, _ = served
    base = url.removesuffix("/v1")
    assert httpx.get(base + "/health").json()["status"] == "ok"  # no key needed
    assert httpx.get(base + "/metrics").status_code == 401
    httpx.post(url + "/chat/completions", headers=auth(), json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    metrics = httpx.get(base + "/metrics", headers=auth()).text
    ok = int(re.search(r'r1rm_requests_total\{route="/v1/chat/completions",code="200"\} (\d+)', metrics).group(1))
    assert ok >= 1 and 'r1rm_request_seconds_bucket{route="/v1/chat/completions",le="+Inf"}' in metrics
    assert re.search(r"^r1rm_completion_tokens_total [1-9]\d*$", metrics, re.M)
    assert "r1rm_queue_depth 0" in metrics
    lines = [x for x in log.read_text().splitlines() if '"POST /v1/chat/completions HTTP/1.1" 200' in x]
    assert len(lines) >= 1  # one access-log line per request


class RaisingEngine:
    """A fake engine (no model): echoes the prompt; an engine call holding "poison" raises as a processor does.
    The first call waits for `gate`, so the requests sent meanwhile share the next engine call."""

    def __init__(self):
        from r1rm.engines.base import Sample

        self.sample, self.calls, self.gate = Sample, [], threading.Event()
        self.max_positions = 4096

    def generate(self, requests, params, progress=None):
        self.gate.wait(30)
        texts = [r.messages[-1]["content"][-1]["text"] for r in requests]
        self.calls.append(texts)
        if any("poison" in t for t in texts):
            raise ValueError("the processor refuses this input")
        return [[self.sample(text="echo " + t, token_ids=[1]) for _ in range(params.n)] for t in texts]

    def close(self):
        pass


def test_engine_failure_over_http_fails_only_its_request(tmp_path):
    """Over HTTP (uvicorn, the guard and timeouts): an engine call that raises for one request is retried one
    request at a time, so the requests batched with it get 200 and it alone gets 400."""
    import uvicorn

    from r1rm.config import Config
    from r1rm.serving import bind_socket, make_app, timed_protocol

    engine = RaisingEngine()
    cfg = Config.model_validate({"model": {"path": "fake"}, "engine": {"batch_size": 16}, "output_dir": str(tmp_path)})
    app = make_app(engine, cfg=cfg)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, http=timed_protocol(header_timeout_s=5, body_timeout_s=5),
                                           loop="asyncio", lifespan="off", log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    texts = [f"good {i}" for i in range(6)] + ["poison"] + [f"good {i}" for i in range(6, 12)]

    async def go():
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            first = asyncio.create_task(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "first"}]}))
            await asyncio.sleep(0.3)  # the worker holds "first" at the gate: the others wait together
            rest = [asyncio.create_task(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": t}]}))
                    for t in texts]
            await asyncio.sleep(0.5)
            engine.gate.set()
            return await first, await asyncio.gather(*rest)

    try:
        first, replies = asyncio.run(go())
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.batcher.close()
    assert first.status_code == 200
    codes = {t: r.status_code for t, r in zip(texts, replies, strict=True)}
    assert codes.pop("poison") == 400 and set(codes.values()) == {200}
    assert replies[6].json()["error"]["code"] == "engine_refused"
    assert replies[0].json()["choices"][0]["message"]["content"] == "echo good 0"
    # the poison was batched with good requests, and that call failed: the retry isolated it
    assert any("poison" in call and len(call) > 1 for call in engine.calls)
