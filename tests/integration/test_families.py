"""Every VLM family r1rm builds a tiny replica of (r1rm.models.families): eval in both orders with
images, an SFT step and an RL step through the CLI, with freeze flags and LoRA, and the Qwen-derived
speed-ups (shared prefill, grouped prompt forward) equal to the plain forward for each.

The tiny checkpoints are cached in ~/.cache/r1rm-tests/families (R1RM_TEST_CACHE moves it) under a
hash of the code that writes them and the transformers version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl3_5", "llava_onevision")
REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("R1RM_TEST_CACHE", Path.home() / ".cache" / "r1rm-tests")) / "families"


def _key() -> str:
    import transformers

    h = hashlib.sha256(transformers.__version__.encode())
    for rel in ("r1rm/models/tiny.py", "r1rm/resources/r1reward_prompt.txt"):
        h.update((REPO / rel).read_bytes())
    return h.hexdigest()[:16]


def tiny_family(family: str) -> Path:
    """The tiny `family` checkpoint (seed 0), built once and cached; tests only read it."""
    from r1rm.models.tiny import build_tiny_model

    path = CACHE / _key() / family
    if not (path / "config.json").is_file():
        tmp = path.with_name(f"{family}.tmp{os.getpid()}")
        build_tiny_model(tmp, seed=0, family=family)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from r1rm.data.synthetic import write_dataset

    d = tmp_path_factory.mktemp("data")
    return (write_dataset(d, 8, seed=3, levels=(1,), modality="image", prefix="train"),
            write_dataset(d, 2, seed=5, levels=(1,), modality="image", prefix="heldout"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _parts(family: str, names) -> dict[str, list[str]]:
    """Parameter names of the vision tower, the projector and the language model, by the family's markers."""
    from r1rm.models.families import FAMILIES as REGISTRY

    fam = REGISTRY[family]
    parts: dict[str, list[str]] = {"vision": [], "projector": [], "language": []}
    for n in names:
        proj = any(m in n for m in fam.projector)
        vision = not proj and any(m in n for m in fam.vision)
        parts["projector" if proj else "vision" if vision else "language"].append(n)
    return parts


def _changed(before: dict, after: dict, names: list[str]) -> list[str]:
    return [n for n in names if not torch.equal(before[n], after[n])]


COMMON = ["runtime.device=cpu", "runtime.progress=false", "runtime.report_to=none"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_eval_sft_rl(cli, data, tmp_path, family):
    model = tiny_family(family)
    train, held = data
    base = _weights(model)
    parts = _parts(family, base)
    assert all(parts.values()), {k: len(v) for k, v in parts.items()}

    # eval: both orders, images
    out = tmp_path / "eval"
    proc = cli("eval", f"model.path={model}", f"eval.path={held}", f"output_dir={out}", *COMMON,
               "generation.max_new_tokens=4", "engine.batch_size=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_items"] == 2 and metrics["complete"] is True
    assert {"chosen_first", "chosen_second"} <= set(metrics["accuracy"])
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines() if x.strip()]
    assert sorted(r["order"] for r in rows) == ["chosen_first", "chosen_first", "chosen_second", "chosen_second"]

    # SFT: one step, vision tower frozen, projector and language model trained
    sft = tmp_path / "sft"
    proc = cli("sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={model}", f"data.train=[{train}]",
               f"output_dir={sft}", *COMMON, "runtime.log_every_steps=1", "sft.max_steps=1", "sft.batch_size=2",
               "sft.micro_batch_size=2", "model.freeze_vision_tower=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = [json.loads(x)["loss"] for x in (sft / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert loss and all(torch.isfinite(torch.tensor(v)) for v in loss)
    after = _weights(sft / "model")
    assert after.keys() == base.keys()  # saved in the layout it was loaded from
    assert _changed(base, after, parts["vision"]) == []
    assert _changed(base, after, parts["projector"]) and _changed(base, after, parts["language"])

    # RL: one step, LoRA on the language model, vision tower and projector frozen; rewards made to
    # differ within groups (rl.stress.reward_outliers) so that a random model's update is not zero
    rl = tmp_path / "rl"
    proc = cli("rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={model}", f"data.train=[{train}]",
               "data.eval=[]", f"output_dir={rl}", *COMMON, "rl.max_steps=1", "rl.rollout_batch_size=4",
               "rl.n_samples_per_prompt=2", "rl.train_batch_size=4", "rl.micro_batch_size=2", "rl.max_new_tokens=6",
               "rl.eval_every_steps=0", "rl.save_every_steps=100", "rl.algorithm=grpo", "rl.lr=1e-2",
               "rl.stress.reward_outliers=0.5", "rl.stress.outlier_reward=-1", "model.lora.r=4",
               "model.lora.alpha=8", "model.freeze_vision_tower=true", "model.freeze_projector=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = [json.loads(x) for x in (rl / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert r and r[-1]["step"] == 1 and r[-1]["loss"] == r[-1]["loss"]  # finite, not NaN
    summary = json.loads((rl / "summary.json").read_text())
    assert summary["speedups"] == {"shared_prefill": "on", "grouped_forward": "on"}
    assert summary["grouped_forward"] is True
    from safetensors.torch import load_file

    adapter = load_file(str(rl / "model" / "adapter" / "adapter_model.safetensors"))
    lora_b = [k for k in adapter if "lora_B" in k]
    assert lora_b and any(adapter[k].abs().sum() > 0 for k in lora_b)  # B starts at zero: it was trained
    assert not any(m in k for k in adapter for m in ("vision", "visual", "projector", "merger"))
    merged = _weights(rl / "model")
    assert _changed(base, merged, parts["vision"] + parts["projector"]) == []
    changed = _changed(base, merged, parts["language"])
    assert changed and all(n.endswith("proj.weight") for n in changed)  # only adapted layers moved


@pytest.fixture(scope="module")
def prompts():
    from r1rm.data.synthetic import make_examples, render_image

    exs = make_examples(2, seed=4, levels=(1, 4), modality="image")
    return [
        [{"role": "user", "content": [{"type": "image", "image": render_image(exs[0].scene, 112)},
                                      {"type": "text", "text": exs[0].question}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Scene: a red circle. " + exs[1].question}]}],
    ]


@pytest.mark.parametrize("family", FAMILIES[2:])
def test_speedups_match_plain_forward(family, prompts):
    """Shared prefill (hf engine) and the grouped prompt forward (rl) give the plain forward's
    samples and log-probs: the families' `shared_prefill` / `grouped_forward` are on because of this."""
    from r1rm.engines.base import Request, SamplingParams
    from r1rm.engines.hf import HFEngine
    from r1rm.models.families import FAMILIES as REGISTRY
    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.modelprep import freeze
    from r1rm.runtime.rollout import build_sequence, encode_prompt, grouped_token_logprobs, token_logprobs

    path = tiny_family(family)
    processor = load_processor(str(path))
    model = load_model(str(path), dtype="float32", device="cpu")
    fam = REGISTRY[family]
    assert fam.shared_prefill and fam.grouped_forward
    g = torch.Generator().manual_seed(0)
    groups = [[build_sequence(encode_prompt(processor, m), torch.randint(20, 800, (k,), generator=g).tolist())
               for k in (3, 6)] for m in prompts]
    pad = processor.tokenizer.pad_token_id
    ref, mask, _ = token_logprobs(model, [e for grp in groups for e in grp], pad_id=pad, device="cpu")
    got, mask2, _ = grouped_token_logprobs(model, groups, pad_id=pad, device="cpu")
    assert torch.equal(mask, mask2) and float(ref.detach().abs().sum()) > 1.0
    assert torch.allclose(got * mask, ref * mask, atol=1e-5)

    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=7, logprobs=True)
    requests = [Request(messages=m) for m in prompts]
    shared = HFEngine(model, processor, batch_size=4, share_prefill=True)
    assert shared.share_prefill and shared.speedups == {"shared_prefill": "on"}
    a = shared.generate(requests, params)
    b = HFEngine(model, processor, batch_size=4, share_prefill=False).generate(requests, params)
    assert [[x.token_ids for x in s] for s in a] == [[x.token_ids for x in s] for s in b]
    assert len({tuple(x.token_ids) for x in a[0]}) > 1  # sampled apart, not copies
    for sa, sb in zip(a, b, strict=True):
        for x, y in zip(sa, sb, strict=True):
            assert x.mean_logprob == pytest.approx(y.mean_logprob, abs=1e-5)

    # the family's freeze markers find its vision tower and projector
    counts = freeze(model, vision_tower=True, projector=True)
    parts = _parts(family, dict(model.named_parameters()))
    n = {k: sum(dict(model.named_parameters())[p].numel() for p in v) for k, v in parts.items()}
    assert counts == {"frozen": n["vision"] + n["projector"], "trainable": n["language"]}


def test_unlisted_family_runs_with_speedups_off(tmp_path):
    """A model_type r1rm has not tested: both speed-ups off, and why; the engine says so once."""
    from types import SimpleNamespace

    from r1rm.models.families import family_of, speedups

    cfg = SimpleNamespace(model_type="gemma3")
    assert family_of(cfg) is None
    state = speedups(cfg)
    assert state["shared_prefill"].startswith("off (family gemma3") and state["grouped_forward"] == state["shared_prefill"]
    assert family_of(SimpleNamespace(config=SimpleNamespace(model_type="internvl"))).name == "internvl3_5"


def test_budget_maps_onto_each_processor():
    """model.min_pixels / max_pixels reach each family's processor in its own terms."""
    from r1rm.models.loading import load_processor

    q2 = load_processor(str(tiny_family("qwen2_5_vl")), min_pixels=3136, max_pixels=50176, video_max_frames=8)
    assert (q2.image_processor.size.longest_edge, q2.video_processor.size.longest_edge) == (50176, 50176)
    # Qwen3-VL's video longest_edge bounds all frames of a clip together: 8 frames (+1 for the even pad)
    q3 = load_processor(str(tiny_family("qwen3_vl")), min_pixels=4096, max_pixels=50176, video_max_frames=8)
    assert q3.image_processor.size.longest_edge == 50176
    assert q3.video_processor.size.longest_edge == 50176 * 9 and q3.video_processor.size.shortest_edge == 4096
    # ... and takes r1rm's 8 frames as they are: 4 temporal patches of 2 frames, each frame within max_pixels
    from PIL import Image

    from r1rm.data.media import MediaBudget, budget_factor, prepare_visuals

    q3 = load_processor(str(tiny_family("qwen3_vl")), min_pixels=3136, max_pixels=12544, video_max_frames=8)
    frames = [Image.new("RGB", (112, 112), (30 * i, 0, 0)) for i in range(8)]
    video = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "hi"}]}]
    budget = MediaBudget(min_pixels=3136, max_pixels=12544, video_max_frames=8, factor=budget_factor(q3))
    enc = q3.apply_chat_template(prepare_visuals(video, budget), add_generation_prompt=True, tokenize=True,
                                 return_dict=True, return_tensors="pt")
    assert budget.factor == 32 and enc["video_grid_thw"].tolist() == [[4, 6, 6]]  # 96x96 px: 12544 -> 9216
    # InternVL: tiles of the tower's side (56 in the tiny model, 448 released); max_patches from the budget
    iv = load_processor(str(tiny_family("internvl3_5")), min_pixels=3136, max_pixels=3 * 56 * 56)
    assert iv.image_processor.max_patches == 3
    msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (224, 112))},
                                         {"type": "text", "text": "hi"}]}]
    enc = iv.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                 return_tensors="pt")
    assert 2 <= enc["pixel_values"].shape[0] <= 4  # at most 3 tiles + the thumbnail


def _hub_cache(home: Path, repo: str, snapshots: dict[str, Path]) -> None:
    """A hub cache under `home` as the hub client lays it out: one snapshot per ref (refs/NAME → commit)."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    for i, (ref, src) in enumerate(snapshots.items()):
        commit = f"{i + 1:040x}"
        shutil.copytree(src, folder / "snapshots" / commit)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)


@pytest.mark.slow
def test_revision_reaches_every_load_from_a_hub_cache(tmp_path):
    """model.revision picks the snapshot a ref names, offline, for the model and the processor alike."""
    import subprocess
    import sys

    _hub_cache(tmp_path / "hf", "org/judge", {"main": tiny_family("qwen3_vl"), "v1": tiny_family("internvl3_5")})
    script = ("from r1rm.config import Config; from r1rm.models.loading import load_model_for, load_processor_for\n"
              "for rev in ('main', 'v1'):\n"
              "    m = Config.model_validate({'model': {'path': 'org/judge', 'revision': rev}}).model\n"
              "    print(type(load_model_for(m, device='cpu')).__name__, type(load_processor_for(m)).__name__)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert got.stdout.split("\n")[:2] == ["Qwen3VLForConditionalGeneration Qwen3VLProcessor",
                                          "InternVLForConditionalGeneration InternVLProcessor"], got.stderr[-2000:]


def test_trust_remote_code_and_revision_pass_to_every_from_pretrained(monkeypatch):
    import transformers

    from r1rm.config import Config
    from r1rm.models import loading

    seen = []

    def record(name):
        def fake(path, **kw):
            seen.append((name, kw.get("revision"), kw.get("trust_remote_code")))
            raise OSError("stop here")
        return fake

    for cls in ("AutoModelForImageTextToText", "AutoProcessor", "AutoConfig"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", record(cls))
    m = Config.model_validate({"model": {"path": "org/judge", "revision": "abc", "trust_remote_code": True}}).model
    for load in (lambda: loading.load_model_for(m, device="cpu"), lambda: loading.load_processor_for(m),
                 lambda: loading.check_model(m.path, revision=m.revision, trust_remote_code=m.trust_remote_code)):
        with pytest.raises(Exception, match="stop here"):
            load()
    assert loading.model_config(m) is None
    assert seen == [(c, "abc", True) for c in ("AutoModelForImageTextToText", "AutoProcessor", "AutoConfig",
                                               "AutoConfig")]


def test_llava_images_of_different_tile_counts_batch_together():
    """LLaVA-OneVision cuts images of other aspect ratios into other tile counts: SFT / RL collation pads
    them to the batch's most, and each sample's logits equal its unbatched forward."""
    from PIL import Image

    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.batches import collate, encode_sft

    path = str(tiny_family("llava_onevision"))
    processor, model = load_processor(path), load_model(path, dtype="float32", device="cpu")

    def enc(w: int, h: int):
        msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (w, h), (200, 0, 0))},
                                             {"type": "text", "text": "Which colour?"}]}]
        return encode_sft(processor, msgs, "red", max_len=999)

    wide, small = enc(112, 112), enc(28, 56)
    assert wide.inputs["pixel_values"].shape[1] > small.inputs["pixel_values"].shape[1]
    batch = collate([wide, small], pad_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():
        both = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        alone = model(**small.inputs).logits
    assert torch.allclose(both[1, : alone.shape[1]], alone[0], atol=1e-4)
