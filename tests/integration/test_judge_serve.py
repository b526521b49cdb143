"""`r1rm judge` (pairs, N candidates) and `r1rm judge --serve` with the real openai client."""

import base64
import io
import json
import subprocess
import sys
import threading
import urllib.request

import pytest


def common(tiny, out):
    return [f"model.path={tiny}", f"output_dir={out}", "runtime.device=cpu", "runtime.progress=false",
            "generation.max_new_tokens=6", "engine.batch_size=8"]


def test_judge_pairs_and_candidates(cli, tiny, tmp_path):
    """A judge that always answers "1" (whatever it is shown): every verdict is decided, so the swapped
    order's mapping back to the input's numbering and the orders' disagreement are checked exactly."""
    from PIL import Image
    from scripted import fixed_answer_model

    says_1 = fixed_answer_model(tiny, tmp_path / "says-1")
    Image.new("RGB", (56, 56), "red").save(tmp_path / "a.png")
    items = [
        {"id": "p1", "question": "What colour?", "images": ["a.png"], "response1": "Red.", "response2": "Blue.", "label": 1},
        {"id": "p2", "question": "Say hi", "response1": "hi", "response2": "bye"},
        {"id": "c1", "question": "What colour?", "images": ["a.png"], "candidates": ["Red.", "Blue.", "Green."]},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps(x) for x in items) + "\n")
    out = tmp_path / "o"
    proc = cli("judge", *common(says_1, out), f"judge.input={inp}")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p1", "p2", "c1"]
    p1, p2, c1 = rows
    assert set(p1["orders"]) == {"as_given", "swapped"} and "label" not in p2 and "correct" not in p2
    for r in (p1, p2):
        given, swapped = r["orders"]["as_given"], r["orders"]["swapped"]
        assert (given["raw_choice"], given["choice"]) == (1, 1)
        assert (swapped["raw_choice"], swapped["choice"]) == (1, 2)  # mapped back to the input's numbering
        assert given["p_choice"] == swapped["p_choice"] == 1.0
        # the orders disagree with equal confidence: no verdict
        assert (r["choice"], r["agree"], r["p_choice"]) == (None, False, None)
    assert (p1["label"], p1["correct"]) == (1, False)
    # every pair: as given "1" is a win for the first candidate, swapped "1" one for the second
    assert c1["n_candidates"] == 3 and c1["wins"] == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    assert c1["undecided_verdicts"] == 0 and [s["win_rate"] for s in c1["scores"]] == [0.5, 0.5, 0.5]
    # a judge that always says "1" ties every candidate: no best is named
    assert sorted(c1["ranking"]) == [0, 1, 2] and (c1["best"], c1["best_reason"]) == (None, "tie")
    # rerun: nothing to do, nothing duplicated
    proc = cli("judge", *common(says_1, out), f"judge.input={inp}")
    assert proc.returncode == 0
    assert len((out / "verdicts.jsonl").read_text().splitlines()) == 3


def test_judge_bad_input_is_exit_2(cli, tiny, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"question": "q", "candidates": ["only one"]}\n')
    proc = cli("judge", *common(tiny, tmp_path / "o"), f"judge.input={inp}")
    assert proc.returncode == 2 and f"{inp}:1" in proc.stderr and "at least 2" in proc.stderr
    proc = cli("judge", *common(tiny, tmp_path / "o"))
    assert proc.returncode == 2 and "judge.input" in proc.stderr


def _png_data_url(colour="red") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    from conftest import served_cli

    with served_cli(*common(tiny, tmp_path_factory.mktemp("srv")), "judge.max_request_bytes=200000",
                    "judge.served_model_name=tiny-judge", env={"R1RM_API_KEY": "sekret"}) as url:
        yield url


def test_serve_with_the_openai_client(server):
    import openai

    client = openai.OpenAI(base_url=server, api_key="sekret", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["tiny-judge"]
    msg = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _png_data_url()}},
        {"type": "text", "text": "Which response is better?"},
    ]}]
    resp = client.chat.completions.create(model="tiny-judge", messages=msg, max_tokens=5, temperature=0)
    assert resp.choices[0].message.role == "assistant" and isinstance(resp.choices[0].message.content, str)
    assert resp.usage.completion_tokens <= 5
    # concurrent requests are all answered (and batched by the server)
    results, errors = [], []

    def call(i):
        try:
            r = client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": f"hello {i}"}],
                                               max_tokens=4, temperature=0)
            results.append(r.choices[0].message.content)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 6
    # n samples
    many = client.chat.completions.create(model="tiny-judge", messages=msg, max_tokens=3, temperature=1.0, n=2, seed=1)
    assert len(many.choices) == 2


def _post(url, body: bytes, key="sekret"):
    req = urllib.request.Request(url + "/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_serve_rejects_bad_requests_and_keeps_serving(server):
    ok = json.dumps({"model": "tiny-judge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    assert _post(server, b"{not json")[0] == 400
    assert _post(server, json.dumps({"messages": []}).encode())[0] == 400
    bad_img = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}
    status, body = _post(server, json.dumps(bad_img).encode())
    assert status == 400 and "data URL" in body["error"]["message"]
    assert _post(server, json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}).encode())[0] == 400
    assert _post(server, json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode())[0] == 400
    assert _post(server, ok, key="wrong")[0] == 401
    assert _post(server, b"x" * 300_000)[0] == 413
    assert _post(server, json.dumps({"model": "other", "messages": [{"role": "user", "content": "hi"}]}).encode())[0] == 404
    status, body = _post(server, ok)
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"


def test_eval_through_openai_engine_against_serve(cli, server, tmp_path):
    from r1rm.data.synthetic import write_dataset

    data = write_dataset(tmp_path / "d", 3, seed=9, levels=(1,), modality="image", prefix="h")
    out = tmp_path / "o"
    proc = cli("eval", f"output_dir={out}", f"eval.path={data}", "engine.kind=openai", f"engine.base_url={server}",
               "engine.model_name=tiny-judge", "engine.api_key_env=R1RM_TEST_KEY", "runtime.progress=false",
               "generation.max_new_tokens=16")
    # the key is read from the environment variable named by engine.api_key_env: without it the 401 stops the run
    assert proc.returncode == 2 and "HTTP 401" in proc.stderr and "$R1RM_TEST_KEY is not set" in proc.stderr
    import os
    env_proc = subprocess.run(
        [sys.executable, "-m", "r1rm.cli", "eval", f"output_dir={out}", f"eval.path={data}", "engine.kind=openai",
         f"engine.base_url={server}", "engine.model_name=tiny-judge", "engine.api_key_env=R1RM_TEST_KEY",
         "runtime.progress=false", "generation.max_new_tokens=16"],
        capture_output=True, text=True, env={**os.environ, "R1RM_TEST_KEY": "sekret"}, timeout=300,
    )
    assert env_proc.returncode == 0, env_proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["n_generations"] == 6
