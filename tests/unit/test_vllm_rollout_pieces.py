"""The pure pieces of vLLM rollouts (no vLLM here): EOS left out of vLLM's token ids as the hf engine
leaves it out, one seed per request, the placement keyword arguments, the trainer → Hugging Face
parameter names (LoRA merged), the per-token stale-weights check."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from r1rm.engines.base import SamplingParams
from r1rm.engines.vllm import from_vllm_output, per_request_sampling, placement_kwargs
from r1rm.runtime.weight_sync import StaleWeightsError, check_gap, default_tol, hf_name, trainer_weights

EOS = 7


def _completion(ids, *, finish="stop", stop_reason=None):
    lps = [{t: SimpleNamespace(logprob=-0.1 * (k + 1), decoded_token=str(t))} for k, t in enumerate(ids)]
    return SimpleNamespace(text="x", token_ids=ids, logprobs=lps, finish_reason=finish, stop_reason=stop_reason)


def test_vllm_token_ids_end_without_the_eos_that_stopped_them():
    # vLLM's token ids hold the EOS (stop_reason None) or stop token id (stop_reason that id) that ended the
    # completion; r1rm's, like the hf engine's, do not: an RL sequence gets EOS appended once
    eos, stop_id, cut, stop_str = from_vllm_output(SimpleNamespace(outputs=[
        _completion([3, 4, EOS]), _completion([3, 4, 9], stop_reason=9), _completion([3, 4, 5], finish="length"),
        _completion([3, 4], stop_reason="</answer>")]))
    assert (eos.token_ids, eos.finished) == ([3, 4], True)
    assert eos.mean_logprob == pytest.approx((-0.1 - 0.2) / 2)  # the EOS's log-prob left out too
    assert stop_id.token_ids == [3, 4]
    assert (cut.token_ids, cut.finished) == ([3, 4, 5], False)
    assert stop_str.token_ids == [3, 4]  # a stop string is not in the token ids: nothing to drop
    one = from_vllm_output(SimpleNamespace(outputs=[_completion([EOS])]))[0]
    assert one.token_ids == [] and one.finished and one.mean_logprob is None


def test_every_request_gets_its_own_seed():
    kws = per_request_sampling(SamplingParams(temperature=1.0, n=4, seed=100), 3)
    assert [k["seed"] for k in kws] == [100, 104, 108]  # vLLM seeds sample j of a request seed + j
    assert {k["n"] for k in kws} == {4}
    assert [k["seed"] for k in per_request_sampling(SamplingParams(seed=None), 2)] == [None, None]


def test_placement_one_engine_per_process():
    assert placement_kwargs(1) == {}
    assert placement_kwargs(8) == {"distributed_executor_backend": "external_launcher"}


def test_hugging_face_names_of_trainer_parameters():
    assert hf_name("model.language_model.layers.0.mlp.up_proj.weight") == "model.language_model.layers.0.mlp.up_proj.weight"
    assert hf_name("base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.bias") == \
        "model.language_model.layers.0.self_attn.q_proj.bias"
    assert hf_name("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert hf_name("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
    assert hf_name("base_model.model.lm_head.original_module.weight") is None


class _Acc:
    """One process, no DeepSpeed: what trainer_weights needs of an Accelerator."""

    state = SimpleNamespace(deepspeed_plugin=None)

    @staticmethod
    def unwrap_model(m):
        return m


def _tiny_lm():
    torch.manual_seed(0)
    m = torch.nn.Module()
    m.model = torch.nn.Module()
    m.model.embed = torch.nn.Embedding(10, 4)
    m.model.q_proj = torch.nn.Linear(4, 4)
    m.model.v_proj = torch.nn.Linear(4, 4, bias=False)
    m.lm_head = torch.nn.Linear(4, 10, bias=False)
    m.lm_head.weight = m.model.embed.weight  # tied: sent once
    return m


def test_trainer_weights_every_parameter_once_and_lora_merged():
    peft = pytest.importorskip("peft")
    m = _tiny_lm()
    plain = dict(trainer_weights(_Acc, m))
    assert list(plain) == ["model.embed.weight", "model.q_proj.weight", "model.q_proj.bias", "model.v_proj.weight"]
    lora = peft.get_peft_model(m, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_()
    merged = dict(trainer_weights(_Acc, lora))
    assert list(merged) == list(plain)  # base names, adapter tensors never sent
    x = torch.randn(3, 4)
    for name in ("q_proj", "v_proj"):  # the merged weight computes what base + adapter compute
        layer = getattr(lora.base_model.model.model, name)
        want = layer(x)
        got = x @ merged[f"model.{name}.weight"].T + (merged[f"model.{name}.bias"] if name == "q_proj" else 0)
        assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(merged[f"model.{name}.weight"], plain[f"model.{name}.weight"])


def test_the_check_takes_the_largest_gap_so_errors_cannot_cancel():
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    ones = torch.ones(1, 3)
    assert check_gap(lp, lp + 1e-5, ones, tol=1e-4) == pytest.approx(1e-5, rel=1e-2)
    # +0.3 and -0.3: a mean of the signed gaps is 0, a mean log-prob of the sample moves by 0 too
    with pytest.raises(StaleWeightsError, match="up to 0.3"):
        check_gap(lp, lp + torch.tensor([[0.3, -0.3, 0.0]]), ones, tol=0.05)
    with pytest.raises(StaleWeightsError):
        check_gap(lp, torch.full_like(lp, math.nan), ones, tol=0.05)
    assert default_tol("float32") == 1e-3 and default_tol("bfloat16") == 0.5


@pytest.mark.parametrize("recipe", ["r1reward/rl.yaml", "msrl/rl_stage1_text.yaml", "msrl/rl_stage2_caption.yaml",
                                    "msrl/rl_stage4_multimodal.yaml"])
def test_shipped_rl_recipes_place_one_engine_per_process(recipe):
    from pathlib import Path

    from r1rm.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes" / recipe, [])
    assert (cfg.rl.rollout_engine, cfg.engine.tensor_parallel_size, cfg.rl.vllm_sleep_level) == ("vllm", 1, 1)
    assert cfg.model.dtype == "bfloat16"  # the engine runs in the trainer's dtype


def test_tensor_parallel_rollout_engines_are_refused(tmp_path):
    from r1rm.commands.rl import _plan
    from r1rm.config import load_config
    from r1rm.data.synthetic import write_dataset
    from r1rm.errors import ConfigError

    train = write_dataset(tmp_path, 4, seed=3, levels=(1,), modality="text", prefix="train")
    over = [f"data.train=[{train}]", "rl.rollout_batch_size=2", "rl.train_batch_size=2", "rl.micro_batch_size=1",
            "rl.rollout_engine=vllm"]
    assert _plan(load_config("recipes/tiny/rl.yaml", over)).total_rollouts > 0
    with pytest.raises(ConfigError, match="tensor parallel 1"):
        _plan(load_config("recipes/tiny/rl.yaml", [*over, "engine.tensor_parallel_size=2"]))
