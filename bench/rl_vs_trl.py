"""Benchmark: `r1rm rl` against TRL's GRPOTrainer (HF-generate mode) on the same job.

Same tiny model (fresh random init, same seed), same prompts (the synthetic task's text
modality rendered with r1rm's R1-Reward prompt and the model's chat template), same group
size, completion length, sampling temperature, micro batch, one optimizer update per
rollout, no KL, no activation checkpointing (TRL turns it on by default), and the same
number of updates. The reward is r1rm's (format + result x
consistency by the rule checker) in both. Reports the median per-step wall time of each after the
first `--warmup` steps, their ratio, and r1rm's non-model overhead (prompt encoding,
rewards, advantages) as a share of its step time. Writes out/bench/rl_vs_trl.json.

TRL is a benchmark-only dependency: `pip install trl` (the bench target installs it).

    python bench/rl_vs_trl.py [--steps 8] [--prompts 8] [--group 4] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def job(tmp: Path, n_prompts: int) -> tuple[Path, Path]:
    from r1rm.data.synthetic import write_dataset
    from r1rm.models.tiny import build_tiny_model

    model = build_tiny_model(tmp / "model", seed=0)
    data = write_dataset(tmp / "data", max(64, n_prompts * 16), seed=3, levels=(1, 2, 3, 4, 5), modality="text",
                         prefix="train")
    return Path(model), Path(data)


def run_r1rm(model: Path, data: Path, out: Path, a) -> dict:
    from r1rm.commands import rl
    from r1rm.config import load_config

    cfg = load_config("recipes/tiny/rl.yaml", [
        f"model.path={model}", f"data.train=[{data}]", "data.eval=[]", f"output_dir={out}",
        "rl.algorithm=grpo", f"rl.max_steps={a.steps}", f"rl.rollout_batch_size={a.prompts}",
        f"rl.n_samples_per_prompt={a.group}", f"rl.train_batch_size={a.prompts * a.group}",
        f"rl.micro_batch_size={a.micro}", f"rl.max_new_tokens={a.max_new_tokens}", "rl.temperature=1.0",
        "rl.kl_coef=0.0", "rl.ppo_epochs=1", "rl.both_orders=false", "rl.eval_every_steps=0", f"rl.save_every_steps={a.steps + 10}",
        "rl.lr=1e-5", f"engine.batch_size={a.prompts * a.group}", "runtime.progress=false",
        "runtime.report_to=none", "runtime.log_every_steps=1"])
    rl.run(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = rows[a.warmup:]
    return {
        "step_s": statistics.median(r["step_time_s"] for r in rows),
        "generate_s": statistics.median(r["time_generate_s"] for r in rows),
        "overhead_share": sum(r["time_overhead_s"] for r in rows) / sum(r["step_time_s"] for r in rows),
        "mean_response_tokens": statistics.mean(r["response_length"] for r in rows),
    }


def run_trl(model_dir: Path, data: Path, out: Path, a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1rm.core.rewards import combine, format_reward, result_reward, rule_consistency
    from r1rm.data.chat import record_messages
    from r1rm.data.records import read_records

    processor = AutoProcessor.from_pretrained(model_dir)
    tok = processor.tokenizer
    rows = []
    for rec in read_records(data):
        msgs = record_messages(rec, prompt="r1reward", image_root=data.parent)
        rows.append({"prompt": processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                     "label": rec.label})
    ds = Dataset.from_list(rows)

    def reward(prompts, completions, label, **_):
        out = []
        for text, lab in zip(completions, label, strict=True):
            res = result_reward(text, lab)
            out.append(combine(fmt=format_reward(text), result=res, consistency=rule_consistency(text) if res else 0,
                               type_score=0.0, format_weight=0.5, consistency_weight=0.5, type_weight=0.0))
        return out

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    completions = a.prompts * a.group
    args = GRPOConfig(
        output_dir=str(out), max_steps=a.steps, learning_rate=1e-5, per_device_train_batch_size=a.micro,
        gradient_accumulation_steps=completions // a.micro, num_generations=a.group,
        max_completion_length=a.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1,
        use_vllm=False, logging_steps=1, save_strategy="no", report_to=[], bf16=False, use_cpu=True,
        dataloader_num_workers=0, shuffle_dataset=True, seed=0, disable_tqdm=True, scale_rewards="group",
        loss_type="grpo",
        # TRL turns activation checkpointing on by default; r1rm does not (model.gradient_checkpointing):
        # off here too, so both do the same work
        gradient_checkpointing=False,
    )
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[Clock()])
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"step_s": statistics.median(times[a.warmup:]),
            "mean_response_tokens": statistics.mean(lengths) if lengths else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default="out/bench/rl_vs_trl.json")
    a = ap.parse_args()
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("bench/rl_vs_trl.py needs TRL: pip install trl (benchmark-only dependency)") from None
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="r1rm-bench-rl-"))
    model, data = job(tmp, a.prompts)
    mine = run_r1rm(model, data, tmp / "r1rm", a)
    theirs = run_trl(model, data, tmp / "trl", a)
    result = {
        "benchmark": "rl_vs_trl", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "trl_version": trl.__version__,
        "steps": a.steps, "warmup_steps_ignored": a.warmup, "prompts_per_step": a.prompts, "group": a.group,
        "micro_batch": a.micro, "max_new_tokens": a.max_new_tokens,
        "r1rm": {k: round(v, 4) if isinstance(v, float) else v for k, v in mine.items()},
        "trl": {k: round(v, 4) if isinstance(v, float) else v for k, v in theirs.items()},
        "speedup_trl_over_r1rm": round(theirs["step_s"] / mine["step_s"], 2),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
