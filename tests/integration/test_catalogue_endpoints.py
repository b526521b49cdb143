"""Bad-input catalogue, class 4 (issue 26): endpoints that misbehave, through the real CLI.

One fake OpenAI-compatible server (stdlib http.server on 127.0.0.1). A marker in each item's question,
`[fault=NAME]`, picks how the server answers that item's requests, so ONE `r1rm eval` run (module
fixture `faults_run`, 22 items x 2 orders, concurrency 8) covers most cases at the cost of one CLI
start; each case is then asserted on its own:
- a fault a retry cures (500 then fine, 429 with Retry-After then fine, a reset then fine): the
  item's generations are there, no failure listed, the server saw the retry;
- a fault that stays (a drip, a stall, malformed replies, 4xx/5xx, a reset, a huge body, an hour's
  Retry-After): no generation, both orders listed in failures.jsonl with the failure kind, the server
  saw exactly the attempts the settings allow;
- a reply that is unusual but valid (no `index`, extra fields): accepted.
The run as a whole: exit 2 (IncompleteRunError, "rerun the same command"), no traceback, metrics.json
complete false with error_rate = failed / attempted samples and the failures counted by kind, and it
ends within its deadlines (a drip would take 20 s per attempt: engine.timeout_s is a total deadline).
Whole-endpoint cases (connection refused, 403, stale failures.jsonl of eval and judge) run the CLI
each. Deadlines and waits are small (timeout 2 s, backoff 0.01 s, Retry-After 1 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSWER = "<think>the first response is right</think><answer>1</answer>"
TIMEOUT_S = 2.0


def completion(content: str = ANSWER, **choice) -> dict:
    return {"id": "c", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                         **choice}]}


class Endpoint:
    """The fake server. `calls[mode]`: requests seen per mode; `seen[body hash]`: attempts per request."""

    def __init__(self):
        self.calls: Counter = Counter()
        self.seen: Counter = Counter()
        self.broken = True  # mode "toggle": fails while True
        self.stop = threading.Event()
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code: int, payload: bytes, ctype: str = "application/json", **headers):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                marker = re.search(rb"\[fault=(\w+)\]", raw)
                mode = marker.group(1).decode() if marker else json.loads(raw)["model"]
                with owner.lock:
                    owner.calls[mode] += 1
                    key = hashlib.sha256(raw).hexdigest()
                    owner.seen[key] += 1
                    attempt = owner.seen[key]
                owner.handle(self, mode, attempt)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client that hung up at its deadline: a broken pipe, expected
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def handle(self, h, mode: str, attempt: int) -> None:  # noqa: C901 - one branch per fault
        ok = json.dumps(completion()).encode()
        if mode == "ok" or (mode == "toggle" and not self.broken):
            return h.send(200, ok)
        if mode == "no_index":  # valid without the optional fields, with fields r1rm does not know
            c = completion(logprobs=None, extra="x")
            del c["choices"][0]["index"]
            return h.send(200, json.dumps({**c, "usage": {"prompt_tokens": 3}, "system_fingerprint": None}).encode())
        if mode in ("toggle", "down"):
            return h.send(500, b'{"error": {"message": "boom"}}')
        if mode == "missing_choices":
            return h.send(200, json.dumps({"id": "c", "object": "chat.completion"}).encode())
        if mode == "null_content":
            return h.send(200, json.dumps(completion(content=None)).encode())
        if mode == "reset_once" and attempt > 1:
            return h.send(200, ok)
        if mode == "flaky":  # each request: 500, then fine
            return h.send(500, b'{"error": {"message": "boom"}}') if attempt == 1 else h.send(200, ok)
        if mode == "rate_limited":  # each request: 429 with Retry-After 1 s, then fine
            return h.send(429, b'{"error": {"message": "slow down"}}', Retry_After="1") if attempt == 1 else h.send(200, ok)
        if mode == "rate_limited_long":  # asks for an hour: more than engine.retry_budget_s
            return h.send(429, b'{"error": {"message": "quota"}}', Retry_After="3600")
        if mode == "drip":  # the whole body, one byte every 0.5 s: each read is quick, the reply takes 100 s
            return self._drip(h, ok, 0.5)
        if mode == "stall":  # headers, then nothing
            return self._drip(h, ok[:0], 0, declared=len(ok), stall_s=30)
        if mode == "malformed_json":
            return h.send(200, b'{"choices": [{"index": 0, "message": {"content": "<answer>1')
        if mode == "malformed_field":  # the red team's `"index": "a"` (two choices: the old sort raised TypeError)
            c = completion()
            c["choices"] = [{**c["choices"][0], "index": "a"}, {**c["choices"][0], "index": 0}]
            c["choices"][0]["logprobs"] = {"content": [{"token": 5, "logprob": "x", "top_logprobs": 7}]}
            return h.send(200, json.dumps(c).encode())
        if mode == "choices_not_list":
            return h.send(200, json.dumps({"choices": {"0": "x"}}).encode())
        if mode == "content_not_text":
            return h.send(200, json.dumps(completion(content=[1, 2])).encode())
        if mode == "top_level_list":
            return h.send(200, b"[1, 2, 3]")
        if mode == "html":  # a valid completion, but the content type of a proxy's error page
            return h.send(200, ok, "text/html")
        if mode == "empty_200":
            return h.send(200, b"")
        if mode == "bad_request":
            return h.send(400, b'{"error": {"message": "max_tokens too large"}}')
        if mode == "forbidden":
            return h.send(403, b'{"error": {"message": "no access to this model"}}')
        if mode in ("reset", "reset_once"):  # part of the promised body, then a TCP reset
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(ok)))
            h.end_headers()
            h.wfile.write(ok[:20])
            h.wfile.flush()
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            return None
        if mode == "huge_declared":  # a Content-Length of 8 GiB: refused before reading
            return self._drip(h, ok[:1], 0, declared=8 * 2**30)
        if mode == "huge_streamed":  # no Content-Length, 40 MiB of JSON-ish bytes until the connection closes
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            block = b" " * 2**20
            for _ in range(40):
                h.wfile.write(block)
            return None
        raise AssertionError(mode)

    def _drip(self, h, payload: bytes, every_s: float, *, declared: int | None = None, stall_s: float = 0) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(declared if declared is not None else len(payload)))
        h.end_headers()
        h.wfile.flush()
        for i in range(len(payload)):
            if self.stop.wait(every_s):
                return
            h.wfile.write(payload[i : i + 1])
            h.wfile.flush()
        self.stop.wait(stall_s)

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def endpoint():
    e = Endpoint()
    yield e
    e.close()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Two text pairs: 2 items x 2 orders = 4 requests per eval."""
    f = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"uid": f"u{i}", "question": f"Which answer to question {i} is right?", "response1": f"Right {i}.",
             "response2": f"Wrong {i}.", "label": 1, "modality": "text"} for i in range(2)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "R1RM_CAT_KEY": "test-key"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "r1rm.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=240, env=env)
    return proc, time.monotonic() - t0


def run_eval(endpoint: Endpoint, pairs: Path, out: Path, mode: str, *extra: str, base_url: str | None = None):
    return cli("eval", "engine.kind=openai", f"engine.base_url={base_url or endpoint.url}", f"engine.model_name={mode}",
               "engine.api_key_env=R1RM_CAT_KEY", f"engine.timeout_s={TIMEOUT_S}", "engine.backoff_s=0.01",
               "engine.concurrency=4", f"eval.path={pairs}", f"output_dir={out}", "runtime.progress=false",
               "runtime.report_to=none", *extra)


def failures_of(out: Path) -> list[dict]:
    f = out / "failures.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


# (fault, failure kind or None when the item ends with its generations, attempts per request), with
# engine.max_retries=2 and engine.retry_budget_s=30
CASES = [
    ("drip", "timeout", 3),  # the body one byte every 0.5 s: each read is quick, the reply takes 100 s
    ("stall", "timeout", 3),  # headers, then nothing
    ("malformed_json", "bad_response", 1),
    ("malformed_field", "bad_response", 1),  # the red team's "index": "a" (it ended the run with TypeError)
    ("choices_not_list", "bad_response", 1),
    ("missing_choices", "bad_response", 1),
    ("content_not_text", "bad_response", 1),
    ("null_content", "bad_response", 1),
    ("top_level_list", "bad_response", 1),
    ("html", "bad_response", 1),  # a valid completion under a proxy's text/html content type
    ("empty_200", "bad_response", 1),
    ("huge_declared", "bad_response", 1),  # Content-Length 8 GiB: refused before reading
    ("huge_streamed", "bad_response", 1),  # 40 MiB without Content-Length: cut at 32 MiB
    ("bad_request", "http_400", 1),  # not retried
    ("down", "http_500", 3),
    ("reset", "connection", 3),  # a TCP reset mid-body, every time
    ("rate_limited_long", "http_429", 1),  # Retry-After 3600: capped at 120 s, still over the 30 s budget
    ("flaky", None, 2),  # 500, then fine
    ("rate_limited", None, 2),  # 429 with Retry-After 1, then fine
    ("reset_once", None, 2),
    ("ok", None, 1),
    ("no_index", None, 1),
]
N_FAILING = sum(kind is not None for _, kind, _ in CASES)


def free_port() -> int:
    """A port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(endpoint, pairs, tmp_path_factory) -> dict:
    """Every CLI run of this file, the independent ones at once (a CLI start costs seconds):
    name -> (process, seconds, output folder). `stale_*2` rerun `stale_*1` once the endpoint is fixed."""
    d = tmp_path_factory.mktemp("runs")
    rows = [{"uid": fault, "question": f"Which answer is right? [fault={fault}]", "response1": "Right.",
             "response2": "Wrong.", "label": 1, "modality": "text"} for fault, _, _ in CASES]
    (d / "faults.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = ("judge", "engine.kind=openai", f"engine.base_url={endpoint.url}", "engine.model_name=toggle",
             "engine.api_key_env=R1RM_CAT_KEY", "engine.max_retries=0", f"judge.input={pairs}",
             f"output_dir={d / 'stale_judge'}", "runtime.progress=false", "runtime.report_to=none")
    first = {
        # ONE eval over an item per fault (both orders: 2 requests each)
        "faults": lambda: run_eval(endpoint, d / "faults.jsonl", d / "faults", "judge", "engine.max_retries=2",
                                   "engine.retry_budget_s=30", "engine.concurrency=8"),
        "refused": lambda: run_eval(endpoint, pairs, d / "refused", "ok", "engine.max_retries=1",
                                    base_url=f"http://127.0.0.1:{free_port()}/v1"),
        "forbidden": lambda: run_eval(endpoint, pairs, d / "forbidden", "forbidden", "engine.max_retries=3"),
        "stale_eval1": lambda: run_eval(endpoint, pairs, d / "stale_eval", "toggle", "engine.max_retries=0"),
        "stale_judge1": lambda: cli(*judge),
    }
    second = {"stale_eval2": first["stale_eval1"], "stale_judge2": first["stale_judge1"]}
    done: dict = {}
    endpoint.broken = True
    try:
        for batch in (first, second):
            with ThreadPoolExecutor(len(batch)) as pool:
                futures = {name: pool.submit(fn) for name, fn in batch.items()}
            for name, fut in futures.items():
                proc, took = fut.result()
                out = d / name.rstrip("12")
                # failures.jsonl as this run left it (the rerun writes into the same folder)
                done[name] = (proc, took, out, failures_of(out), _json(out / "metrics.json"))
            endpoint.broken = False
    finally:
        endpoint.broken = True
    return done


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def assert_incomplete(proc: subprocess.CompletedProcess) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "rerun the same command" in proc.stderr, text[-3000:]


def test_faults_run_is_incomplete_counted_and_bounded(runs):
    proc, took, _, fails, m = runs["faults"]
    assert_incomplete(proc)
    n_ok = len(CASES) - N_FAILING
    assert (m["complete"], m["n_generations"], m["n_missing_generations"]) == (False, 2 * n_ok, 2 * N_FAILING)
    # it said error_rate 0.0 after 38 failures: now failed / attempted samples
    assert m["n_engine_failures"] == 2 * N_FAILING
    assert m["error_rate"] == pytest.approx(N_FAILING / len(CASES))
    assert m["engine_failures_by_kind"] == dict(Counter(k for _, k, _ in CASES if k for _ in range(2)))
    assert len(fails) == 2 * N_FAILING
    # a total deadline: uncut, the drip alone takes 3 x 100 s; each attempt ends at 2 s (the rest of the
    # time is CLI start-ups, five at once; tests/unit/test_openai_retry.py times one deadline closely)
    assert took < 90, took


@pytest.mark.parametrize("fault,kind,attempts", CASES, ids=[c[0] for c in CASES])
def test_fault(endpoint, runs, fault, kind, attempts):
    _, _, out, fails, _ = runs["faults"]
    assert endpoint.calls[fault] == 2 * attempts
    mine = [f for f in fails if f["key"][0] == fault]
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["uid"] == fault]
    if kind is None:  # cured by a retry, or accepted: both orders answered, nothing listed
        assert mine == [] and len(rows) == 2 and all(r["choice"] is not None and not r.get("error") for r in rows)
    else:  # no invented verdict: both orders listed with their kind, no generation
        assert rows == [] and len(mine) == 2 and all(f["error"].startswith(f"{kind}:") for f in mine), mine


def test_connection_refused_is_counted(runs):
    proc, _, _, fails, m = runs["refused"]
    assert_incomplete(proc)
    assert (m["error_rate"], m["engine_failures_by_kind"]) == (1.0, {"connection": 4})
    assert len(fails) == 4 and all(f["error"].startswith("connection:") for f in fails)


def test_forbidden_stops_the_run_at_once(endpoint, runs):
    proc, _, out, _, m = runs["forbidden"]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "HTTP 403" in proc.stderr and "engine.api_key_env" in proc.stderr and "R1RM_CAT_KEY" in proc.stderr
    # no retries; at most the requests already in flight (concurrency 4) were sent; nothing scored
    assert endpoint.calls["forbidden"] <= 4 and m is None


def test_stale_failures_go_when_a_rerun_completes(runs):
    """eval and judge: a failed run lists its failures; the rerun that completes leaves no stale list."""
    proc, _, _, fails, m = runs["stale_eval1"]
    assert_incomplete(proc)
    assert len(fails) == 4 and m["error_rate"] == 1.0
    proc, _, _, fails, _ = runs["stale_judge1"]
    assert_incomplete(proc)
    assert [f["uid"] for f in fails] == ["u0", "u1"]
    assert all(e.startswith("http_500:") for f in fails for e in f["errors"])
    proc, _, out, fails, m = runs["stale_eval2"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (m["complete"], m["error_rate"], m["n_engine_failures"], fails) == (True, 0.0, 0, [])
    assert not (out / "failures.jsonl").exists()
    proc, _, out, fails, _ = runs["stale_judge2"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert fails == [] and len((out / "verdicts.jsonl").read_text().splitlines()) == 2


def test_engine_counters_reach_metrics(runs):
    """OpenAIEngine.stats() (requests, retries, failures by kind) lands in eval's and judge's metrics.json."""
    *_, m = runs["faults"]
    assert m["engine"]["n_requests"] == 2 * len(CASES)
    assert m["engine"]["n_failures"] == 2 * N_FAILING
    assert m["engine"]["failures_by_kind"] == m["engine_failures_by_kind"]
    assert m["engine"]["n_retries"] == sum(2 * (attempts - 1) for _, _, attempts in CASES)
    *_, m = runs["stale_judge1"]  # max_retries=0, 2 pairs x 2 orders, every request a 500
    assert (m["n_items"], m["n_verdicts"], m["complete"], m["n_engine_failures"]) == (2, 0, False, 4)
    assert m["engine"] == {"n_requests": 4, "n_retries": 0, "n_failures": 4, "failures_by_kind": {"http_500": 4}}
    *_, m = runs["stale_judge2"]
    assert (m["n_verdicts"], m["complete"], m["engine"]["n_failures"]) == (2, True, 0)


def test_two_processes_count_every_ranks_failures(endpoint, pairs, tmp_path):
    """torchrun, 2 processes, an endpoint that fails every request: each rank's failures (failures.rank{R}.jsonl)
    count in rank 0's metrics (error_rate, n_engine_failures, the engine counters summed), and the message
    names the files that exist — it counted only rank 0's and named a failures.jsonl nobody wrote."""
    out = tmp_path / "two"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "R1RM_CAT_KEY": "test-key", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "r1rm.cli",
         "eval", "engine.kind=openai", f"engine.base_url={endpoint.url}", "engine.model_name=toggle",
         "engine.api_key_env=R1RM_CAT_KEY", "engine.max_retries=0", "runtime.device=cpu", f"eval.path={pairs}",
         f"output_dir={out}", "runtime.progress=false", "runtime.report_to=none"],
        cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    # (torchrun itself reports a child's non-zero exit with its own traceback: rank 0's message is what is checked)
    assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
    assert f"4 engine failures listed in {out}/failures.rank*.jsonl" in proc.stderr, proc.stderr[-3000:]
    assert not (out / "failures.jsonl").exists()
    assert [len(failures_of_file(out / f"failures.rank{r}.jsonl")) for r in (0, 1)] == [2, 2]
    m = json.loads((out / "metrics.json").read_text())
    assert (m["complete"], m["n_engine_failures"], m["error_rate"]) == (False, 4, 1.0)
    assert m["engine_failures_by_kind"] == {"http_500": 4}
    assert m["engine"] == {"n_requests": 4, "n_retries": 0, "n_failures": 4, "failures_by_kind": {"http_500": 4}}


def failures_of_file(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]
