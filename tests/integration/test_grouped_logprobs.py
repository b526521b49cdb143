"""An RL prompt's n samples forward their prompt once (`grouped_token_logprobs`): log-probs,
entropies and gradients equal the plain full-sequence forward (`token_logprobs`), for image and
text prompts of different lengths (left-padded prompts, right-padded responses, Qwen mrope)."""

import pytest
import torch

from r1rm.data.synthetic import make_examples, render_image


@pytest.fixture(scope="module")
def setup(tiny):
    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.rollout import build_sequence, encode_prompt

    processor = load_processor(tiny, min_pixels=3136, max_pixels=12544)
    model = load_model(tiny, dtype="float32", device="cpu")
    exs = make_examples(3, seed=4, levels=(1, 4, 5), modality="image")
    prompts = [
        [{"role": "user", "content": [{"type": "image", "image": render_image(exs[0].scene, 112)},
                                      {"type": "text", "text": exs[0].question}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Scene: a red circle. " + exs[1].question + " Be brief."}]}],
        [{"role": "user", "content": [{"type": "image", "image": render_image(exs[2].scene, 84)},
                                      {"type": "image", "image": render_image(exs[2].scene, 56)},
                                      {"type": "text", "text": exs[2].question}]}],
    ]
    g = torch.Generator().manual_seed(0)
    groups = []
    for messages in prompts:
        enc = encode_prompt(processor, messages)
        # three responses of different lengths per prompt (plain text token ids)
        groups.append([build_sequence(enc, torch.randint(20, 800, (k,), generator=g).tolist()) for k in (3, 9, 6)])
    return model, processor.tokenizer.pad_token_id, groups


def test_grouped_forward_equals_the_full_forward(setup):
    from r1rm.runtime.rollout import grouped_token_logprobs, token_logprobs

    model, pad, groups = setup
    flat = [e for grp in groups for e in grp]
    lp_ref, m_ref, ent_ref = token_logprobs(model, flat, pad_id=pad, device="cpu", with_entropy=True)
    (lp_ref * m_ref).sum().backward()
    grads_ref = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    lp, m, ent = grouped_token_logprobs(model, groups, pad_id=pad, device="cpu", with_entropy=True)
    (lp * m).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert lp.shape == lp_ref.shape and torch.equal(m, m_ref) and int(m.sum()) == 3 * (3 + 9 + 6)
    assert torch.allclose(lp, lp_ref, atol=1e-5) and torch.allclose(ent, ent_ref, atol=1e-5)
    assert float(lp_ref.detach().abs().sum()) > 1.0  # real log-probs, not zeros
    # the same parameters get gradients, the vision tower included, and the same values
    assert grads.keys() == grads_ref.keys() and any("visual" in k for k in grads)
    for k in grads_ref:
        assert torch.allclose(grads[k], grads_ref[k], atol=1e-5, rtol=1e-4), k


def test_groups_must_share_size_and_prompt(setup):
    from r1rm.runtime.rollout import grouped_token_logprobs

    model, pad, groups = setup
    with pytest.raises(ValueError, match="different sizes"):
        grouped_token_logprobs(model, [groups[0], groups[1][:2]], pad_id=pad, device="cpu")
    with pytest.raises(ValueError, match="different lengths"):
        grouped_token_logprobs(model, [[groups[0][0], groups[1][0]]], pad_id=pad, device="cpu")
