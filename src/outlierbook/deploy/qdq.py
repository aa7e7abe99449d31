r"""The book's quantizers in the form integer runtimes read: QuantizeLinear / DequantizeLinear pairs.

ONNX's ``QuantizeLinear`` computes $q = \operatorname{sat}(\lfloor x/s \rceil + z)$ (rounding half to even)
on ``uint8`` $[0, 255]$ or ``int8`` $[-128, 127]$, and ``DequantizeLinear`` gives $\hat x = (q - z)\,s$: on an
8-bit grid that is exactly the book's quantizer (:func:`outlierbook.quant.quantizer.fake_quantize`), so a
model whose nodes are replaced by :class:`QuantDequant` computes the same function and exports to a graph
with a Q/DQ pair at every node, carrying *our* scale and zero point. A runtime then fuses
$\text{DQ}(q_x)\cdot\text{DQ}(q_W)$ into one integer product,

$$\hat x \hat W^\top = s_x s_W \Big(\sum_k (q_{x,k} - z_x)\, q_{W,k}\Big),$$

accumulated exactly in int32 and rescaled once. The factorisation needs one activation scale $s_x$ for the
whole row (per-tensor activations) and one weight scale per output channel: per-embedding-group
activations (PEG) do not factor this way and are refused here.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import ConfigError, OutlierBookError
from ..quant.fake_quant import FakeQuantizer

INTEGER_BITS = 8


class QuantDequant(nn.Module):
    """A calibrated 8-bit quantizer frozen to constants. Run eagerly it is the book's quantizer (same values);
    traced for ONNX it is ``torch.fake_quantize_per_{tensor,channel}_affine``, which the exporter writes as a
    QuantizeLinear/DequantizeLinear pair with the same scale and zero point."""

    observing = False  # what the activation node asks before feeding an estimator
    learnable = False

    def __init__(self, quantizer: FakeQuantizer, x_dim: int | None = None):
        super().__init__()
        self.name = quantizer.name
        self.qmin, self.qmax = quantizer.grid.qmin, quantizer.grid.qmax
        self.axis = quantizer.granularity.axis
        scale, zero = quantizer.current_qparams(torch.empty(1))
        scale, zero = scale.detach().float(), zero.detach()
        if self.axis is None:
            self.scale_value, self.zero_value = float(scale.reshape(())), int(zero.reshape(()))
        self.register_buffer("scale", scale.reshape(-1).clone())
        self.register_buffer("zero", zero.reshape(-1).round().to(torch.int32).clone())

    @property
    def quantizing(self) -> bool:
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            from ..quant.quantizer import fake_quantize

            shape = [1] * x.dim()
            if self.axis is not None:
                shape[self.axis % x.dim()] = -1
            return fake_quantize(x, self.scale.reshape(shape), self.zero.reshape(shape).float(), self.qmin, self.qmax)
        # traced for ONNX: the exporter writes these two ops as QuantizeLinear/DequantizeLinear with our constants
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, self.scale_value, self.zero_value, self.qmin, self.qmax)
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero, self.axis % x.dim(), self.qmin,
                                                      self.qmax)


def nodes(qm) -> list:
    """Every activation and weight node of a quantized model (each has a ``quantizer`` attribute)."""
    return list(qm.act_nodes.values()) + list(qm.weight_nodes.values())


def check_exportable(qm) -> None:
    """One-line errors for what integer kernels cannot run, before any export work."""
    for node in nodes(qm):
        q = node.quantizer
        if q is None or not q.quantizing:
            continue
        if not q.calibrated:
            raise OutlierBookError(f"node {q.name} has no range; calibrate the recipe (quantize(model, recipe, "
                                   "batches)) before exporting")
        if q.grid.bits != INTEGER_BITS:
            raise ConfigError(f"node {q.name} is {q.grid.bits}-bit; integer kernels take 8-bit tensors: export a "
                              "W8A8 recipe (or leave the node in fp32)")
        if q.granularity.groups is not None:
            raise ConfigError(f"node {q.name} has per-group ranges (PEG); an integer matrix product needs one "
                              "activation scale per row: export PEG through a grouped-Linear rewrite, or use "
                              "per-tensor ranges")
        if q.pact:
            raise ConfigError(f"node {q.name} uses PACT clipping bounds; freeze them into a scale first")


@contextlib.contextmanager
def qdq_form(qm):
    """Within the block, every quantizing node of ``qm`` is a :class:`QuantDequant` (every other one is off);
    the original quantizers are put back afterwards, whatever happens."""
    check_exportable(qm)
    saved = [(node, node.quantizer) for node in nodes(qm)]
    try:
        for node, q in saved:
            node.quantizer = QuantDequant(q) if q is not None and q.quantizing else None
        yield qm
    finally:
        for node, q in saved:
            node.quantizer = q
