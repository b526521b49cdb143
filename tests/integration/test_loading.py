"""Model / processor loading: pixel bounds applied, clear errors for bad paths, the tiny-model command."""

import pytest

from r1rm.errors import ConfigError, ModelLoadError
from r1rm.models.loading import load_model, load_processor, resolve_dtype
from r1rm.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=3)


def test_pixel_bounds_reach_the_image_processor(tiny):
    p = load_processor(str(tiny), min_pixels=3136, max_pixels=6272)
    assert (p.image_processor.size.shortest_edge, p.image_processor.size.longest_edge) == (3136, 6272)
    default = load_processor(str(tiny))
    assert default.image_processor.size.longest_edge == 12544


def test_load_model_cpu_float32(tiny):
    import torch

    m = load_model(str(tiny), device="cpu")
    assert next(m.parameters()).dtype == torch.float32 and not m.training
    assert resolve_dtype("auto", "cuda") == torch.bfloat16


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no model checkpoint at .*nowhere.*\(no such folder;"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="config.json missing"):
        load_processor(str(tmp_path))
    with pytest.raises(ConfigError, match="model.path is empty"):
        load_model("")


def test_a_missing_folder_names_the_nearest_one_that_exists(tiny, tmp_path):
    """A path no hub id can be (two slashes or more) that does not exist: the error says so and names
    the nearest existing folder above it, and whether that one is a checkpoint (a user who typed
    .../step-N/model for .../step-N), instead of the hub's "Repo id must be in the form" message."""
    with pytest.raises(ModelLoadError) as e:
        load_model(f"{tiny}/model")
    assert f"no such folder; the nearest that exists is '{tiny}', which holds a checkpoint" in str(e.value)
    with pytest.raises(ModelLoadError, match=f"nearest that exists is '{tmp_path}'\\)"):
        load_processor(str(tmp_path / "a" / "b"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelLoadError, match="a file, not a folder"):
        load_model(str(tmp_path / "f"))


def test_cli_names_the_checkpoint_one_folder_up_and_exits_2(cli, tiny, tmp_path):
    """The same through `r1rm eval`: exit 2, the message and its fix, no traceback, no output folder."""
    out = tmp_path / "eval"
    proc = cli("eval", f"model.path={tiny}/model", f"output_dir={out}", "data.eval=[x.jsonl]")
    assert proc.returncode == 2
    assert f"the nearest that exists is '{tiny}', which holds a checkpoint" in proc.stderr
    assert "fix: point model.path" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_tiny_model_command_builds_and_checks(cli, tmp_path):
    proc = cli("tiny-model", tmp_path / "m", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "loaded back offline; judged a synthetic image pair" in proc.stdout
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 5_000_000
