"""The vLLM weight push under DeepSpeed ZeRO-3 on 2 CPU processes (no vLLM needed): every process
receives every parameter whole, equal to the checkpoint's, while the push gathers one module at a
time — never the whole model on one process (runtime.weight_sync.trainer_weights)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, sys
import torch
import r1rm.runtime.accel as accel
from r1rm.models.loading import load_model
from r1rm.runtime.weight_sync import trainer_weights

model_dir, ds_json, out, lora = sys.argv[1:5]


def with_lora(model):
    """LoRA on q/v (peft), its B filled so that the adapters change the weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    return model


# the reference, built before DeepSpeed is set up (after it, from_pretrained partitions at load): the
# checkpoint's weights, or with LoRA the weights peft's own merge gives
ref = load_model(model_dir, dtype="float32", device="cpu")
ref = (with_lora(ref).merge_and_unload() if lora == "lora" else ref).state_dict()
acc = accel.make_accelerator(deepspeed_config=ds_json, grad_accum=1, micro_batch=1, max_grad_norm=1.0, device="cpu")
model = load_model(model_dir, dtype="float32", device="cpu")
model = with_lora(model) if lora == "lora" else model
model, _ = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
params = list(acc.unwrap_model(model).parameters())
partitioned = sum(p.data.numel() == 0 for p in params)
gathers = []  # per gather: parameters asked for, parameters whole on this process while it lasts
real = accel.gathered_params

class spy:
    def __init__(self, acc, asked):
        self.ctx, self.asked = real(acc, asked), asked
    def __enter__(self):
        self.ctx.__enter__()
        gathers.append([len(self.asked), sum(p.data.numel() > 0 for p in params)])
    def __exit__(self, *a):
        return self.ctx.__exit__(*a)

accel.gathered_params = spy
got = dict(trainer_weights(acc, model))
old = acc.get_state_dict(model)  # what the push read before: DeepSpeed consolidates it on process 0 only
whole_after = sum(p.data.numel() > 0 for p in params)
json.dump({"params": len(params), "partitioned": partitioned, "gathers": gathers, "whole_after": whole_after,
           "names": sorted(got) == sorted(ref), "old_state_dict": None if old is None else len(old),
           "max_diff": max(float((got[k] - ref[k]).abs().max()) for k in ref),
           "has_lora": any("lora" in n for n, _ in acc.unwrap_model(model).named_parameters())},
          open(f"{out}.{acc.process_index}", "w"))
'''


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (pip install 'r1rm[deepspeed]')")
@pytest.mark.parametrize("lora", ["full", "lora"])
def test_zero3_push_gathers_a_module_at_a_time_and_every_process_gets_all(tiny, tmp_path, lora):
    ds = json.loads((REPO / "recipes/deepspeed/zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition every parameter, small ones too
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    (tmp_path / "push.py").write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "push.py"), str(tiny), str(tmp_path / "zero3.json"), str(tmp_path / "result"), lora]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"result.{rank}").read_text())
        assert r["partitioned"] == r["params"] > 50  # ZeRO-3: no process holds any parameter whole
        # every parameter, whole, equal to the checkpoint's (LoRA: merged as peft merges, under the base names)
        assert r["names"] and r["max_diff"] <= (1e-6 if lora == "lora" else 0.0) and r["has_lora"] == (lora == "lora")
        assert r["whole_after"] == 0  # each gather released
        # the state dict the push used to read: every tensor on process 0, None on process 1
        if lora == "full":
            assert r["old_state_dict"] == (r["params"] if rank == 0 else None)
        # one gather per module with parameters (a LoRA layer with its adapters: base weight, bias, A, B);
        # whole while it lasts: that module's and nothing else
        assert len(r["gathers"]) > 20 and all(asked == whole <= 4 for asked, whole in r["gathers"]), r["gathers"]
