"""The server's app (r1rm.serving.make_app) over a fake engine, through httpx's ASGI transport: no model,
no sockets. Every malformed request gets OpenAI's error JSON with its code; batching; isolation of a bad
request; the bounded queue; auth; metrics; stop and logprobs."""

import asyncio
import base64
import io
import json
import threading

import httpx
import pytest

from r1rm.config import Config
from r1rm.engines.base import Sample
from r1rm.serving import Batcher, Metrics, apply_stop, make_app


class CharTokenizer:
    """Token id = a character's code point."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class FakeEngine:
    """Echoes the last text part; "poison" in a prompt makes the whole engine call raise."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[int] = []
        self.gate = gate
        self.tokenizer = CharTokenizer()
        self.max_positions = 4096

    def generate(self, requests, params, progress=None):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(len(requests))
        texts = [r.messages[-1]["content"][-1].get("text", "") for r in requests]
        if any("poison" in t for t in texts):
            raise ValueError("the processor refuses this input")
        out = []
        for t in texts:
            reply = ("echo " + t)[: params.max_new_tokens]
            ids = [ord(c) for c in reply]
            lps = [-0.5] * len(ids) if params.logprobs else None
            out.append([Sample(text=reply, token_ids=ids, token_logprobs=lps, prompt_token_ids=list(range(7)),
                               finished=len(reply) < params.max_new_tokens) for _ in range(params.n)])
        return out

    def close(self):
        pass


def config(**judge) -> Config:
    return Config.model_validate({"model": {"path": "fake-model"}, "engine": {"batch_size": 8},
                                  "generation": {"max_new_tokens": 64}, "judge": judge})


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def chat(text="hi", **extra) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


def png_url(w=56, h=56) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), "red").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run(coro):
    return asyncio.run(coro)


def test_chat_completion_fields():
    async def go():
        app = make_app(FakeEngine(), cfg=config())
        async with client_for(app) as c:
            r = await c.post("/v1/chat/completions", json=chat("hello", n=2, max_tokens=100))
            body = r.json()
            assert r.status_code == 200 and [ch["message"]["content"] for ch in body["choices"]] == ["echo hello"] * 2
            assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 20, "total_tokens": 27}
            assert body["choices"][0]["finish_reason"] == "stop" and body["choices"][0]["logprobs"] is None
            # stop cuts the text and its tokens; finish_reason stop
            r = await c.post("/v1/chat/completions", json=chat("hello world", stop=[" wor"], max_tokens=100))
            ch = r.json()["choices"][0]
            assert ch["message"]["content"] == "echo hello" and ch["finish_reason"] == "stop"
            assert r.json()["usage"]["completion_tokens"] == len("echo hello wor")
            # logprobs: one entry per token
            r = await c.post("/v1/chat/completions", json=chat("ab", logprobs=True, max_tokens=3))
            content = r.json()["choices"][0]["logprobs"]["content"]
            assert [e["token"] for e in content] == ["e", "c", "h"] and {e["logprob"] for e in content} == {-0.5}
            assert r.json()["choices"][0]["finish_reason"] == "length"
            r = await c.get("/v1/models")
            assert r.json()["data"][0]["id"] == "fake-model" and r.json()["data"][0]["max_model_len"] == 4096
        app.state.batcher.close()

    run(go())


MALFORMED = [
    # (body or raw bytes, headers, status, a piece of the message)
    (b"{not json", {}, 400, "not valid JSON"),
    (b"[1, 2]", {}, 400, "JSON object"),
    (chat(messages=None) | {"messages": []}, {}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, {}, 400, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, {}, 400, "image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]}, {}, 400, "data URL"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}, {}, 400, "corrupt_image"),
    (chat(temperature=9), {}, 400, "temperature"),
    (chat(n=0), {}, 400, "'n'"),
    (chat(n=True), {}, 400, "'n'"),
    (chat(max_tokens=10**9), {}, 400, "max_tokens"),
    (chat(stream=True), {}, 400, "stream"),
    (chat(stop=[""]), {}, 400, "stop"),
    (chat(top_logprobs=3, logprobs=True), {}, 400, "top_logprobs"),
    (chat(response_format={"type": "json_object"}), {}, 400, "response_format"),
    (chat(presence_penalty=1.0), {}, 400, "presence_penalty"),
    (chat(frobnicate=1), {}, 400, "unrecognized"),
    (chat(model="other"), {}, 404, "not served"),
    (chat(), {"content-type": "text/plain"}, 415, "application/json"),
    (b"x" * 5000, {"content-type": "application/json"}, 413, "max_request_bytes"),
]


@pytest.mark.parametrize("body,headers,status,piece", MALFORMED)
def test_malformed_requests(body, headers, status, piece):
    async def go():
        app = make_app(FakeEngine(), cfg=config(max_request_bytes=4096))
        async with client_for(app) as c:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = await c.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json", **headers})
            assert r.status_code == status, r.text
            err = r.json()["error"]
            assert piece in err["message"] and set(err) == {"message", "type", "param", "code"}
            # the server goes on
            assert (await c.post("/v1/chat/completions", json=chat("ok"))).status_code == 200
        app.state.batcher.close()

    run(go())


def test_routes_methods_auth_and_health(monkeypatch):
    monkeypatch.setenv("R1RM_TEST_SERVE_KEY", "sekret")

    async def go():
        app = make_app(FakeEngine(), cfg=config(api_key_env="R1RM_TEST_SERVE_KEY"))
        good = {"Authorization": "Bearer sekret"}
        async with client_for(app) as c:
            assert (await c.get("/health")).json()["status"] == "ok"  # no key needed
            r = await c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert (await c.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await c.post("/v1/chat/completions", json=chat(), headers=good)).status_code == 200
            r = await c.put("/v1/models", headers=good)
            assert r.status_code == 405 and r.headers["content-type"] == "application/json" and "PUT" in r.json()["error"]["message"]
            r = await c.get("/nope", headers=good)
            assert r.status_code == 404 and r.json()["error"]["message"] == "no route GET /nope"
            metrics = (await c.get("/metrics", headers=good)).text
            assert 'r1rm_requests_total{route="/v1/chat/completions",code="401"} 2' in metrics
            assert 'r1rm_requests_total{route="/v1/chat/completions",code="200"} 1' in metrics
            assert 'r1rm_errors_total{code="405"} 1' in metrics and "r1rm_completion_tokens_total 7" in metrics
            assert 'r1rm_request_seconds_count{route="/v1/chat/completions"} 3' in metrics
        app.state.batcher.close()

    run(go())


def test_images_gate_and_request_pixel_budget():
    async def go():
        app = make_app(FakeEngine(), cfg=config(max_request_pixels=56 * 56 * 2))
        part = {"type": "image_url", "image_url": {"url": png_url()}}
        text = {"type": "text", "text": "which?"}
        async with client_for(app) as c:
            r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [part, part, text]}]})
            assert r.status_code == 200
            r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [part, part, part, text]}]})
            assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[2].image_url"
            wide = {"type": "image_url", "image_url": {"url": png_url(3000, 10)}}
            r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [wide, text]}]})
            assert r.status_code == 400 and r.json()["error"]["code"] == "aspect_ratio"
        app.state.batcher.close()

    run(go())


def test_concurrent_requests_share_engine_calls_and_a_bad_one_fails_alone():
    gate = threading.Event()
    engine = FakeEngine(gate)

    async def go():
        app = make_app(engine, cfg=config())
        async with client_for(app) as c:
            texts = ["first", *[f"good {i}" for i in range(5)], "poison", "good 5"]
            tasks = [asyncio.create_task(c.post("/v1/chat/completions", json=chat(t, max_tokens=50))) for t in texts]
            await asyncio.sleep(0.3)
            gate.set()
            replies = await asyncio.gather(*tasks)
        codes = {t: r.status_code for t, r in zip(texts, replies, strict=True)}
        assert codes.pop("poison") == 400 and set(codes.values()) == {200}
        assert replies[1].json()["choices"][0]["message"]["content"] == "echo good 0"
        # the requests shared one engine call, which failed on "poison" and was retried one request at a time
        shared = [n for n in engine.calls if n > 1]
        assert len(shared) == 1 and engine.calls.count(1) >= shared[0]
        app.state.batcher.close()

    run(go())


def test_full_queue_is_503_with_retry_after():
    gate = threading.Event()

    async def go():
        app = make_app(FakeEngine(gate), cfg=config(max_queue=2))
        async with client_for(app) as c:
            running = asyncio.create_task(c.post("/v1/chat/completions", json=chat("a")))
            await asyncio.sleep(0.2)  # taken by the worker: not waiting any more
            waiting = [asyncio.create_task(c.post("/v1/chat/completions", json=chat(t))) for t in "bc"]
            await asyncio.sleep(0.2)
            r = await c.post("/v1/chat/completions", json=chat("d"))
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
            gate.set()
            assert [x.status_code for x in await asyncio.gather(running, *waiting)] == [200, 200, 200]
        app.state.batcher.close()

    run(go())


def test_draining_answers_503_but_health_says_so():
    async def go():
        app = make_app(FakeEngine(), cfg=config())
        app.state.server.draining = True
        async with client_for(app) as c:
            r = await c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
            assert (await c.get("/health")).status_code == 503
        app.state.batcher.close()

    run(go())


def test_apply_stop_without_tokenizer_keeps_tokens():
    s = Sample(text="abc STOP def", token_ids=[1, 2, 3])
    cut, stopped = apply_stop(s, ("STOP",), None)
    assert stopped and cut.text == "abc " and cut.token_ids == [1, 2, 3]
    assert apply_stop(s, ("zzz",), None) == (s, False)


def test_batcher_groups_only_equal_params():
    from r1rm.engines.base import Request, SamplingParams

    engine = FakeEngine(threading.Event())
    b = Batcher(engine, max_batch=8, max_queue=16, metrics=Metrics())

    async def go():
        msg = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        a, z = SamplingParams(max_new_tokens=5), SamplingParams(max_new_tokens=6)
        tasks = [asyncio.create_task(b.generate([Request(msg)], p)) for p in (a, a, z, a, z)]
        await asyncio.sleep(0.1)
        engine.gate.set()
        out = await asyncio.gather(*tasks)
        assert [len(o[0][0].text) for o in out] == [5, 5, 6, 5, 6]

    asyncio.run(go())
    assert sorted(engine.calls) == [1, 2, 2] or sorted(engine.calls) == [2, 3]
    b.close()


def test_chunked_body_over_the_limit_is_413():
    async def go():
        app = make_app(FakeEngine(), cfg=config(max_request_bytes=4096))

        async def chunks():
            for _ in range(3):
                yield b"x" * 2000

        async with client_for(app) as c:
            r = await c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        app.state.batcher.close()

    run(go())


def bitmap_url(w: int, h: int) -> str:
    """A 1-bit PNG of w x h: a few KB that decodes to w*h pixels (3-4 bytes each as RGB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (w, h), 0).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_chat(url: str, text: str = "which?") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": text}]}]}


def test_decoded_pixels_are_bounded_server_wide():
    gate = threading.Event()

    async def go():
        app = make_app(FakeEngine(gate), cfg=config(max_request_pixels=56 * 56, max_inflight_pixels=56 * 56 * 2))
        budget = app.state.server.pixels
        async with client_for(app) as c:
            held = [asyncio.create_task(c.post("/v1/chat/completions", json=image_chat(png_url(), f"a{i}"))) for i in range(2)]
            await asyncio.sleep(0.3)  # both decoded, waiting for the engine: the budget is spent
            assert budget.used == 2 * 56 * 56
            r = await c.post("/v1/chat/completions", json=image_chat(png_url()))
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "pixel_budget"
            gate.set()
            assert [x.status_code for x in await asyncio.gather(*held)] == [200, 200]
            assert budget.used == 0  # given back with the answers
            assert (await c.post("/v1/chat/completions", json=image_chat(png_url()))).status_code == 200
        assert budget.peak == 2 * 56 * 56
        app.state.batcher.close()

    run(go())


def test_full_queue_refuses_before_reading_the_body():
    gate = threading.Event()

    async def go():
        app = make_app(FakeEngine(gate), cfg=config(max_queue=1))
        async with client_for(app) as c:
            running = asyncio.create_task(c.post("/v1/chat/completions", json=chat("a")))
            await asyncio.sleep(0.2)
            waiting = asyncio.create_task(c.post("/v1/chat/completions", json=chat("b")))
            await asyncio.sleep(0.2)
            r = await c.post("/v1/chat/completions", json=image_chat(png_url()))
            assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
            assert app.state.server.pixels.peak == 0  # its image was never decoded
            gate.set()
            assert [x.status_code for x in await asyncio.gather(running, waiting)] == [200, 200]
        app.state.batcher.close()

    run(go())


def test_health_answers_while_a_large_image_decodes(monkeypatch):
    """A body with images is parsed (and its images decoded) off the event loop, so /health and every other
    connection are served meanwhile: asserted by the thread each decode ran on, not by a timing margin."""
    import threading

    import r1rm.data.media as media

    decoded_on: list[int] = []
    real = media.admit_image

    def recording(*args, **kwargs):
        decoded_on.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(media, "admit_image", recording)
    url = bitmap_url(6000, 5000)  # 30 Mpx from a few KB: three of them make a body under the inline-parse size
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}] * 3
                          + [{"type": "text", "text": "which?"}]}]}
    assert len(json.dumps(body)) < 64 * 1024

    async def go():
        loop_thread = threading.get_ident()
        app = make_app(FakeEngine(), cfg=config())
        async with client_for(app) as c:
            post = asyncio.create_task(c.post("/v1/chat/completions", json=body))
            health = 0
            while not post.done():  # /health asked all along while the images decode
                assert (await c.get("/health")).status_code == 200
                health += 1
                await asyncio.sleep(0.005)
            assert (await post).status_code == 200
        app.state.batcher.close()
        return loop_thread, health

    loop_thread, health = run(go())
    assert len(decoded_on) == 3 and loop_thread not in decoded_on, "images were decoded on the event loop"
    assert health >= 1


class ShortEngine(FakeEngine):
    """Returns one result too few when a prompt says "short", and None results when one says "broken"."""

    def generate(self, requests, params, progress=None):
        out = super().generate(requests, params, progress)
        texts = [r.messages[-1]["content"][-1].get("text", "") for r in requests]
        if any("short" in t for t in texts):
            return out[:-1]
        if any("broken" in t for t in texts):
            return [None] * len(out)
        return out


def test_worker_survives_a_bad_engine_result_and_health_reports_it():
    async def go():
        app = make_app(ShortEngine(), cfg=config())
        async with client_for(app) as c:
            for text in ("short", "broken"):
                r = await asyncio.wait_for(c.post("/v1/chat/completions", json=chat(text)), 10)  # no fix: a hang
                assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
                assert app.state.batcher.alive
                r = await asyncio.wait_for(c.post("/v1/chat/completions", json=chat("fine")), 10)
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo fine"
            health = await c.get("/health")
            assert health.status_code == 200 and health.json()["worker_alive"] is True
            app.state.batcher.close()  # the worker stops: /health says so
            health = await c.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "worker_dead"

    run(go())


def test_batcher_splits_a_large_call_and_keeps_a_bounded_history():
    from r1rm.engines.base import Request, SamplingParams

    engine = FakeEngine()
    b = Batcher(engine, max_batch=4, max_queue=3, metrics=Metrics())
    msg = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]

    async def go():
        out = await b.generate([Request(msg)] * 10, SamplingParams(max_new_tokens=3))
        assert len(out) == 10 and all(o[0].text == "ech" for o in out)
        from r1rm.serving import QueueFull

        with pytest.raises(QueueFull):  # 13 requests = 4 jobs of at most 4: more than the 3 places
            await b.generate([Request(msg)] * 13, SamplingParams())

    asyncio.run(go())
    assert max(engine.calls) <= 4 and sum(engine.calls) == 10
    b.close()
    assert b.batches.maxlen is not None


def test_top_logprobs_bounded_and_refused_without_engine_support():
    class TopEngine(FakeEngine):
        gives_top_logprobs = True

        def generate(self, requests, params, progress=None):
            out = super().generate(requests, params, progress)
            for samples in out:
                for s in samples:
                    s.top_logprobs = [[(t, -0.5), (ord("z"), -1.5), (ord("y"), -2.0)][: params.top_logprobs]
                                      for t in s.token_ids]
            return out

    async def go():
        for engine, ok in ((TopEngine(), True), (FakeEngine(), False)):
            app = make_app(engine, cfg=config())
            async with client_for(app) as c:
                r = await c.post("/v1/chat/completions", json=chat("ab", logprobs=True, top_logprobs=2, max_tokens=2))
                if ok:
                    content = r.json()["choices"][0]["logprobs"]["content"]
                    assert [[t["token"] for t in e["top_logprobs"]] for e in content] == [["e", "z"], ["c", "z"]]
                    assert content[0]["top_logprobs"][1] == {"token": "z", "bytes": [122], "logprob": -1.5}
                else:
                    assert r.status_code == 400 and "not supported by this server's engine" in r.json()["error"]["message"]
                for bad in ({"top_logprobs": 21, "logprobs": True}, {"top_logprobs": 2}):
                    r = await c.post("/v1/chat/completions", json=chat("ab", **bad))
                    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
            app.state.batcher.close()

    run(go())


@pytest.mark.parametrize("raw,code", [
    (b'{"question": "q", "response1": "a", "response2": "b", "response1": "c"}', "duplicate_key"),
    (b'{"question": "q", "response1": "a", "response2": "b", "temperature": NaN}', "invalid_json"),
])
def test_reward_routes_read_json_strictly(raw, code):
    async def go():
        app = make_app(FakeEngine(), cfg=config())
        async with client_for(app) as c:
            r = await c.post("/v1/judge", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
            r = await c.post("/get_reward", content=raw.replace(b'"question"', b'"query"'),
                             headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
            r = await c.post("/v1/judge", json={"question": "q", "response1": "a"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "response2"
        app.state.batcher.close()

    run(go())


def test_get_reward_one_pixel_budget_and_a_query_cap():
    async def go():
        app = make_app(FakeEngine(), cfg=config(max_request_pixels=56 * 56 * 3 // 2, max_reward_queries=2,
                                                reference_response="ref"))
        async with client_for(app) as c:
            # two queries of one 56x56 image each: each alone fits, together they pass the request's budget
            body = {"query": ["q a", "q b"], "prompts": ["q", "q"], "images": [[png_url()], [png_url()]]}
            r = await c.post("/get_reward", json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large", r.text
            assert r.json()["error"]["param"] == "images[1][0]"
            r = await c.post("/get_reward", json={"query": ["q a"] * 3, "prompts": ["q"] * 3})
            assert r.status_code == 400 and "max_reward_queries" in r.json()["error"]["message"]
        app.state.batcher.close()

    run(go())


def test_uvicorn_internals_checked_at_start(monkeypatch):
    import uvicorn
    from uvicorn.protocols.http import h11_impl

    from r1rm.errors import MissingDependencyError
    from r1rm.serving import TESTED_UVICORN, check_uvicorn

    check_uvicorn()  # the installed uvicorn has what timed_protocol uses
    monkeypatch.delattr(h11_impl.H11Protocol, "on_response_complete")
    with pytest.raises(MissingDependencyError) as e:
        check_uvicorn()
    msg = str(e.value)
    assert f"uvicorn {uvicorn.__version__}" in msg and "H11Protocol.on_response_complete" in msg
    assert f"uvicorn=={TESTED_UVICORN}.*" in msg


def test_vllm_output_top_logprobs_sorted_and_bounded():
    from types import SimpleNamespace

    from r1rm.engines.vllm import from_vllm_output

    def lp(v):
        return SimpleNamespace(logprob=v, rank=1, decoded_token="t")

    steps = [{5: lp(-0.5), 7: lp(-0.1), 8: lp(-2.0)}, {6: lp(-3.0), 9: lp(-0.2), 4: lp(-1.0)}]
    cut = SimpleNamespace(text="ab", token_ids=[5, 6], logprobs=steps, finish_reason="length", stop_reason=None)
    (s,) = from_vllm_output(SimpleNamespace(outputs=[cut]), top_k=2)
    assert s.top_logprobs == [[(7, -0.1), (5, -0.5)], [(9, -0.2), (4, -1.0)]]  # the sampled 6 ranks below the top 2
    assert from_vllm_output(SimpleNamespace(outputs=[cut]))[0].top_logprobs is None
