"""Post-training quantization in one call: wrap, calibrate, use, unwrap."""

from __future__ import annotations

import contextlib

from .calibrate import calibrate
from .nodes import QuantizedModel, quantize_model


def ptq(model, batches, placement: str = "bondarenko", weight_bits=8, act_bits=8, act_estimator="avg_minmax",
        weight_estimator="current_minmax", weight_axis=0, scale_rule="qualcomm", config=None) -> QuantizedModel:
    """A calibrated :class:`QuantizedModel` in W+A mode (switch with ``set_mode``)."""
    qm = quantize_model(model, placement=placement, weight_bits=weight_bits, act_bits=act_bits,
                        act_estimator=act_estimator, weight_estimator=weight_estimator, weight_axis=weight_axis,
                        scale_rule=scale_rule, config=config)
    calibrate(qm, batches)
    return qm.set_mode(weights=True, acts=True)


@contextlib.contextmanager
def quantized(model, batches, **kwargs):
    """``with quantized(model, batches, weight_bits=6, act_bits=6) as qm: ...`` — the model is restored after."""
    qm = ptq(model, batches, **kwargs)
    try:
        yield qm
    finally:
        qm.remove()
