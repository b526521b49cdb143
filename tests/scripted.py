"""Scripted stand-ins for tests whose outcome must be known in advance: a tiny model that always
writes the same answer, and an OpenAI-compatible endpoint that replies from a script."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def fixed_answer_model(tiny: Path, dst: Path, text: str = "<think>x</think><answer>1</answer>") -> Path:
    """A copy of the tiny checkpoint that answers every prompt with `text` (greedy or sampled).

    The decoder layers write nothing to the residual stream (o_proj and down_proj zeroed), so each
    position's logits depend on its own token only: a bigram table. Each token of "\\n" + text +
    <|im_end|> gets its own embedding direction, and lm_head maps it to the next one with a logit
    of about 113, so every prompt (whose last token is the "\\n" after "assistant") continues
    with `text` and stops. The tokens of that chain must all differ."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(tiny, dst)
    chain = AutoTokenizer.from_pretrained(dst)("\n" + text + "<|im_end|>")["input_ids"]
    assert len(set(chain)) == len(chain), f"{text!r} repeats a token"
    weights = load_file(dst / "model.safetensors")
    for name, w in weights.items():
        if not name.startswith("visual.") and name.endswith(("o_proj.weight", "down_proj.weight")):
            w.zero_()
    emb, head = weights["model.embed_tokens.weight"], weights["lm_head.weight"]
    emb.zero_()
    head.zero_()
    for j, (tok, nxt) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
        emb[tok, j] = 1.0
        head[nxt, j] = 10.0  # × √hidden after the final RMSNorm
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


class ScriptedEndpoint:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 (a free port), serving in a daemon thread:
    the n-th request to arrive gets `replies[n]` as its message content (the last reply once the
    script runs out). `prompts` records each request's text, `bodies` each request as sent. A context manager: it stops on
    exit, and by itself after `timeout_s` whatever happens."""

    def __init__(self, replies: list[str], *, timeout_s: float = 300.0):
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._timer = threading.Timer(timeout_s, self._server.shutdown)
        self._timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _next_reply(self, body: dict) -> str:
        parts = body["messages"][-1]["content"]
        text = parts if isinstance(parts, str) else "".join(p.get("text", "") for p in parts)
        with self._lock:
            self.bodies.append(body)
            self.prompts.append(text)
            return self.replies[min(len(self.prompts), len(self.replies)) - 1]

    def _handler(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                message = {"role": "assistant", "content": endpoint._next_reply(body)}
                out = json.dumps({"id": "scripted", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        return Handler

    def __enter__(self) -> ScriptedEndpoint:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()
