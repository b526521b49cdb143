"""OpenAIEngine against a local fake chat-completions server (stdlib http.server, 127.0.0.1, port 0).

The model name in each request picks the server's behaviour, so one server serves every case:
  ok        canned completion (n choices; token logprobs when asked)
  echo      ok, with the request's last text appended to the answer
  flaky     HTTP 500 twice, then ok
  down      HTTP 500 always
  garbage   HTTP 200 with a body that is not JSON (text/html)
  badjson   HTTP 200, content type JSON, body not JSON
  nochoice  HTTP 200 with {"choices": []}
  blank     HTTP 200 with an empty message content
  slow      sleeps past the client's timeout, then ok
  hangup    closes the connection without replying
  badreq    HTTP 400 (not retried)
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from r1rm.core.prompts import user_message
from r1rm.engines.base import Request, SamplingParams
from r1rm.engines.openai_client import OpenAIEngine

ANSWER = "<think>the square is red</think><answer>1</answer>"
SLOW_S = 1.0


def _logprobs(text_tokens: list[str]) -> dict:
    content = []
    for tok in text_tokens:
        top = [{"token": tok, "logprob": -0.1, "bytes": None}]
        if tok == "1":
            top = [{"token": "1", "logprob": -0.2, "bytes": None}, {"token": "2", "logprob": -1.8, "bytes": None}]
        content.append({"token": tok, "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top})
    return {"content": content}


def _completion(body: dict, content: str = ANSWER) -> dict:
    n = body.get("n", 1)
    tokens = ["<think>", "the square is red", "</think>", "<answer>", "1", "</answer>"]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": _logprobs(tokens) if body.get("logprobs") else None,
        }
        for i in range(n)
    ]
    return {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a "slow" reply written after the client timed out: a broken pipe, expected
        pass


class FakeServer:
    def __init__(self):
        self.bodies: list[dict] = []
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code: int, payload: bytes, ctype: str = "application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                mode = body["model"]
                with server.lock:
                    server.bodies.append(body)
                    server.calls[mode] += 1
                    k = server.calls[mode]
                if mode == "flaky" and k <= 2 or mode == "down":
                    return self._send(500, json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode())
                if mode == "badreq":
                    return self._send(400, json.dumps({"error": {"message": "bad model", "type": "invalid"}}).encode())
                if mode == "garbage":
                    return self._send(200, b"<html>not json</html>", "text/html")
                if mode == "badjson":
                    return self._send(200, b"{not json")
                if mode == "nochoice":
                    return self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
                if mode == "blank":
                    return self._send(200, json.dumps(_completion(body, content="")).encode())
                if mode == "hangup":
                    self.close_connection = True
                    return  # HTTP/1.0 handler: the socket is closed with no reply
                if mode == "echo":
                    last = body["messages"][-1]["content"][-1]["text"]
                    return self._send(200, json.dumps(_completion(body, content=f"{ANSWER} {last}")).encode())
                if mode == "slow":
                    time.sleep(SLOW_S)
                return self._send(200, json.dumps(_completion(body)).encode())

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def engine(server, model: str, **kw) -> OpenAIEngine:
    kw = {"timeout_s": 5.0, "max_retries": 3, "backoff_s": 0.01, **kw}
    return OpenAIEngine(server.url, model, api_key="test-key", **kw)


def req(text: str = "Which response is right?", images=()) -> Request:
    return Request(user_message(text, images=list(images)))


def test_ok_sends_image_as_png_data_url_and_text(server, tmp_path):
    img = Image.new("RGB", (20, 12), (200, 30, 30))
    path = tmp_path / "a.png"
    img.save(path)
    jpg = tmp_path / "b.jpg"
    img.save(jpg, format="JPEG")
    eng = engine(server, "ok")
    out = eng.generate([req("what colour?", images=[path, jpg]), req("text only")], SamplingParams(max_new_tokens=64))
    assert [len(s) for s in out] == [1, 1]
    assert out[0][0].text == ANSWER and out[0][0].error is None and out[0][0].finished
    assert (eng.n_requests, eng.n_retries, eng.n_failures) == (2, 0, 0)
    body = next(b for b in server.bodies if isinstance(b["messages"][0]["content"], list) and len(b["messages"][0]["content"]) == 3)
    png_part, jpg_part, text_part = body["messages"][0]["content"]
    assert png_part["type"] == "image_url" and png_part["image_url"]["url"].startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(png_part["image_url"]["url"].split(",", 1)[1])))
    assert decoded.size == (20, 12)
    # every image is decoded once (the one preprocessing of every engine) and sent as lossless PNG of those pixels
    assert jpg_part["image_url"]["url"].startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(jpg_part["image_url"]["url"].split(",", 1)[1])))
    assert list(sent.convert("RGB").getdata()) == list(Image.open(jpg).convert("RGB").getdata())
    assert text_part == {"type": "text", "text": "what colour?"}
    assert body["max_tokens"] == 64 and body["temperature"] == 0.0 and body["n"] == 1
    eng.close()


def test_pil_image_and_a_video_become_image_and_video_parts(server, tmp_path):
    frames = []
    for i in range(3):
        f = tmp_path / f"frame_{i}.png"
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(f)
        frames.append(f)
    messages = [{"role": "user", "content": [
        {"type": "image", "image": Image.new("RGB", (9, 9))},
        {"type": "video", "video": frames},
        {"type": "text", "text": "describe"},
    ]}]
    eng = engine(server, "ok")
    out = eng.generate([Request(messages)], SamplingParams())
    assert out[0][0].text == ANSWER
    body = server.bodies[-1]
    parts = body["messages"][0]["content"]
    # one video_url part: vLLM's frame sequence, every frame read (num_frames -1)
    assert [p["type"] for p in parts] == ["image_url", "video_url", "text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    url = parts[1]["video_url"]["url"]
    assert url.startswith("data:video/jpeg;base64,") and len(url.split(",")) == 1 + 3
    assert body["media_io_kwargs"]["video"]["num_frames"] == -1
    # endpoints without video input: one image part per frame
    engine(server, "ok", video_as="frames").generate([Request(messages)], SamplingParams())
    parts = server.bodies[-1]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 4 + ["text"] and "media_io_kwargs" not in server.bodies[-1]


def test_n_samples_seed_and_logprob_choice_probs(server):
    eng = engine(server, "ok", request_logprobs=True)
    out = eng.generate([req()], SamplingParams(temperature=1.0, top_k=5, n=2, seed=7))
    assert len(out[0]) == 2 and all(s.text == ANSWER for s in out[0])
    body = server.bodies[-1]
    assert body["n"] == 2 and body["seed"] == 7 and body["top_k"] == 5
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    probs = out[0][0].choice_probs
    assert probs is not None and abs(probs[1] + probs[2] - 1) < 1e-9
    # softmax of the two logprobs -0.2 and -1.8
    assert probs[1] == pytest.approx(1 / (1 + math.exp(-1.6)))


def test_greedy_n_asks_once_and_copies(server):
    eng = engine(server, "ok")
    out = eng.generate([req()], SamplingParams(n=3))
    assert len(out[0]) == 3 and server.bodies[-1]["n"] == 1
    assert out[0][0] is not out[0][1] and out[0][0].text == out[0][2].text


def test_retries_are_counted_then_succeed(server):
    eng = engine(server, "flaky")
    out = eng.generate([req()], SamplingParams())
    assert out[0][0].text == ANSWER and out[0][0].error is None
    assert (eng.n_requests, eng.n_retries, eng.n_failures) == (1, 2, 0)
    assert server.calls["flaky"] == 3


def test_persistent_500_gives_error_samples_not_exceptions(server):
    eng = engine(server, "down", max_retries=2)
    out = eng.generate([req(), req("second")], SamplingParams(n=2, temperature=1.0))
    assert [len(s) for s in out] == [2, 2]
    for s in (x for r in out for x in r):
        assert s.text == "" and not s.finished and s.error.startswith("http_500:") and s.choice_probs is None
    assert (eng.n_requests, eng.n_retries, eng.n_failures) == (2, 4, 2)
    assert server.calls["down"] == 6


def test_client_error_is_not_retried(server):
    eng = engine(server, "badreq")
    out = eng.generate([req()], SamplingParams())
    assert out[0][0].error.startswith("http_400:")
    assert (eng.n_retries, eng.n_failures, server.calls["badreq"]) == (0, 1, 1)


@pytest.mark.parametrize("mode", ["garbage", "badjson", "nochoice", "blank"])
def test_garbage_reply_is_a_counted_failure(server, mode):
    eng = engine(server, mode)
    out = eng.generate([req()], SamplingParams())
    s = out[0][0]
    assert s.text == "" and not s.finished and s.error.startswith("bad_response:")
    assert (eng.n_requests, eng.n_retries, eng.n_failures) == (1, 0, 1)


def test_timeout_is_retried_then_an_error(server):
    eng = engine(server, "slow", timeout_s=0.2, max_retries=1)
    t0 = time.monotonic()
    out = eng.generate([req()], SamplingParams())
    assert time.monotonic() - t0 < SLOW_S * 2
    assert out[0][0].error.startswith("timeout:")
    assert (eng.n_retries, eng.n_failures) == (1, 1)


def test_closed_connection_is_a_connection_error(server):
    eng = engine(server, "hangup", max_retries=1)
    out = eng.generate([req()], SamplingParams())
    assert out[0][0].error.startswith("connection:")
    assert (eng.n_retries, eng.n_failures, server.calls["hangup"]) == (1, 1, 2)


def test_concurrency_keeps_request_order_and_reports_progress(server):
    eng = engine(server, "echo", concurrency=4)
    done = []
    reqs = [req(f"question {i}") for i in range(10)]
    out = eng.generate(reqs, SamplingParams(), progress=done.append)
    assert [r[0].text for r in out] == [f"{ANSWER} question {i}" for i in range(10)]
    assert sum(done) == 10 and eng.n_requests == 10
