"""HFEngine with the tiny random Qwen2.5-VL checkpoint on CPU: batching, order, sampling, stops, choice probs."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LogitsProcessor

from r1rm.core.prompts import r1reward_text, user_message
from r1rm.data.synthetic import make_examples, render_image
from r1rm.engines.base import Request, SamplingParams
from r1rm.engines.hf import ChoiceLogitsRecorder, HFEngine, _single_token_ids, prompt_size
from r1rm.errors import InputFileError
from r1rm.models.loading import load_model, load_processor
from r1rm.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0))


@pytest.fixture(scope="module")
def engine(tiny):
    eng = HFEngine(load_model(tiny, device="cpu"), load_processor(tiny), batch_size=8)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    """5 mixed requests: images of 4 sizes (PIL and file paths, one R1-Reward prompt) and a text-only one."""
    exs = make_examples(5, seed=0, levels=(1, 2, 3), modality="image")
    folder = tmp_path_factory.mktemp("imgs")
    path = folder / "scene.png"
    render_image(exs[1].scene, 84).save(path)
    return [
        Request(user_message(exs[0].question, images=[render_image(exs[0].scene, 112)]), key="a"),
        Request(user_message(exs[1].question + " Answer briefly.", images=[path]), key="b"),
        Request(user_message("Scene: a red circle. " + exs[2].question), key="c"),
        Request(user_message(r1reward_text(exs[3].question, exs[3].response1, exs[3].response2),
                             images=[render_image(exs[3].scene, 56)]), key="d"),
        Request(user_message(exs[4].question, images=[render_image(exs[4].scene, 140), render_image(exs[4].scene, 56)]),
                key="e"),
    ]


GREEDY = SamplingParams(max_new_tokens=12)


def test_batched_greedy_equals_one_at_a_time_in_request_order(engine, requests):
    # the sort by prompt size reorders these requests, so equality also checks the order
    order = sorted(range(len(requests)), key=lambda i: prompt_size(requests[i].messages))
    assert order != list(range(len(requests)))
    done = []
    batched = engine.generate(requests, GREEDY, progress=done.append)
    assert len(batched) == 5 and all(len(s) == 1 for s in batched) and sum(done) == 5
    single = [engine.generate([r], GREEDY)[0] for r in requests]
    # float32 with left padding: the tiny model's logit gaps are far above padding-induced
    # rounding (~1e-6), so greedy token ids match exactly
    assert [s[0].token_ids for s in batched] == [s[0].token_ids for s in single]
    for (s,) in batched:
        assert s.error is None and len(s.token_ids) <= GREEDY.max_new_tokens
        assert s.text == engine.tokenizer.decode(s.token_ids, skip_special_tokens=True)
    # a batch size that splits the requests gives the same result
    small = HFEngine(engine.model, engine.processor, batch_size=2)
    assert [s[0].token_ids for s in small.generate(requests, GREEDY)] == [s[0].token_ids for s in batched]


def test_video_frames_batched_after_a_text_only_chat(engine, tmp_path):
    frames = []
    for i in range(4):
        frames.append(tmp_path / f"frame_{i}.png")
        render_image(make_examples(1, seed=i)[0].scene, 56).save(frames[-1])
    video = Request([{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "What moves?"}]}])
    text = Request(user_message("hi"))  # sorts first: the batch starts with a chat without video
    both = engine.generate([video, text], GREEDY)
    assert both[0][0].token_ids == engine.generate([video], GREEDY)[0][0].token_ids
    assert both[1][0].token_ids == engine.generate([text], GREEDY)[0][0].token_ids


def test_greedy_n_gives_copies(engine, requests):
    out = engine.generate(requests[:2], SamplingParams(max_new_tokens=6, n=3))
    assert [len(s) for s in out] == [3, 3]
    assert out[0][0].token_ids == out[0][2].token_ids and out[0][0] is not out[0][1]


def test_sampling_n_is_seeded_and_reproducible(engine, requests):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.95, top_k=50, n=3, seed=123)
    rng_before = torch.random.get_rng_state()
    a = engine.generate(requests[:3], params)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    b = engine.generate(requests[:3], params)
    c = engine.generate(requests[:3], SamplingParams(**{**params.__dict__, "seed": 124}))
    assert [len(s) for s in a] == [3, 3, 3]
    ids = lambda out: [[x.token_ids for x in s] for s in out]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    # the 3 samples of one request differ (random tiny model, temperature 1)
    assert len({tuple(x.token_ids) for x in a[0]}) > 1


def test_max_new_tokens_cuts_and_finished_is_false(engine, requests):
    out = engine.generate(requests, SamplingParams(max_new_tokens=3))
    for (s,) in out:
        assert len(s.token_ids) <= 3
        assert s.finished == (len(s.token_ids) < 3)  # a random model rarely says EOS within 3 tokens
    assert any(not s.finished for (s,) in out)


class Force(LogitsProcessor):
    """Test-only: forces `seq` token by token (then EOS), appended after the engine's recorder."""

    def __init__(self, seq: list[int]):
        self.seq, self.start = seq, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        t = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.seq[min(t, len(self.seq) - 1)]] = 0.0
        return forced


@pytest.fixture
def forced(engine, monkeypatch):
    tok = engine.tokenizer
    target = "<think>red</think><answer>2</answer>"
    seq = tok.encode(target, add_special_tokens=False) + [engine.eos_ids[0]]
    generate = engine.model.generate

    def wrapped(**kw):
        kw["logits_processor"].append(Force(seq))
        return generate(**kw)

    monkeypatch.setattr(engine.model, "generate", wrapped)
    return target, seq


def _reference_probs(engine, request, prefix: list[int]) -> dict[int, float]:
    """Softmax of the raw "1"/"2" logits after prompt + prefix, from one plain forward pass."""
    inputs = engine.processor.apply_chat_template(
        request.messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    extra = torch.tensor([prefix])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
    with torch.no_grad():
        logits = engine.model(**inputs).logits[0, -1, list(engine.choice_ids)]
    p = torch.softmax(logits.double(), dim=0)
    return {1: float(p[0]), 2: float(p[1])}


def test_choice_probs_are_the_raw_logit_softmax_at_the_answer(engine, requests, forced):
    target, seq = forced
    pair = [requests[0], requests[2]]  # an image prompt and a shorter text prompt: left padding in play
    greedy = engine.generate(pair, SamplingParams(max_new_tokens=32))
    hot = engine.generate(pair, SamplingParams(max_new_tokens=32, temperature=0.5, n=2, seed=0))
    answer_at = seq.index(engine.choice_ids[1])
    for req, (g,), h in zip(pair, greedy, hot, strict=True):
        assert g.text == target and g.finished and g.token_ids == seq[:-1]
        ref = _reference_probs(engine, req, seq[:answer_at])
        assert g.choice_probs[1] + g.choice_probs[2] == pytest.approx(1.0)
        assert g.choice_probs[2] == pytest.approx(ref[2], abs=1e-4)
        # temperature 0.5 would change a softmax of warped logits: the recorder saw raw ones
        for s in h:
            assert s.choice_probs[2] == pytest.approx(g.choice_probs[2], abs=1e-6)


def test_no_answer_tag_gives_no_choice_probs(engine, requests):
    out = engine.generate(requests[:2], SamplingParams(max_new_tokens=4))
    assert all(s.choice_probs is None for (s,) in out if "<answer>" not in s.text)


def test_recorder_keeps_only_two_raw_logits_per_step():
    rec = ChoiceLogitsRecorder((2, 5))
    scores = torch.arange(20, dtype=torch.float32).reshape(2, 10)
    assert rec(torch.zeros(2, 3, dtype=torch.long), scores) is scores
    rec(torch.zeros(2, 4, dtype=torch.long), scores + 100)
    got = rec.logits()
    assert got.shape == (2, 2, 2)
    assert got[1, 0].tolist() == [12.0, 15.0] and got[0, 1].tolist() == [102.0, 105.0]


def test_multi_token_digits_disable_choice_probs():
    class Tok:
        def encode(self, text, add_special_tokens=False):
            return {"1": [7], "2": [8, 9]}[text]

    assert _single_token_ids(Tok(), ("1", "2")) is None


def test_missing_image_is_a_user_error_and_training_mode_is_restored(engine, tmp_path):
    engine.model.train()
    with pytest.raises(InputFileError, match="media file not found"):
        engine.generate([Request(user_message("q", images=[tmp_path / "nope.png"]))], GREEDY)
    assert engine.model.training
    engine.model.eval()


def _reference_mean_logprob(engine, request, ids: list[int]) -> float:
    """Mean raw log p(token) of `ids` after the prompt, from one teacher-forced forward pass."""
    inputs = engine.processor.apply_chat_template(
        request.messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    n_prompt = inputs["input_ids"].shape[1]
    extra = torch.tensor([ids])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
    with torch.no_grad():
        logits = engine.model(**inputs).logits[0].double()  # (L, V)
    logp = torch.log_softmax(logits[n_prompt - 1 : n_prompt - 1 + len(ids)], dim=-1)
    return float(logp.gather(1, extra[0][:, None]).mean())


def test_mean_logprob_matches_a_teacher_forced_forward_pass(engine, requests):
    pair = [requests[0], requests[2]]  # image prompt + shorter text prompt: left padding in play
    greedy = engine.generate(pair, SamplingParams(max_new_tokens=8, logprobs=True))
    hot = engine.generate(pair, SamplingParams(max_new_tokens=8, temperature=0.7, n=2, seed=3, logprobs=True))
    for req, g, h in zip(pair, greedy, hot, strict=True):
        for s in [*g, *h]:
            assert s.token_ids and s.mean_logprob is not None
            # raw logits, before temperature: sampled chains are scored like greedy ones
            assert s.mean_logprob == pytest.approx(_reference_mean_logprob(engine, req, s.token_ids), abs=1e-4)
    # not asked for: not computed
    assert engine.generate(pair[:1], SamplingParams(max_new_tokens=4))[0][0].mean_logprob is None


def test_token_logprob_recorder_keeps_one_step_and_gathers_the_chosen_token():
    from r1rm.engines.hf import TokenLogprobRecorder

    rec = TokenLogprobRecorder()
    s1 = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]])
    s2 = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert rec(torch.zeros(2, 4, dtype=torch.long), s1) is s1
    rec(torch.tensor([[0, 0, 0, 0, 2], [0, 0, 0, 0, 0]]), s2)  # step 1 chose tokens 2 and 0
    assert len(rec.steps) == 1
    rec.finish(torch.tensor([0, 2]))  # step 2 chose tokens 0 and 2
    got = rec.logprobs()
    want = torch.stack([torch.log_softmax(s1, -1)[[0, 1], [2, 0]], torch.log_softmax(s2, -1)[[0, 1], [0, 2]]], dim=1)
    assert got.shape == (2, 2) and torch.allclose(got, want)


def test_shared_prefill_gives_the_samples_of_repeated_prompts_with_one_prompt_pass(engine, requests):
    """n samples per request: the prompt forwarded once, its KV cache copied to the n rows. Same
    seed → the same samples and log-probs as repeating each prompt n times, for left-padded text,
    single-, multi-image and differently sized prompts (Qwen mrope deltas)."""
    params = SamplingParams(max_new_tokens=10, temperature=1.0, n=3, seed=7, logprobs=True)
    tokens = []  # tokens the language model processes per call (rows x length)

    def count(mod, args, kwargs, out):
        emb = kwargs["inputs_embeds"]
        tokens.append(emb.shape[0] * emb.shape[1])

    hook = engine.model.model.language_model.register_forward_hook(count, with_kwargs=True)
    try:
        shared = engine.generate(requests, params)
        prefill_once = max(tokens)
        tokens.clear()
        plain = HFEngine(engine.model, engine.processor, batch_size=8, share_prefill=False).generate(requests, params)
        prefill_repeated = max(tokens)
    finally:
        hook.remove()
    assert prefill_repeated > 2.9 * prefill_once  # 5 prompts x (L - 1) tokens instead of 15 x L
    assert [[x.token_ids for x in s] for s in shared] == [[x.token_ids for x in s] for s in plain]
    assert len({tuple(x.token_ids) for x in shared[0]}) > 1  # the copies really were sampled apart
    for s_shared, s_plain in zip(shared, plain, strict=True):
        for a, b in zip(s_shared, s_plain, strict=True):
            assert a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-5)
    # and every sample scores like a teacher-forced pass over prompt + sample (positions right)
    for k in (0, 2):  # an image prompt and a shorter, left-padded text prompt
        req, s = requests[k], shared[k]
        for x in s:
            assert x.mean_logprob == pytest.approx(_reference_mean_logprob(engine, req, x.token_ids), abs=1e-4)
