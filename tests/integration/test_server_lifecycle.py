"""`r1rm judge --serve` starting and stopping: refusals before the model loads, SIGTERM drains."""

import signal
import socket
import threading
import time

import httpx


def common(tiny, out):
    return [f"model.path={tiny}", f"output_dir={out}", "runtime.device=cpu", "runtime.progress=false"]


def test_refused_before_the_model_loads(cli, tiny, tmp_path):
    # a taken port: refused after the checks of the model's config, before its weights load
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = cli("judge", "--serve", *common(tiny, tmp_path / "a"), f"judge.port={port}")
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert not (tmp_path / "a" / "config.yaml").exists()
    # a public address without a key
    proc = cli("judge", "--serve", *common(tiny, tmp_path / "b"), "judge.host=0.0.0.0", "judge.port=0",
               "judge.api_key_env=R1RM_UNSET_TEST_KEY")
    assert proc.returncode == 2 and "reachable from other machines" in proc.stderr and "judge.allow_public" in proc.stderr
    # the key never goes in a recipe or on the command line
    proc = cli("judge", "--serve", *common(tiny, tmp_path / "c"), "judge.api_key=abc")
    assert proc.returncode == 2 and "R1RM_API_KEY" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(tiny, tmp_path):
    from conftest import served_process

    with served_process(*common(tiny, tmp_path / "srv"), "generation.max_new_tokens=4", "engine.batch_size=4") as (url, proc, log):
        slow = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 300, "temperature": 1.0, "n": 4, "seed": 3}
        replies = {}

        def in_flight():
            replies["slow"] = httpx.post(url + "/chat/completions", json=slow, timeout=120)

        t = threading.Thread(target=in_flight)
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the request is in the server
            if httpx.get(url.removesuffix("/v1") + "/health").json()["inflight"] >= 1:  # probes do not count themselves
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = httpx.post(url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        t.join(timeout=120)
        assert replies["slow"].status_code == 200 and len(replies["slow"].json()["choices"]) == 4
        assert proc.wait(timeout=60) == 0
        assert "server stopped" in proc.stdout.read()
        text = log.read_text()
        assert "draining 1 request(s) in flight" in text and '"POST /v1/chat/completions HTTP/1.1" 503' in text
    assert not log.exists()  # served_process leaves no log file behind
