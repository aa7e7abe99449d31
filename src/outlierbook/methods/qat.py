r"""Quantization-aware training with learnable ranges (Bondarenko et al. 2021, §4; LSQ/LSQ+).

Start from a calibrated :class:`~outlierbook.quant.nodes.QuantizedModel` (PTQ ranges), make every
quantizer's scale (and, for asymmetric grids, zero point) a parameter, and fine-tune weights and
ranges together through the straight-through estimator, with the book's one training loop
(:mod:`outlierbook.models.training`, Accelerate). Ranges get no weight decay. With
``learn_ranges=False`` the PTQ ranges stay fixed and only the weights adapt.
"""

from __future__ import annotations

import math

import torch

from ..data.glue import TaskData
from ..errors import ConfigError, OutlierBookError
from ..models.training import decay_groups, train_loader, train_loop
from ..quant.nodes import QuantizedModel, check_calibrated


EPOCH = "epoch"


def resolve_steps(steps: int | str, n_train: int, batch_size: int) -> int:
    """QAT steps: ``steps`` itself, or for ``"epoch"`` one pass over the training split, ⌈n_train / batch⌉."""
    if steps == EPOCH:
        return max(math.ceil(n_train / batch_size), 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"QAT steps must be a positive int or {EPOCH!r} (one pass over the training split), "
                          f"got {steps!r}")
    return steps


def qat(qm: QuantizedModel, train: TaskData, tokenizer, steps: int, batch_size: int = 32, lr: float = 2e-5,
        warmup: float = 0.1, weight_decay: float = 0.0, learn_ranges: bool = True, max_length: int = 128,
        seed: int = 0, progress: bool = True, range_lr: float | None = None, pact: bool = False) -> list[float]:
    """Train ``qm`` (W+A quantized) on labelled ``train`` data; returns the loss curve.

    Ranges not yet learnable become LSQ+ parameters; with ``pact=True`` the activation ranges become
    PACT clipping bounds instead (weights keep LSQ scales). ``range_lr`` defaults to ``lr``.
    """
    if train.split != "train":
        raise OutlierBookError("quantization-aware training uses the training split only")
    check_calibrated(qm)
    quantizers = qm.activation_quantizers() + qm.weight_quantizers()
    if learn_ranges:
        if pact:
            for q in qm.activation_quantizers():
                if not q.learnable:
                    q.make_pact()
        for q in quantizers:
            if not q.learnable:
                q.make_learnable(zero_point=True, grad_scaling=True)
    qm.set_mode(weights=True, acts=True)
    ranges = [p for q in quantizers for p in q.range_parameters()]
    range_ids = {id(p) for p in ranges}
    groups = decay_groups(qm.model, weight_decay)
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in range_ids]
    if ranges:
        groups.append({"params": ranges, "weight_decay": 0.0, **({"lr": range_lr} if range_lr else {})})
    torch.manual_seed(seed)
    loader = train_loader(train, tokenizer, steps, batch_size, max_length, seed)
    _, losses = train_loop(qm, loader, groups, lr, steps, warmup, desc=f"QAT {train.task}", progress=progress)
    return losses


def qat_and_score(qm: QuantizedModel, setup, steps: int, batch_size: int = 32, lr: float = 2e-5, seed: int = 0,
                  pact: bool = False, progress: bool = True) -> dict:
    """Score the PTQ-initialised wrapper ``qm`` (W+A mode) on ``setup``, train it with :func:`qat` on the
    setup's training data and score it again. ``qm`` comes from :func:`outlierbook.recipe.quantize`, so it
    wraps a copy of the FP model and nothing needs unwrapping.

    Returns ``{"ptq", "value", "final_loss"}`` (the last value is the mean of the last 10 losses).
    """
    ptq = setup.score(qm)
    losses = qat(qm, setup.calibration, setup.tokenizer, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                 pact=pact, progress=progress)
    qm.eval()
    value = setup.score(qm)
    return {"ptq": ptq, "value": value, "final_loss": sum(losses[-10:]) / max(len(losses[-10:]), 1)}
