"""The vllm engine loads the tiny model and decodes greedily exactly as the hf engine does (text-only prompts)."""

from __future__ import annotations

PROMPTS = ["Which response is better? Response 1: red. Response 2: blue.", "Say something about a green circle."]


def test_vllm_greedy_text_equals_hf(tiny4):
    from r1rm.config import load_config
    from r1rm.engines import make_engine
    from r1rm.engines.base import Request, SamplingParams

    params = SamplingParams(max_new_tokens=12, temperature=0.0, logprobs=True)
    requests = [Request([{"role": "user", "content": [{"type": "text", "text": p}]}]) for p in PROMPTS]
    out = {}
    for kind in ("hf", "vllm"):
        cfg = load_config("recipes/tiny/base.yaml", [f"model.path={tiny4}", f"engine.kind={kind}"])
        engine = make_engine(cfg)
        try:
            out[kind] = [s[0] for s in engine.generate(requests, params)]
        finally:
            engine.close()
    assert [s.token_ids for s in out["vllm"]] == [s.token_ids for s in out["hf"]]
    assert all(len(s.token_ids) > 0 for s in out["vllm"])
    for h, v in zip(out["hf"], out["vllm"], strict=True):
        assert v.mean_logprob is not None and abs(v.mean_logprob - h.mean_logprob) < 1e-3
