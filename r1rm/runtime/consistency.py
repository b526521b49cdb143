"""The RL consistency checker (METHOD §2, `rl.consistency`): does the reasoning's conclusion agree
with the answer?

- `rule`: no model; `r1rm.core.rewards.rule_consistency` (deterministic, the CPU/test default).
- `model`: any engine (an OpenAI-compatible endpoint such as `r1rm judge --serve` or `vllm
  serve`, or a local hf / vllm model), prompted text-only as the released code does, at
  temperature `rl.consistency.temperature`, up to `rl.consistency.retries` attempts, reading the
  first 1/0.
A checker that fails (endpoint errors, a local engine's exception, no 1/0 after the retries)
gives consistency 0 and is counted: never an exception, never a free reward.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from r1rm.core.prompts import user_message
from r1rm.core.rewards import judge_request_text, read_judge_reply, rule_consistency
from r1rm.engines.base import Request, SamplingParams
from r1rm.errors import ConfigError, R1RMError


@dataclass
class ConsistencyStats:
    calls: int = 0
    failures: int = 0  # undecided after every retry (endpoint errors or unreadable replies)
    engine_errors: int = 0
    first_error: str = ""  # the first exception a local checker raised (reported in summary.json)


def model_consistency(engine, texts: list[str], *, temperature: float, retries: int, stats: ConsistencyStats,
                      max_new_tokens: int = 16) -> list[int]:
    """Consistency in {−1, 0, +1} for each output text, asking `engine`; undecided → 0 (counted)."""
    out = [0] * len(texts)
    pending = []
    for i, t in enumerate(texts):
        prompt = judge_request_text(t)
        if prompt is not None:
            pending.append((i, prompt))
    for _attempt in range(retries):
        if not pending:
            break
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        stats.calls += len(pending)
        try:
            results = engine.generate([Request(user_message(p)) for _, p in pending], params)
        except R1RMError:
            raise  # the user's mistake (a refused key, an unknown model): it stops the run, exit 2
        except Exception as e:  # noqa: BLE001 - a local checker's failure is counted, never the end of the run
            # a local (hf / vllm) checker raises where an endpoint returns per-sample errors: the whole
            # attempt failed for every pending text; the next attempt retries them
            stats.engine_errors += len(pending)
            if not stats.first_error:
                stats.first_error = f"{type(e).__name__}: {e}"[:500]
                print(f"warning: the consistency checker raised ({stats.first_error}); its texts count as "
                      "failures (consistency 0) and are retried", file=sys.stderr)
            continue
        still = []
        for (i, p), samples in zip(pending, results, strict=True):
            s = samples[0]
            verdict = None if s.error else read_judge_reply(s.text)
            if s.error:
                stats.engine_errors += 1
            if verdict is None:
                still.append((i, p))
            else:
                out[i] = verdict
        pending = still
    stats.failures += len(pending)
    return out


def make_consistency_engine(cfg):
    """The engine `rl.consistency.mode=model` asks: an endpoint, or a local checkpoint (hf / vllm)."""
    from r1rm.engines import make_engine

    c = cfg.rl.consistency
    if c.engine_kind == "openai" and not c.base_url:
        raise ConfigError("rl.consistency.mode=model needs rl.consistency.base_url (an OpenAI-compatible endpoint)",
                          fix="set rl.consistency.base_url=http://HOST:PORT/v1, or rl.consistency.mode=rule")
    sub = cfg.model_copy(deep=True)
    sub.engine.kind = c.engine_kind
    sub.engine.base_url = c.base_url
    sub.engine.model_name = c.model_name
    sub.engine.api_key_env = c.api_key_env
    sub.engine.timeout_s = c.timeout_s
    sub.engine.max_retries = c.max_retries
    sub.engine.retry_budget_s = c.retry_budget_s
    if c.engine_kind != "openai":
        if not c.model_name:
            raise ConfigError("a local consistency checker needs rl.consistency.model_name (a checkpoint folder)")
        sub.model.path = c.model_name
    engine = make_engine(sub)
    if c.engine_kind == "openai":
        engine.settings = "rl.consistency"  # a refused key / unknown model names these settings
    return engine


def consistency_scores(kind: str, texts: list[str], *, engine=None, temperature: float = 0.1, retries: int = 3,
                       stats: ConsistencyStats | None = None) -> list[int]:
    """Consistency of each text by the configured checker (`rule`, `model` or `none`)."""
    stats = stats or ConsistencyStats()
    if kind == "none":
        return [0] * len(texts)
    if kind == "rule":
        return [rule_consistency(t) for t in texts]
    return model_consistency(engine, texts, temperature=temperature, retries=retries, stats=stats)
