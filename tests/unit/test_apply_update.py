"""The update-or-skip step shared by sft and rl: a non-finite loss or gradient is never applied."""

import torch

from r1rm.runtime.accel import apply_update


class OneProcess:
    """The two accelerate calls apply_update makes, for a single process."""

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def reduce(self, t, reduction="sum"):
        return t


def setup():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return w, opt, sched


def test_finite_update_is_applied():
    w, opt, sched = setup()
    (w * 2).sum().backward()
    counters = {"skipped_updates": 0}
    norm = apply_update(OneProcess(), [w], opt, sched, bad=torch.zeros(()), max_grad_norm=100.0, deepspeed=False,
                        counters=counters)
    assert float(norm) > 0 and counters["skipped_updates"] == 0
    assert torch.allclose(w.detach(), torch.full((3,), 0.8)) and w.grad is None


def test_nonfinite_gradient_is_skipped_and_counted():
    w, opt, sched = setup()
    (w * float("nan")).sum().backward()
    counters = {"skipped_updates": 0}
    apply_update(OneProcess(), [w], opt, sched, bad=torch.zeros(()), max_grad_norm=1.0, deepspeed=False, counters=counters)
    assert counters["skipped_updates"] == 1 and torch.equal(w.detach(), torch.ones(3)) and w.grad is None


def test_nonfinite_loss_flag_skips_the_update():
    w, opt, sched = setup()
    (w * 2).sum().backward()
    counters = {"skipped_updates": 0}
    apply_update(OneProcess(), [w], opt, sched, bad=torch.ones(()), max_grad_norm=1.0, deepspeed=False, counters=counters)
    assert counters["skipped_updates"] == 1 and torch.equal(w.detach(), torch.ones(3))


def test_no_clipping_measures_the_norm_and_applies_the_full_gradient():
    w, opt, sched = setup()
    (w * 200).sum().backward()  # gradient 200 per element: norm 346
    counters = {"skipped_updates": 0}
    norm = apply_update(OneProcess(), [w], opt, sched, bad=torch.zeros(()), max_grad_norm=None, deepspeed=False,
                        counters=counters)
    assert abs(float(norm) - 200 * 3 ** 0.5) < 1e-3
    assert torch.allclose(w.detach(), torch.full((3,), 1 - 0.1 * 200))  # unclipped step
    w, opt, sched = setup()
    (w * 200).sum().backward()
    apply_update(OneProcess(), [w], opt, sched, bad=torch.zeros(()), max_grad_norm=1.0, deepspeed=False,
                 counters=counters)
    assert torch.allclose(w.detach(), torch.full((3,), 1 - 0.1 / 3 ** 0.5), atol=1e-6)  # clipped to norm 1


def test_make_optimizer_follows_the_config():
    from r1rm.config import RLConfig
    from r1rm.runtime.accel import make_optimizer

    w = torch.nn.Parameter(torch.ones(2))
    sgd = make_optimizer([w], RLConfig(optimizer="sgd", lr=0.5, weight_decay=0.1, train_batch_size=1))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["lr"] == 0.5 and sgd.defaults["momentum"] == 0
    adamw = make_optimizer([w], RLConfig(lr=1e-6, train_batch_size=1))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.9, 0.95)
