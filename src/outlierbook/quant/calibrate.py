r"""Static range estimation (post-training calibration) and the calibration batches.

``calibrate(qm, batches)`` runs the FP model over the calibration batches with every activation
node observing (padding tokens ignored), fixes each node's range from its estimator, then fixes
the weight ranges from the weights themselves. Ranges are estimated on **FP activations**, as the
Outlier Suppression code does; the Qualcomm code estimates with the upstream quantizers active —
a difference that matters little at 8 bits and is noted where a chapter relies on it.

Calibration data comes from the **training** split (256 examples by default), never from the split
a chapter evaluates on.
"""

from __future__ import annotations

import torch

from ..data.glue import TaskData
from ..errors import OutlierBookError
from .estimators import make_estimator
from .nodes import QuantizedModel


def calibration_batches(data: TaskData, tokenizer, n: int = 256, batch_size: int = 32, seed: int = 0,
                        max_length: int = 128) -> list[dict]:
    """``n`` examples drawn without replacement (seeded) from ``data``, tokenised in batches."""
    from ..models.tasks import encode

    if n < 1 or len(data) == 0:
        raise OutlierBookError(f"empty calibration set (n={n}, {len(data)} examples available); use n >= 1 "
                               "examples from the training split")
    if data.split not in ("train", "any"):
        raise OutlierBookError(f"calibration data must come from the training split, not {data.split!r}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: min(n, len(data))].tolist()
    out = []
    for i in range(0, len(idx), batch_size):
        chunk = idx[i:i + batch_size]
        b = None if data.text_b is None else [data.text_b[j] for j in chunk]
        out.append(encode(tokenizer, [data.text_a[j] for j in chunk], b, max_length))
    return out


@torch.no_grad()
def calibrate(qm: QuantizedModel, batches, estimator=None, weights: bool = True, acts: bool = True) -> QuantizedModel:
    """Estimate and fix activation ranges on ``batches`` (FP forward), then weight ranges.

    ``estimator`` (a name or ``(name, kwargs)``) replaces every activation node's estimator for this
    calibration. Leaves the model in the mode it was in.
    """
    batches = list(batches)
    if acts and qm.activation_quantizers() and not batches:
        raise OutlierBookError("empty calibration set: calibrate() needs at least one batch of inputs")
    mode = qm.mode
    was_training = qm.training
    qm.eval()
    qm.set_mode(weights=False, acts=False)
    if acts:
        quantizers = qm.activation_quantizers()
        for q in quantizers:
            if estimator is not None:
                q.estimator = make_estimator(estimator)
                if hasattr(q.estimator, "bind"):
                    q.estimator.bind(q.grid)
            q.reset()
            q.observing = True
        try:
            for batch in batches:
                qm(**batch)
        finally:
            for q in quantizers:
                q.observing = False
        for q in quantizers:
            q.fix()
    if weights:
        for name, node in qm.weight_nodes.items():
            if node.quantizer is None:
                continue
            module = qm.parts.weights[name[len("weight:"):]]
            raw = module.parametrizations.weight.original
            node.quantizer.reset()
            node.quantizer.observe(raw.detach())
            node.quantizer.fix()
    qm.set_mode(*mode)
    qm.train(was_training)
    return qm
