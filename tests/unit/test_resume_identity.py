"""What a resumed training run must share with the run that wrote its checkpoints."""

from pathlib import Path

from r1rm.config import load_config
from r1rm.runtime.checkpoint import identity_changes, run_identity

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
    assert sft["sft.lr"] == 1.5e-3 and "data.eval" not in sft and not any(k.startswith("rl.") for k in sft)
    assert "sft.keep_best" in sft and not any(k in sft for k in ("sft.eval_every_steps", "sft.eval_limit"))


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


def test_the_identity_follows_the_renamed_sections():
    cfg = load_config(ROOT / "recipes/tiny/rl_demo.yaml", ["rl.stress.label_noise=0.1", "rl.consistency.mode=model"])
    rl = run_identity(cfg, "rl")
    assert rl["rl.stress.label_noise"] == 0.1 and rl["rl.stress.outlier_reward"] == -10.0
    assert rl["rl.consistency.mode"] == "model"
    # the checker's endpoint and model were judge.*, outside the identity: they stay free to change
    assert not any(k.startswith("rl.consistency.") and k != "rl.consistency.mode" for k in rl)
    assert not any(k.startswith("judge.") for k in rl)


# a run written before 2026-12-06: its checkpoint's identity and its config.yaml spell the old keys
OLD_IDENTITY = {"seed": 0, "rl.lr": 1e-4, "rl.stress_label_noise": 0.0, "rl.stress_rollout_lag": 0,
                "rl.stress_logprob_mismatch": 0.0, "rl.stress_logprob_gap": 12.0, "rl.stress_reward_outliers": 0.0,
                "rl.stress_outlier_reward": -10.0, "rl.consistency_judge": "rule", "rl.consistency_weight": 0.5}
OLD_JUDGE = {"input": None, "both_orders": True, "engine_kind": "openai", "base_url": None, "model_name": None,
             "api_key_env": "OPENAI_API_KEY", "timeout_s": 60.0, "temperature": 0.1, "retries": 3}


def _old_run(out: Path, identity: dict | None, *, config: bool = True) -> Path:
    import json

    import yaml

    ckpt = out / "checkpoints" / "step-0000002"
    ckpt.mkdir(parents=True)
    state = {"step": 2} if identity is None else {"run": identity, "step": 2}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    if config:
        rl = {k.removeprefix("rl."): v for k, v in OLD_IDENTITY.items() if k.startswith("rl.")}
        (out / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(out), "seed": 0, "rl": rl, "judge": OLD_JUDGE}))
    return ckpt


def _refusal(out: Path, command: str = "rl"):
    import pytest

    from r1rm.errors import ConfigError
    from r1rm.runtime.checkpoint import check_resumable

    with pytest.raises(ConfigError) as e:
        check_resumable(out, {"seed": 0, "rl.lr": 1e-4}, command)
    return e.value


def test_a_run_written_before_the_renames_is_refused_naming_each_key(tmp_path):
    from r1rm.config import RENAMED_KEYS

    ckpt = _old_run(tmp_path, OLD_IDENTITY)
    err = _refusal(tmp_path)
    assert "written before these settings were renamed" in err.what and ckpt.name in err.what
    for old, new in RENAMED_KEYS.items():  # the stress and consistency keys from the identity, judge.* from config.yaml
        if new.startswith("runtime."):  # tracker settings are no part of a run's identity: never a reason to refuse
            assert old not in err.what
            continue
        assert f"{old} -> {new}" in err.what
    assert err.where == str(ckpt / "trainer_state.json")
    assert "new output_dir" in err.fix and "runtime.resume=false" in err.fix


def test_only_the_old_keys_present_are_named(tmp_path):
    _old_run(tmp_path, {"seed": 0, "rl.lr": 1e-4, "rl.stress_label_noise": 0.0}, config=False)
    err = _refusal(tmp_path)
    assert "rl.stress_label_noise -> rl.stress.label_noise" in err.what
    assert "rl.consistency_judge" not in err.what and "judge." not in err.what


def test_a_checkpoint_without_an_identity_is_refused_from_its_config_yaml(tmp_path):
    _old_run(tmp_path, None)
    err = _refusal(tmp_path)
    assert err.where == str(tmp_path / "config.yaml")
    assert "judge.base_url -> rl.consistency.base_url" in err.what
    assert "rl.stress_rollout_lag -> rl.stress.rollout_lag" in err.what


def test_an_sft_run_has_no_renamed_setting_to_lose(tmp_path):
    from r1rm.runtime.checkpoint import check_resumable

    ckpt = _old_run(tmp_path, {"seed": 0, "sft.lr": 3e-3})
    # its config.yaml spells rl.stress_* and judge.*, but an sft resume compares none of them
    assert check_resumable(tmp_path, {"seed": 0, "sft.lr": 3e-3}, "sft") == ckpt
