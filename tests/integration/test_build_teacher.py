"""`r1rm build-data` model stages through the CLI: the teacher loop (attempts, cache, resume, endpoint
failures) against a scripted OpenAI-compatible server, against `r1rm judge --serve`, and with the hf
engine; MSRL caption conversion (caption field and captioner) with replay; CMKD end to end."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image

from r1rm.models.tiny import build_tiny_model

RESPONSE = re.compile(r"\[Response 1\]:\n(.*?)[ ]*\n\n.*?\[Response 2\]:\n(.*?)[ ]*\n\n", re.DOTALL)


class Scripted(ThreadingHTTPServer):
    """A fake OpenAI chat endpoint. Each question names its script, e.g. "item 3 [right@2]":
    right@K — wrong answers before attempt K, the right one from K on (attempt = body seed - 100 + 1);
    never — always wrong; badformat — right answer without <think>; fail — HTTP 500 while `failing`.
    The right response is the one whose text starts with "good". It counts hits per (question, attempt).
    With `chains`, it answers n MSRL chains with per-token logprobs (CMKD)."""

    daemon_threads = True

    def __init__(self, delay_s: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter = Counter()
        self.failing = True
        self.delay_s = delay_s
        self.chains: dict[str, list[tuple[str, float]]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):  # noqa: N802
        srv: Scripted = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = body["messages"][-1]["content"]
        text = "".join(p["text"] for p in parts if p.get("type") == "text")
        if "[Response 1]" not in text:  # a captioner request: a caption per image, empty for 84-px-wide ones
            urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
            with srv.lock:
                srv.hits[("caption", len(srv.hits))] += 1
            img = Image.open(io.BytesIO(base64.b64decode(urls[0].partition(",")[2])))
            caption = "" if img.width == 84 else "A picture " + hashlib.sha1("".join(urls).encode()).hexdigest()[:8] + "."
            choice = {"index": 0, "message": {"role": "assistant", "content": caption or " "}, "finish_reason": "stop"}
            self._send(200, _completion([choice]))
            return
        script = re.search(r"\[([a-z@0-9]+)\]", text).group(1)
        attempt = body.get("seed", 100) - 100 + 1
        question = re.search(r"item \d+", text).group(0)
        with srv.lock:
            srv.hits[(question, attempt)] += 1
        if srv.delay_s:
            time.sleep(srv.delay_s)
        if script == "fail" and srv.failing:
            self._send(500, {"error": {"message": "scripted failure"}})
            return
        m = RESPONSE.search(text)
        good = 1 if m.group(1).startswith("good") else 2
        if script in srv.chains:
            choices = []
            for i, (answer, lp) in enumerate(srv.chains[script][: body.get("n", 1)]):
                content = answer.replace("GOOD", str(good)).replace("BAD", str(3 - good))
                logprobs = {"content": [{"token": "x", "logprob": lp, "top_logprobs": []}] * 3}
                choices.append({"index": i, "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop", "logprobs": logprobs})
            self._send(200, _completion(choices))
            return
        right = {"never": False, "badformat": True, "fail": True}.get(script)
        if right is None:
            right = attempt >= int(script.split("@")[1])
        answer = good if right else 3 - good
        content = f"<answer>{answer}</answer>" if script == "badformat" else f"<think>t</think><answer>{answer}</answer>"
        self._send(200, _completion([{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]))

    def _send(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _completion(choices):
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "scripted", "choices": choices,
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture
def scripted():
    srv = Scripted()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


SCRIPTS = ["right@1"] * 3 + ["right@2"] * 2 + ["right@3"] * 2 + ["never"] * 2 + ["badformat", "fail"]


def scripted_data(d: Path, scripts: list[str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"i{i}", "question": f"item {i} [{s}]", "chosen": f"good {i}", "rejected": f"poor {i}"}
            for i, s in enumerate(scripts)]
    path = d / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(tmp_path: Path, out: Path, sources: list[dict], **sections) -> Path:
    r = {"seed": 100, "output_dir": str(out), "runtime": {"device": "cpu", "progress": False},
         "model": {"path": "unused", "dtype": "float32", "max_pixels": 12544},
         "build": {"sources": sources, "mode": "teacher", "shard_size": 5}}
    for k, v in sections.items():
        r[k] = {**r.get(k, {}), **v}
    path = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return path


def openai_engine(url: str, **kw) -> dict:
    return {"kind": "openai", "base_url": url, "model_name": "scripted", "max_retries": 0, "concurrency": 4, **kw}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_teacher_attempts_failures_cache_and_resume_against_a_scripted_endpoint(cli, scripted, tmp_path):
    data = scripted_data(tmp_path / "d", SCRIPTS)
    out = tmp_path / "o"
    r = recipe(tmp_path, out, [{"name": "s", "format": "jsonl", "path": str(data)}], engine=openai_engine(scripted.url))
    proc = cli("build-data", "--recipe", r)
    # the endpoint failure: exit 2, recorded per sample, not an attempt
    assert proc.returncode == 2 and "incomplete" in proc.stderr and "teacher: 1" in proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    t = m["teacher"]
    assert t["attempts_needed"] == {"1": 4, "2": 2, "3": 2, "never": 2} and t["failed"] == 1 and not m["complete"]
    assert t["right_bad_format"] == 1
    fails = lines(out / "failures.jsonl")
    assert [(f["stage"], f["attempt"]) for f in fails] == [("teacher", 1)] and "http_500" in fails[0]["error"]
    # calls: right@1 ×1, right@2 ×2, right@3 ×3, never ×3, badformat ×1, fail ×1 (its one try, no retries)
    assert sum(scripted.hits.values()) == 3 + 2 * 2 + 2 * 3 + 2 * 3 + 1 + 1
    sft, rl = lines(out / "sft.jsonl"), lines(out / "rl.jsonl")
    # SFT: right and well-formed, easy → hard; target = the right attempt's text
    assert [x["meta"]["teacher"]["attempts_needed"] for x in sft] == [1, 1, 1, 2, 2, 3, 3]
    for x in sft:
        assert x["meta"]["target"] == f"<think>t</think><answer>{x['label']}</answer>" and x["meta"]["prompt"] == "r1reward"
        assert x[f"response{x['label']}"].startswith("good")
    # RL: needed >= 2 attempts, then never right, easy → hard
    assert [x["meta"]["teacher"]["attempts_needed"] for x in rl] == [2, 2, 3, 3, None, None]
    # what sft reads: the sft set (target in meta.target) and the shard folder
    from r1rm.data.training_sets import read_items

    items = read_items([str(out / "sft.jsonl")], image_root=None, target_field="target")
    assert [i.target for i in items] == [x["meta"]["target"] for x in sft]
    assert len(read_items([str(out)], image_root=None, target_field=None)) == 11
    log = lines(out / "teacher.jsonl")
    assert len(log) == 10 and Counter(x["status"] for x in log) == {"right": 8, "never": 2}
    assert all(len(x["attempts"]) == (x["attempts_needed"] or 3) for x in log)

    # rerun with the endpoint healed: only the failed request is made again
    scripted.failing = False
    before = sum(scripted.hits.values())
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0, proc.stderr
    assert sum(scripted.hits.values()) - before == 1 and "reusing" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["teacher"]["attempts_needed"]["1"] == 5 and m["teacher"]["failed"] == 0
    assert not (out / "failures.jsonl").exists()
    sft, rl = (out / "sft.jsonl").read_text(), (out / "rl.jsonl").read_text()
    assert len(sft.splitlines()) == 8 and len({json.loads(x)["uid"] for x in sft.splitlines()}) == 8

    # a crash in the middle of a cache write: the cut line is dropped, only that request is paid again
    cache = out / "teacher_cache.jsonl"
    body = cache.read_bytes()
    n_entries = len(body.splitlines())
    cache.write_bytes(body[: len(body) - 25])
    before = sum(scripted.hits.values())
    assert cli("build-data", "--recipe", r).returncode == 0
    assert sum(scripted.hits.values()) - before == 1
    assert len(cache.read_bytes().splitlines()) == n_entries
    assert (out / "sft.jsonl").read_text() == sft and (out / "rl.jsonl").read_text() == rl

    # nothing left to do: no call at all
    before = sum(scripted.hits.values())
    assert cli("build-data", "--recipe", r).returncode == 0 and sum(scripted.hits.values()) == before


def test_teacher_killed_mid_run_resumes_without_repeating_calls(cli, scripted, tmp_path):
    """Two SIGKILLs in a row, each at a random moment of the teacher loop (after a random number
    of endpoint hits, then a random part of a request's latency), then a run to the end: the
    outputs equal an uninterrupted run's, every request is cached once, and only the requests in
    flight at a kill are asked again (R1RM_KILL_SEED replays the moments)."""
    from killing import kill_rng, run_and_kill

    scripted.delay_s = 0.15
    scripted.failing = False
    scripts = ["right@2"] * 12
    data = scripted_data(tmp_path / "d", scripts)

    def teacher_recipe(out: Path) -> Path:
        return recipe(tmp_path, out, [{"name": "s", "format": "jsonl", "path": str(data)}],
                      engine=openai_engine(scripted.url, concurrency=2), build={"chunk_size": 2})

    full = tmp_path / "full"
    proc = cli("build-data", "--recipe", teacher_recipe(full))
    assert proc.returncode == 0, proc.stderr
    assert sum(scripted.hits.values()) == 24 and set(scripted.hits.values()) == {1}  # 12 items x 2 attempts
    outputs = ("sft.jsonl", "rl.jsonl", "teacher.jsonl")
    want = {name: (full / name).read_text() for name in outputs}
    assert len(want["sft.jsonl"].splitlines()) == len(want["rl.jsonl"].splitlines()) == 12

    scripted.hits.clear()
    out = tmp_path / "o"
    r = teacher_recipe(out)

    def cached_keys() -> list[str]:
        p = out / "teacher_cache.jsonl"
        text = p.read_bytes() if p.exists() else b""
        return [json.loads(x)["key"] for x in text.split(b"\n")[:-1]]  # newline-ended lines: complete

    kills = []
    for attempt in range(2):
        rng = kill_rng("teacher", attempt)
        before = sum(scripted.hits.values())
        n = rng.randint(1, max(1, 24 - len(set(cached_keys()))))  # kill after the n-th request of this run ...
        delay = rng.uniform(0.0, 0.2)  # ... and a random part of its 0.15 s latency (or just after it)
        kills.append(run_and_kill(["build-data", "--recipe", r], label="teacher", attempt=attempt, delay_s=delay,
                                  trigger=lambda n=n, before=before: sum(scripted.hits.values()) >= before + n,
                                  note=f"hit {n} of this run + ", timeout_s=120,
                                  left=lambda: f"{len(cached_keys())} cached, manifest {(out / 'manifest.json').exists()}"))
        why = "\n".join(map(str, kills))
        assert kills[-1].killed or kills[-1].returncode == 0, f"{why}\n{kills[-1].stderr_tail}"
        keys = cached_keys()
        assert len(keys) == len(set(keys)) <= 24, why
        for name in outputs:  # an output is there complete, or not at all
            assert not (out / name).exists() or (out / name).read_text() == want[name], (name, why)
        if (out / "manifest.json").exists():  # nothing presented as complete before it is
            assert json.loads((out / "manifest.json").read_text())["complete"], why
            assert all((out / name).exists() for name in outputs), why
    proc = cli("build-data", "--recipe", r)
    why = "\n".join(map(str, kills))
    assert proc.returncode == 0, f"{why}\n{proc.stderr}"
    # 24 distinct requests; a kill repeats at most the 2 in flight (build.chunk_size) when it struck
    n_killed = sum(k.killed for k in kills)
    total = sum(scripted.hits.values())
    assert 24 <= total <= 24 + 2 * n_killed, (total, why)
    assert len(scripted.hits) == 24 and all(v <= 1 + n_killed for v in scripted.hits.values()), why
    keys = cached_keys()
    assert len(keys) == len(set(keys)) == 24, why
    for name in outputs:  # no record lost or duplicated: the uninterrupted run's outputs, byte for byte
        assert (out / name).read_text() == want[name], (name, why)
    m_full, m_out = (json.loads((d / "manifest.json").read_text()) for d in (full, out))
    assert m_out["complete"] and m_out["teacher"] == m_full["teacher"], why


def test_cmkd_keeps_the_most_confident_right_chain(cli, scripted, tmp_path):
    scripted.failing = False
    # each item's script names its chains: (text with GOOD/BAD placeholders, mean logprob)
    good = "<type>image understanding</type><think>{}</think><answer>GOOD</answer>"
    scripted.chains = {
        "pick": [(good.format("low"), -2.0), (good.format("high"), -0.5), ("<type>x</type><think>w</think><answer>BAD</answer>", -0.1),
                 ("<answer>GOOD</answer>", -0.01)],
        "none": [("<type>x</type><think>w</think><answer>BAD</answer>", -0.1), ("no format GOOD", -0.2)] * 2,
    }
    from PIL import Image

    d = tmp_path / "d"
    d.mkdir()
    rows = []
    for i, s in enumerate(["pick", "pick", "none"]):
        Image.new("RGB", (40, 40), ["red", "blue", "green"][i]).save(d / f"{i}.png")
        rows.append({"id": f"c{i}", "question": f"item {i} [{s}]", "chosen": f"good {i}", "rejected": f"poor {i}",
                     "image": f"{i}.png", "caption": f"A {['red', 'blue', 'green'][i]} square."})
    rows.append({"id": "t", "question": "item 9 [pick]", "chosen": "good", "rejected": "poor", "caption": "text only"})
    rows.append({"id": "nc", "question": "item 8 [pick]", "chosen": "good", "rejected": "poor", "image": "0.png"})
    (d / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    r = recipe(tmp_path, out, [{"name": "c", "format": "jsonl", "path": str(d / "c.jsonl")}],
               engine=openai_engine(scripted.url), data={"prompt": "msrl"},
               build={"mode": "cmkd", "cmkd": {"n": 4}, "max_reject_rate": 0.25})
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0, proc.stderr
    # an item without an image (not applicable: not counted against max_reject_rate) or without a caption
    assert {(x["line"], x["reason"]) for x in lines(out / "rejects.jsonl")} == {(4, "no_visual"), (5, "missing_caption")}
    sft = lines(out / "sft.jsonl")
    m = json.loads((out / "manifest.json").read_text())["cmkd"]
    assert m["selected"] == 2 and m["no_correct_chain"] == 1 and m["chains"] == 12
    assert m["chains_bad_format"] == 4 and m["chains_wrong_answer"] == 4 and m["chains_without_logprob"] == 0
    for x in sft:
        assert x["modality"] == "image" and x["images"] and x["meta"]["write_caption"] is True
        assert x["meta"]["target"] == f"<caption>{x['caption']}</caption>" + good.format("high").replace("GOOD", str(x["label"]))
        assert x["meta"]["cmkd"]["mean_logprob"] == pytest.approx(-0.5)
    # the chains were sampled on the caption version: no image was sent
    assert sum(scripted.hits.values()) == 3
    from r1rm.data.training_sets import read_items

    items = read_items([str(out / "sft.jsonl")], image_root=None, target_field="target")
    assert len(items) == 2 and all(i.rec.modality == "image" and i.target.startswith("<caption>") for i in items)


# ---------------------------------------------------------------- with the tiny model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0))


def tiny_sections(tiny: str) -> dict:
    return {"model": {"path": tiny}, "generation": {"max_new_tokens": 4}, "engine": {"kind": "hf", "batch_size": 8}}


def test_teacher_with_the_tiny_hf_model_caches_and_resumes(cli, tiny, tmp_path):
    out = tmp_path / "o"
    r = recipe(tmp_path, out, [{"name": "syn", "format": "synthetic", "n": 4, "modality": "image"}],
               **tiny_sections(tiny), build={"teacher": {"attempts": 2}})
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())["teacher"]
    # a random tiny model is never right: two attempts each, all in the RL set
    assert m["attempts_needed"] == {"1": 0, "2": 0, "never": 4} and m["rl"]["rows"] == 4 and m["sft"]["rows"] == 0
    assert "'engine_requests_this_run': 8" in proc.stdout
    cached = lines(out / "teacher_cache.jsonl")
    assert len(cached) == 8 and Counter(x["attempt"] for x in cached) == {1: 4, 2: 4}
    rl = (out / "rl.jsonl").read_text()
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0 and "'engine_requests_this_run': 0" in proc.stdout
    assert (out / "rl.jsonl").read_text() == rl and len(lines(out / "teacher_cache.jsonl")) == 8


@pytest.fixture
def served(tiny, tmp_path):
    from conftest import served_cli

    with served_cli(f"model.path={tiny}", f"output_dir={tmp_path / 'srv'}", "runtime.device=cpu",
                    "runtime.progress=false", "generation.max_new_tokens=4", "judge.served_model_name=tiny-judge") as url:
        yield url


def test_teacher_through_a_served_tiny_model(cli, served, tmp_path):
    out = tmp_path / "o"
    r = recipe(tmp_path, out, [{"name": "syn", "format": "synthetic", "n": 3, "modality": "image"}],
               engine={"kind": "openai", "base_url": served, "model_name": "tiny-judge"},
               generation={"max_new_tokens": 4}, build={"teacher": {"attempts": 2}})
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and sum(m["teacher"]["attempts_needed"].values()) == 3
    assert len(lines(out / "teacher.jsonl")) == 3 and len(lines(out / "teacher_cache.jsonl")) >= 3


def test_caption_stage_with_field_captioner_and_replay(cli, scripted, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    rows = []
    for i, c in enumerate(["red", "blue", "green", "yellow", "purple"]):
        # 84 x 56: a size the pixel budget keeps (sides multiples of 28), so the captioner still sees it
        Image.new("RGB", (84 if c == "purple" else 56, 56), c).save(d / f"{c}.png")
        rows.append({"question": f"Which colour {i}?", "chosen": c, "rejected": "none", "image": f"{c}.png"})
    (d / "nocap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    sources = [
        {"name": "syn", "format": "synthetic", "n": 12, "levels": [1, 2], "modality": "image"},  # carries captions
        {"name": "nocap", "format": "jsonl", "path": str(d / "nocap.jsonl")},                 # needs the captioner
        {"name": "text", "format": "synthetic", "n": 30, "levels": [3, 4], "modality": "text", "seed": 7, "role": "replay"},
    ]
    r = recipe(tmp_path, out, sources, engine=openai_engine(scripted.url), data={"prompt": "msrl"},
               build={"mode": "caption", "max_reject_rate": 0.25})
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    rows = [json.loads(x) for f in m["files"] for x in (out / f).read_text().splitlines()]
    main = [x for x in rows if x["source"] != "text"]
    replay = [x for x in rows if x["source"] == "text"]
    # 16 caption samples (the empty caption drops one), floor(16 / 4) = 4 text samples: caption:text exactly 4:1
    assert len(main) == 16 and len(replay) == 4
    assert m["replay"] == {"ratio": 4.0, "n_caption": 16, "wanted": 4, "pool": m["replay"]["pool"], "used": 4}
    assert all(x["modality"] == "caption" and x["caption"] and x["images"] for x in main)
    assert all(x["task_type"] == "image_understanding" for x in main) and all(x["task_type"] == "text" for x in replay)
    syn = [x for x in main if x["source"] == "syn"]
    assert all(x["caption"] == x["meta"]["facts"]["description"].capitalize() + "." for x in syn)
    assert sorted(x["caption"][:10] for x in main if x["source"] == "nocap") == ["A picture "] * 4
    assert m["caption"]["generated_needed"] == 5 and m["caption"]["empty"] == 1 and m["prompt"] == "msrl"
    rej = lines(out / "rejects.jsonl")
    assert [(x["line"], x["reason"]) for x in rej if x["source"] == "nocap"] == [(5, "empty_caption")]
    assert len(lines(out / "caption_cache.jsonl")) == 5 and sum(scripted.hits.values()) == 5
    for name in ("syn", "nocap", "text"):
        lab = m["sources"][name]["label"]
        assert abs(lab.get("1", 0) - lab.get("2", 0)) <= 1
    # rerun after a forced re-clean: the captions come from the cache, the output is the same
    first = (out / "manifest.json").read_text()
    (out / "manifest.json").unlink()
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0 and "'engine_requests': 0" in proc.stdout and sum(scripted.hits.values()) == 5
    assert (out / "manifest.json").read_text() == first


def test_cmkd_end_to_end_with_the_tiny_model(cli, tiny, tmp_path):
    out = tmp_path / "o"
    r = recipe(tmp_path, out, [{"name": "syn", "format": "synthetic", "n": 3, "modality": "image"}],
               **tiny_sections(tiny), data={"prompt": "msrl"}, build={"mode": "cmkd", "cmkd": {"n": 3}})
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())["cmkd"]
    assert m["chains"] == 9 and m["chains_without_logprob"] == 0
    assert m["selected"] + m["no_correct_chain"] + m["no_valid_chain"] == 3
    cached = lines(out / "cmkd_cache.jsonl")
    assert len(cached) == 3 and all(len(x["samples"]) == 3 for x in cached)
    assert all(s["mean_logprob"] is not None and s["mean_logprob"] <= 0 for x in cached for s in x["samples"])
    assert len(lines(out / "sft.jsonl")) == m["selected"]


def test_synthetic_source_with_an_imperfect_teacher_keeps_true_labels(cli, tmp_path):
    """build-data's synthetic source passes the simulated teacher through: every purple scene's
    trace is mistaken (teacher_error 1), every other trace concludes the label."""
    out = tmp_path / "o"
    r = recipe(tmp_path, out, [{"name": "syn", "format": "synthetic", "n": 40, "modality": "image",
                                "teacher_error": 1.0, "teacher_blind": ["purple"]}], build={"mode": "clean"})
    proc = cli("build-data", "--recipe", r)
    assert proc.returncode == 0, proc.stderr
    rows = [x for f in sorted(out.glob("data-*.jsonl")) for x in lines(f)]
    assert len(rows) == 40
    purple = [x for x in rows if x["meta"]["facts"]["correct"] == "purple"]
    assert purple and len(purple) < 40
    for x in rows:
        mistaken = x in purple
        assert x["meta"]["teacher_correct"] is (not mistaken)
        concluded = int(x["meta"]["trace"][-10])  # "...<answer>N</answer>"
        assert concluded == (3 - x["label"] if mistaken else x["label"])
    # the position-biased teacher through the same source: only label-2 purple scenes are mistaken,
    # each concluding Response 1 after the correct observation
    out2 = tmp_path / "o2"
    r2 = recipe(tmp_path, out2, [{"name": "syn", "format": "synthetic", "n": 40, "modality": "image",
                                  "teacher_error": 1.0, "teacher_blind": ["purple"], "teacher_mistake": "position"}],
                build={"mode": "clean"})
    proc = cli("build-data", "--recipe", r2)
    assert proc.returncode == 0, proc.stderr
    rows2 = [x for f in sorted(out2.glob("data-*.jsonl")) for x in lines(f)]
    assert len(rows2) == 40
    # (clean mode may swap a pair to balance labels; its trace is turned round with it)
    from r1rm.data.synthetic import make_examples

    expected = {e.uid for e in make_examples(40, seed=100, teacher_error=1.0, teacher_blind=["purple"],
                                             teacher_mistake="position") if not e.teacher_correct}
    assert expected  # label-2 purple scenes exist in this draw
    for x in rows2:
        mistaken = x["meta"]["teacher_correct"] is False
        assert mistaken == (x["uid"] in expected)
        assert int(x["meta"]["trace"][-10]) == (3 - x["label"] if mistaken else x["label"])
        # the observation is right either way: only the conclusion is the biased teacher's
        assert f"The shape is {x['meta']['facts']['correct']}." in x["meta"]["trace"]


def test_demo_build_recipe_cleans_the_synthetic_files(cli, tmp_path):
    """recipes/tiny/build_demo.yaml (make demo's build-data step) on a small synth output."""
    from r1rm.data.synthetic import write_dataset

    train = write_dataset(tmp_path / "d", 30, seed=3, levels=(1,), modality="image", prefix="train")
    out = tmp_path / "b"
    proc = cli("build-data", "--recipe", "recipes/tiny/build_demo.yaml", f"output_dir={out}", "runtime.progress=false",
               f"build.sources=[{{name: synthetic-colour, format: canonical, path: {train}}}]")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_records"] == 30 and m["counts"]["label"] == {"1": 15, "2": 15}
    rows = [x for f in m["files"] for x in lines(out / f)]
    assert all((out / x["images"][0]).is_file() for x in rows)
