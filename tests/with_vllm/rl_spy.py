"""`r1rm rl ARGS` with spies on the vLLM rollout engine and the update, for tests/with_vllm/test_vllm_rl.py:

    python tests/with_vllm/rl_spy.py EVENTS_PREFIX rl --recipe ... rl.rollout_engine=vllm ...

(also under `torch.distributed.run`). Each process appends one JSON line per event to
EVENTS_PREFIX.<rank>: {"event": "sleep" | "wake_up" | "load_weights" | "prompt_logprobs" | "generate" |
"_update", ...} in the order they happened (generate: the sampled token ids). Nothing is changed but the recording; with
R1RM_SPY_SKIP_START_PUSH=1 the push before the first rollout is skipped (the old behaviour, for
showing that the resume test fails without it)."""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    prefix, args = sys.argv[1], sys.argv[2:]
    from r1rm.commands import rl
    from r1rm.engines.vllm import VLLMEngine

    out = open(f"{prefix}.{os.environ.get('RANK', '0')}", "a")

    def record(event: str, **kw) -> None:
        out.write(json.dumps({"event": event, **kw}) + "\n")
        out.flush()

    def spy(cls, name: str, detail=lambda *a, **k: {}):
        original = getattr(cls, name)

        def wrapped(*a, **k):
            result = original(*a, **k)
            record(name, **detail(*a, result=result, **k))
            return result

        setattr(cls, name, wrapped)

    spy(VLLMEngine, "sleep", lambda self, level=1, **k: {"level": level})
    spy(VLLMEngine, "wake_up")
    spy(VLLMEngine, "load_weights", lambda self, weights, result: {"tensors": result})
    spy(VLLMEngine, "prompt_logprobs")
    spy(VLLMEngine, "generate", lambda self, requests, params, progress=None, result=None: {
        "requests": len(requests), "tokens": [s.token_ids for samples in result for s in samples]})
    spy(rl, "_update", lambda *a, step, **k: {"step": step})
    if os.environ.get("R1RM_SPY_SKIP_START_PUSH") == "1":
        push, calls = rl._push_weights, []

        def skip_first(t, sampler):
            calls.append(1)
            return {} if len(calls) == 1 else push(t, sampler)

        rl._push_weights = skip_first

    from r1rm.cli import main as cli

    sys.argv = ["r1rm", *args]
    cli()


if __name__ == "__main__":
    main()
