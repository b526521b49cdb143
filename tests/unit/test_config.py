from pathlib import Path

import pytest
import yaml

from r1rm.config import Config, load_config, parse_override, save_config, schema_rows
from r1rm.errors import ConfigError, InputFileError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_follow_the_paper():
    cfg = Config()
    assert cfg.rl.algorithm == "stable_reinforce" and cfg.rl.lr == 1e-6 and cfg.rl.clip_eps == 0.2
    assert cfg.rl.rollout_batch_size == 256 and cfg.rl.train_batch_size == 128 and cfg.rl.kl_coef == 0
    assert cfg.sft.lr == 1e-5 and cfg.sft.batch_size == 256
    assert cfg.model.max_pixels == 640 * 28 * 28
    assert cfg.eval.orders == ["chosen_first", "chosen_second"]


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(None, ["rl.lr=1e-6", "eval.orders=[chosen_first]", "seed=7", "model.path=/m", "rl.kl_coef=0.001"])
    assert cfg.rl.lr == pytest.approx(1e-6) and isinstance(cfg.rl.lr, float)
    assert cfg.eval.orders == ["chosen_first"]
    assert cfg.seed == 7 and cfg.model.path == "/m" and cfg.rl.kl_coef == pytest.approx(1e-3)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_recipe_then_overrides(tmp_path):
    r = write(tmp_path, "seed: 3\nrl:\n  lr: 3.0e-7\n  epochs: 1\n")
    cfg = load_config(r, ["rl.epochs=2"])
    assert cfg.seed == 3 and cfg.rl.lr == pytest.approx(3e-7) and cfg.rl.epochs == 2


def test_unknown_key_in_recipe_names_file_line_and_suggests(tmp_path):
    r = write(tmp_path, "seed: 1\nrl:\n  lr: 1.0e-6\n  lrr: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(r)
    msg = str(e.value)
    assert f"{r}:4" in msg and "unknown key 'rl.lrr'" in msg and "did you mean 'rl.lr'?" in msg


def test_unknown_section_and_override_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'rll'.*did you mean 'rl'"):
        load_config(write(tmp_path, "rll:\n  lr: 1\n"))
    with pytest.raises(ConfigError, match=r"override 'rl.clip_epz=0.1': unknown key 'rl.clip_epz'[\s\S]*did you mean 'rl.clip_eps'"):
        load_config(None, ["rl.clip_epz=0.1"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["seed.x=1"])
    with pytest.raises(ConfigError, match="has no '='"):
        load_config(None, ["rl.lr"])
    with pytest.raises(ConfigError, match="empty key part"):
        load_config(None, ["rl..lr=1"])


def test_wrong_type_and_range_name_the_source(tmp_path):
    r = write(tmp_path, "sft:\n  batch_size: -4\n")
    with pytest.raises(ConfigError) as e:
        load_config(r)
    assert f"{r}:2" in str(e.value) and "sft.batch_size" in str(e.value) and "greater than or equal to 1" in str(e.value)
    with pytest.raises(ConfigError, match=r"override 'rl.lr=fast'.*rl.lr"):
        load_config(None, ["rl.lr=fast"])
    # a blind-spot typo is named with its key before anything runs
    with pytest.raises(ConfigError, match=r"data.synthetic.teacher_blind.*'red', 'green'"):
        load_config(None, ["data.synthetic.teacher_blind=[pink]"])
    # a bad list item given by an override is the override's, even where the recipe sets the section
    r2 = write(tmp_path, "data:\n  synthetic:\n    n: 10\n    teacher_blind: [red]\n")
    with pytest.raises(ConfigError) as e:
        load_config(r2, ["data.synthetic.teacher_blind=[pink]"])
    assert "override 'data.synthetic.teacher_blind=[pink]': data.synthetic.teacher_blind.0" in str(e.value)
    assert f"{r2}:" not in str(e.value)
    with pytest.raises(ConfigError, match=r"override 'data.synthetic.teacher_mistake=lazy'.*'perception' or 'position'"):
        load_config(None, ["data.synthetic.teacher_mistake=lazy"])
    assert load_config(None, ["data.synthetic.teacher_mistake=position"]).data.synthetic.teacher_mistake == "position"


def test_cross_field_checks_say_what_to_change():
    with pytest.raises(ConfigError, match="not divisible by train_batch_size"):
        load_config(None, ["rl.rollout_batch_size=10", "rl.train_batch_size=4"])
    with pytest.raises(ConfigError, match="grpo needs n_samples_per_prompt >= 2"):
        load_config(None, ["rl.algorithm=grpo"])
    with pytest.raises(ConfigError, match="min_pixels .* exceeds max_pixels"):
        load_config(None, ["model.min_pixels=100000", "model.max_pixels=5000"])


def test_bad_yaml_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"r.yaml:[34]: recipe is not valid YAML"):
        load_config(write(tmp_path, "seed: 1\nrl:\n  lr: [1, 2\n  x: 1\n"))
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"))
    with pytest.raises(InputFileError, match="recipe not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"seed: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(bad)


def test_inherit_merges_and_detects_cycles(tmp_path):
    write(tmp_path, "seed: 1\nrl:\n  lr: 1.0e-6\n  epochs: 3\n", "base.yaml")
    child = write(tmp_path, "inherit: base.yaml\nrl:\n  epochs: 1\n", "child.yaml")
    cfg = load_config(child)
    assert cfg.seed == 1 and cfg.rl.lr == pytest.approx(1e-6) and cfg.rl.epochs == 1
    write(tmp_path, "inherit: b.yaml\n", "a.yaml")
    write(tmp_path, "inherit: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_save_config_round_trips(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path / 'o'}", "rl.lr=2e-6", "eval.orders=[chosen_second]"])
    path = save_config(cfg)
    assert path == tmp_path / "o" / "config.yaml"
    again = Config.model_validate(yaml.safe_load(path.read_text()))
    assert again == cfg


def test_schema_rows_have_help_for_every_key():
    rows = schema_rows()
    keys = [r[0] for r in rows]
    assert "rl.lr" in keys and "model.lora.r" in keys and "output_dir" in keys
    missing = [k for k, _, _, h in rows if not h]
    assert not missing, f"config keys without help text: {missing}"


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_validates(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)


def test_there_are_shipped_recipes():
    assert list((REPO / "recipes").rglob("*.yaml"))


def test_a_renamed_key_is_told_its_new_name(tmp_path):
    from r1rm.config import RENAMED_KEYS

    with pytest.raises(ConfigError) as e:
        load_config(None, ["rl.stress_label_noise=0.1"])
    assert "'rl.stress_label_noise' was renamed to rl.stress.label_noise" in e.value.what
    assert e.value.fix == "write rl.stress.label_noise=VALUE"
    with pytest.raises(ConfigError, match="'judge.base_url' was renamed to rl.consistency.base_url"):
        load_config(None, ["judge.base_url=http://127.0.0.1:8001/v1"])
    r = write(tmp_path, "seed: 1\nrl:\n  consistency_judge: rule\n")
    with pytest.raises(ConfigError) as e:
        load_config(r)
    assert f"{r}:3: unknown key 'rl.consistency_judge' (renamed to rl.consistency.mode)" in e.value.what
    # the map names keys that the schema has lost, each to one that it has
    keys = {k for k, *_ in schema_rows()}
    assert not keys & set(RENAMED_KEYS) and set(RENAMED_KEYS.values()) <= keys


def test_a_synthetic_source_reads_the_synthetic_settings_flat():
    from r1rm.config import SourceConfig, SyntheticConfig

    cfg = load_config(None, ["build.sources=[{name: s, format: synthetic, n: 5, levels: [1, 2], teacher_blind: [red]}]"])
    src = cfg.build.sources[0]
    assert (src.n, src.levels, src.teacher_blind, src.modality) == (5, [1, 2], ["red"], "image")
    # the same defaults as data.synthetic, and the fields in the order the build-data manifest records them
    shared = [k for k in SourceConfig.model_fields if k in SyntheticConfig.model_fields]
    assert shared == ["n", "levels", "modality", "image_size", "seed", "teacher_error", "teacher_blind", "teacher_mistake"]
    plain = SourceConfig(name="p", format="jsonl", path="x.jsonl")
    assert {k: getattr(plain, k) for k in shared} == {k: getattr(Config().data.synthetic, k) for k in shared}
    assert list(SourceConfig.model_fields)[:3] == ["name", "format", "path"]
    assert list(SyntheticConfig.model_fields)[:4] == ["n", "n_eval", "n_val", "levels"]
    with pytest.raises(ConfigError, match="source 's': levels must be integers 1-6, got \\[7\\]"):
        load_config(None, ["build.sources=[{name: s, format: synthetic, levels: [7]}]"])
    with pytest.raises(ConfigError, match="teacher_mistake"):
        load_config(None, ["build.sources=[{name: s, format: synthetic, teacher_mistake: lazy}]"])
    assert "n_eval" not in SourceConfig.model_fields
