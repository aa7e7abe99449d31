"""The book's one training loop: fine-tuning, QAT, pre-training and TWC's fine stage all run through it."""

import pytest
import torch
from accelerate import Accelerator

from outlierbook.models import training


def _one_param_problem(start: float = 0.0):
    w = torch.nn.Parameter(torch.tensor([start]))
    model = torch.nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return model, opt, sched


def test_run_steps_order_clip_and_a_clean_first_step():
    model, opt, sched = _one_param_problem()
    model.w.grad = torch.tensor([1000.0])  # stale gradient from earlier training must not leak in
    events = []

    def loss_of(m, target):  # (w - target)^2, gradient 2(w - target)
        events.append(("loss", float(m.w)))
        return ((m.w - target) ** 2).sum()

    losses = training.run_steps(model, enumerate([torch.tensor([3.0])] * 2), loss_of, opt, sched, Accelerator(),
                                desc="t", progress=False, clip=None,
                                before_step=lambda s: events.append(("before", s)),
                                after_step=lambda s, loss: events.append(("after", s, loss)))
    # step 0: w=0, grad -6 -> w=6; step 1: w=6, grad 6 -> w=0 (SGD, lr 1, no clipping)
    assert losses == [9.0, 9.0] and float(model.w) == 0.0
    assert events == [("before", 0), ("loss", 0.0), ("after", 0, 9.0), ("before", 1), ("loss", 6.0), ("after", 1, 9.0)]
    model, opt, sched = _one_param_problem()
    training.run_steps(model, enumerate([torch.tensor([3.0])]), loss_of, opt, sched, Accelerator(), desc="t",
                       progress=False, clip=1.0)
    assert float(model.w) == pytest.approx(1.0)  # gradient -6 clipped to norm 1


def test_every_trainer_runs_through_the_shared_loop(monkeypatch):
    """Fine-tuning/QAT (train_loop), pre-training and TWC's fine stage call run_steps, not a loop of their own."""
    import inspect

    from outlierbook.methods import token_wise_clipping
    from outlierbook.models import pretrain

    for fn in (training.train_loop, pretrain.pretrain, token_wise_clipping.learn_scales):
        source = inspect.getsource(fn)
        assert "run_steps(" in source and ".backward(" not in source and "optimizer.step()" not in source, fn
