"""What a resumed training run must share with the run that wrote its checkpoints."""

from pathlib import Path

from r1rm.config import identity_changes, load_config, run_identity

ROOT = Path(__file__).resolve().parents[2]


def test_identity_holds_the_trajectory_settings_not_the_free_ones():
    cfg = load_config(ROOT / "recipes/tiny/rl_demo.yaml")
    rl = run_identity(cfg, "rl")
    assert rl["rl.lr"] == 1e-4 and rl["model.path"] == "out/demo/sft/model" and rl["seed"] == cfg.seed
    assert rl["data.train"] == ["out/demo/build"] and rl["data.eval"] == ["out/demo/data/val.jsonl"]
    for free in ("rl.max_steps", "rl.eval_every_steps", "rl.save_every_steps", "rl.keep_last", "output_dir",
                 "runtime.progress", "model.gradient_checkpointing"):
        assert free not in rl
    assert not any(k.startswith(("sft.", "eval.", "build.", "data.synthetic.")) for k in rl)
    sft = run_identity(load_config(ROOT / "recipes/tiny/sft_demo.yaml"), "sft")
    assert sft["sft.lr"] == 3e-3 and "data.eval" not in sft and not any(k.startswith("rl.") for k in sft)


def test_changes_name_each_setting_with_both_values():
    cfg = load_config(ROOT / "recipes/tiny/rl_demo.yaml")
    saved = run_identity(cfg, "rl")
    assert identity_changes(saved, saved) == []
    longer = run_identity(load_config(ROOT / "recipes/tiny/rl_demo.yaml", ["rl.max_steps=40", "runtime.progress=false"]), "rl")
    assert identity_changes(saved, longer) == []
    other = run_identity(load_config(ROOT / "recipes/tiny/rl_demo.yaml", ["rl.lr=1e-5", "data.train=[x.jsonl]"]), "rl")
    assert identity_changes(saved, other) == ["data.train: ['out/demo/build'] -> ['x.jsonl']", "rl.lr: 0.0001 -> 1e-05"]
    # a key only one side records: another r1rm version's schema, not a change of the run
    assert identity_changes({**saved, "rl.new_option": 1}, saved) == []


def test_data_fingerprint_follows_the_bytes(tmp_path):
    from r1rm.data.training_sets import data_fingerprint

    a = tmp_path / "a.jsonl"
    a.write_text('{"x": 1}\n')
    first = data_fingerprint([str(a)])
    assert len(first) == 64 and data_fingerprint([str(a)]) == first
    a.write_text('{"x": 2}\n')
    assert data_fingerprint([str(a)]) != first
    # a build-data folder: its manifest's shards; one missing, or no such path: None (the read reports it)
    d = tmp_path / "built"
    d.mkdir()
    (d / "data-00000.jsonl").write_text('{"x": 2}\n')
    (d / "manifest.json").write_text('{"files": ["data-00000.jsonl"]}')
    assert data_fingerprint([str(d)]) == data_fingerprint([str(a)])
    (d / "manifest.json").write_text('{"files": ["data-00000.jsonl", "data-00001.jsonl"]}')
    assert data_fingerprint([str(d)]) is None and data_fingerprint([str(tmp_path / "nope.jsonl")]) is None


def test_a_corrupt_eval_record_is_a_clear_error(tmp_path):
    import pytest

    from r1rm.errors import ConfigError
    from r1rm.runtime.checkpoint import check_same_eval

    (tmp_path / "generations.jsonl").write_text('{"key": [1]}\n')
    (tmp_path / "run.json").write_text('{"model.path": ')
    with pytest.raises(ConfigError, match="not a run record") as e:
        check_same_eval(tmp_path, {"model.path": "m"}, [tmp_path / "generations.jsonl"])
    assert e.value.where == str(tmp_path / "run.json")
    (tmp_path / "run.json").write_text('{"model.path": "m"}')
    check_same_eval(tmp_path, {"model.path": "m"}, [tmp_path / "generations.jsonl"])  # the same eval: no error
