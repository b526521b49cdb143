"""`collate`: samples with and without images in one batch, right or left padding."""

import torch

from r1rm.core.sft_loss import IGNORE
from r1rm.runtime.batches import Encoded, collate


def _sample(ids: list[int], *, image: bool) -> Encoded:
    n = len(ids)
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones((1, n), dtype=torch.long)}
    if image:
        inputs["mm_token_type_ids"] = torch.tensor([[0] + [1] * (n - 2) + [0]], dtype=torch.int32)
        inputs["pixel_values"] = torch.full((4, 6), float(n))
        inputs["image_grid_thw"] = torch.tensor([[1, 2, 2]])
    labels = torch.full((1, n), IGNORE)
    labels[0, -1] = ids[-1]
    return Encoded(inputs=inputs, labels=labels, n_prompt=n - 1, n_target=1)


def test_text_and_image_samples_mix_in_one_batch():
    text, img_a, img_b = _sample([5, 6, 7], image=False), _sample([1, 2, 3, 4, 9], image=True), _sample([8, 8, 8, 8], image=True)
    batch = collate([text, img_a, img_b], pad_id=0)  # a text-only sample first: its keys must not decide
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [1, 2, 3, 4, 9], [8, 8, 8, 8, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # visual tensors: concatenated over the samples that have them, in order
    assert batch["pixel_values"].shape == (8, 6) and batch["pixel_values"][:4].eq(5.0).all()
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 2]]
    # a per-token key the text sample lacks: zeros, in the other samples' dtype
    assert batch["mm_token_type_ids"].dtype == torch.int32
    assert batch["mm_token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, IGNORE, IGNORE], [IGNORE] * 4 + [9], [IGNORE] * 3 + [8, IGNORE]]


def test_left_padding_puts_every_sample_end_at_the_same_position():
    batch = collate([_sample([5, 6, 7], image=False), _sample([1, 2, 3, 4, 9], image=False)], pad_id=0, left=True)
    assert batch["input_ids"].tolist() == [[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["labels"][:, -1].tolist() == [7, 9]
