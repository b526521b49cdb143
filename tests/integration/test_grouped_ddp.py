"""The grouped RL forward (two forwards, one backward) under DDP on 2 processes: the gradient
DDP averages equals the mean of both processes' full-forward gradients."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _groups(processor, rank: int):
    from r1rm.data.synthetic import make_examples, render_image
    from r1rm.runtime.rollout import build_sequence, encode_prompt

    exs = make_examples(2, seed=10 + rank, levels=(1, 5), modality="image")
    g = torch.Generator().manual_seed(rank)
    groups = []
    for k, ex in enumerate(exs):
        content = [{"type": "text", "text": ex.question}]
        if k == 0:  # one image prompt and one text-only prompt per process
            content.insert(0, {"type": "image", "image": render_image(ex.scene, 112)})
        enc = encode_prompt(processor, [{"role": "user", "content": content}])
        groups.append([build_sequence(enc, torch.randint(20, 800, (n,), generator=g).tolist()) for n in (4, 7)])
    return groups


def _worker(rank: int, port: int, tiny: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.rollout import grouped_token_logprobs

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    processor = load_processor(tiny, min_pixels=3136, max_pixels=12544)
    model = DistributedDataParallel(load_model(tiny, dtype="float32", device="cpu"))
    lp, m, _ = grouped_token_logprobs(model, _groups(processor, rank), pad_id=processor.tokenizer.pad_token_id,
                                      device="cpu")
    (lp * m).sum().backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in model.module.named_parameters() if p.grad is not None}, out)
    dist.destroy_process_group()


def test_grouped_forward_gradients_under_ddp(tiny, tmp_path):
    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.rollout import token_logprobs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "grads.pt"
    mp.start_processes(_worker, args=(port, str(tiny), str(out)), nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(out)
    processor = load_processor(tiny, min_pixels=3136, max_pixels=12544)
    model = load_model(tiny, dtype="float32", device="cpu")
    for rank in (0, 1):  # the reference: each process's full forward, gradients averaged
        flat = [e for grp in _groups(processor, rank) for e in grp]
        lp, m, _ = token_logprobs(model, flat, pad_id=processor.tokenizer.pad_token_id, device="cpu")
        ((lp * m).sum() / 2).backward()
    ref = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert ddp.keys() == ref.keys() and any("visual" in k for k in ddp)
    for k in ref:
        assert torch.allclose(ddp[k], ref[k], atol=1e-5, rtol=1e-4), k
    assert max(float(g.abs().max()) for g in ref.values()) > 1e-3  # real gradients


if __name__ == "__main__":
    pytest.main([__file__])
