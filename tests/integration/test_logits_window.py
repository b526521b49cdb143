"""Logits are computed only where labels need them (`logits_to_keep`): the log-probs, entropies
and SFT losses equal the full-sequence computation, for prompts of different lengths."""

import torch

from r1rm.core.sft_loss import IGNORE, logits_window, token_ce_sum


def test_window_starts_one_before_the_earliest_label():
    labels = torch.full((2, 10), IGNORE)
    labels[0, 6:8] = 1
    labels[1, 4:10] = 2
    assert logits_window(labels) == 10 - 3  # positions 3..9: position 3 predicts label 4
    assert logits_window(torch.full((1, 5), IGNORE)) == 5  # nothing supervised: everything
    labels = torch.full((1, 4), IGNORE)
    labels[0, 0] = 3  # a label at position 0 has no predicting logit: the window is the whole row
    assert logits_window(labels) == 4


def _sequences(tiny):
    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.rollout import build_sequence

    processor = load_processor(tiny, min_pixels=3136, max_pixels=12544)
    model = load_model(tiny, dtype="float32", device="cpu")
    seqs = []
    for text, resp in (("short", [5, 6, 7]), ("a much longer prompt than the other one, with more words", [7, 8, 9, 10, 11])):
        enc = dict(processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": text}]}],
                                                 add_generation_prompt=True, tokenize=True, return_dict=True,
                                                 return_tensors="pt"))
        seqs.append(build_sequence(enc, resp))
    return model, processor.tokenizer, seqs


def test_windowed_logprobs_and_loss_equal_the_full_forward(tiny):
    from r1rm.runtime.batches import collate
    from r1rm.runtime.rollout import token_logprobs

    model, tok, seqs = _sequences(tiny)
    with torch.no_grad():
        logp, mask, ent = token_logprobs(model, seqs, pad_id=tok.pad_token_id, device="cpu", with_entropy=True)
        batch = collate(seqs, pad_id=tok.pad_token_id)
        labels = batch.pop("labels")
        full = model(**batch).logits  # every position
    assert logits_window(labels) < labels.shape[1]  # the window really is narrower than the batch
    target = labels[:, 1:]
    ref_mask = target != IGNORE
    logsm = torch.log_softmax(full[:, :-1].float(), dim=-1)
    ref_logp = logsm.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * ref_mask
    ref_ent = -(logsm.exp() * logsm).sum(-1) * ref_mask
    assert torch.equal(mask.bool(), ref_mask)
    assert torch.allclose(logp, ref_logp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    keep = logits_window(labels)
    with torch.no_grad():
        windowed = model(**batch, logits_to_keep=keep).logits
    assert windowed.shape[1] == keep
    a, n_a = token_ce_sum(full, labels)
    b, n_b = token_ce_sum(windowed, labels[:, -keep:])
    assert n_a == n_b == 8 and float(a) > 0 and abs(float(a) - float(b)) < 1e-4
