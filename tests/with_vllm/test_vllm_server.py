"""`r1rm judge --serve` over the vllm engine: the same chat API, batching, logprobs and usage as over hf; the
greedy reply equals the hf engine's on the same prompt."""

from __future__ import annotations

import base64
import io
import threading

PROMPT = "Which response is better? Response 1: red. Response 2: blue."


def _png_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), "red").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_server_over_vllm_answers_like_hf(tiny4, tmp_path):
    import openai
    from conftest import served_cli  # tests/conftest.py

    from r1rm.config import load_config
    from r1rm.engines import make_engine
    from r1rm.engines.base import Request, SamplingParams

    cfg = load_config("recipes/tiny/base.yaml", [f"model.path={tiny4}", "engine.kind=hf"])
    hf = make_engine(cfg)
    try:
        want = hf.generate([Request([{"role": "user", "content": [{"type": "text", "text": PROMPT}]}])],
                           SamplingParams(max_new_tokens=8, temperature=0.0))[0][0]
    finally:
        hf.close()
    with served_cli("--recipe", "recipes/tiny/base.yaml", f"model.path={tiny4}", "engine.kind=vllm",
                    f"output_dir={tmp_path / 'srv'}", "judge.served_model_name=tiny", timeout_s=600) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}], max_tokens=8,
                                           temperature=0, logprobs=True)
        assert r.choices[0].message.content == want.text
        assert r.usage.completion_tokens == len(want.token_ids) == len(r.choices[0].logprobs.content)
        assert r.usage.prompt_tokens == len(want.prompt_token_ids)
        results, errors = [], []

        def call(i: int) -> None:
            try:
                msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _png_url()}},
                                                    {"type": "text", "text": f"{PROMPT} {i}"}]}]
                results.append(client.chat.completions.create(model="tiny", messages=msg, max_tokens=4, temperature=0))
            except Exception as e:  # collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors and len(results) == 8 and all(x.usage.prompt_tokens > r.usage.prompt_tokens for x in results)
