r"""The book's quantizers in the form integer runtimes read: QuantizeLinear / DequantizeLinear pairs.

ONNX's ``QuantizeLinear`` computes $q = \operatorname{sat}(\lfloor x/s \rceil + z)$ (rounding half to even)
on ``uint8`` $[0, 255]$ or ``int8`` $[-128, 127]$, and ``DequantizeLinear`` gives $\hat x = (q - z)\,s$: on an
8-bit grid that is exactly the book's quantizer (:func:`outlierbook.quant.quantizer.fake_quantize`), so a
model whose nodes are replaced by :class:`QuantDequant` computes the same function and exports to a graph
with a Q/DQ pair at every node, carrying *our* scale and zero point. A runtime then fuses
$\text{DQ}(q_x)\cdot\text{DQ}(q_W)$ into one integer product,

$$\hat x \hat W^\top = s_x s_W \Big(\sum_k (q_{x,k} - z_x)\, q_{W,k}\Big),$$

accumulated exactly in int32 and rescaled once. The factorisation needs one activation scale $s_x$ for the
whole row (per-tensor activations) and one weight scale per output channel. Per-embedding-group activations
(PEG) do not factor this way; :mod:`outlierbook.deploy.grouped` splits each Linear that reads them into one
integer product per group.
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

    def __init__(self, quantizer: FakeQuantizer, channels: int | None = None):
        super().__init__()
        self.name = quantizer.name
        self.qmin, self.qmax = quantizer.grid.qmin, quantizer.grid.qmax
        self.axis = quantizer.granularity.axis
        scale, zero = quantizer.current_qparams(torch.empty(1))
        scale, zero = scale.detach().float(), zero.detach().float()
        if quantizer.granularity.groups is not None:  # per group -> per channel: each channel its group's values
            if channels is None:
                raise ConfigError(f"node {quantizer.name} is per-group: give the width of its tensor (channels=)")
            shape_of = torch.empty(channels)
            g = quantizer.granularity
            g = type(g)(axis=-1, groups=g.groups, permutation=g.permutation)
            scale, zero = g.expand(scale.reshape(-1), shape_of), g.expand(zero.reshape(-1), shape_of)
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
        if q.granularity.groups is not None and q.granularity.axis != -1 and not node.name.startswith("weight:"):
            raise ConfigError(f"node {q.name} has groups along axis {q.granularity.axis}; the grouped-Linear export "
                              "takes groups of the last (embedding) axis only: use axis=-1")
        if q.granularity.groups is not None and node.name.startswith("weight:"):
            raise ConfigError(f"weight {q.name} has per-group ranges; integer kernels take weights per output "
                              "channel or per tensor")
        if q.pact:
            raise ConfigError(f"node {q.name} uses PACT clipping bounds; freeze them into a scale first")


@contextlib.contextmanager
def qdq_form(qm):
    """Within the block, every quantizing node of ``qm`` is a :class:`QuantDequant` (every other one is off);
    the original quantizers are put back afterwards, whatever happens."""
    from .grouped import channels_of, grouped_readers

    check_exportable(qm)
    saved = [(node, node.quantizer) for node in nodes(qm)]
    try:
        for node, q in saved:
            if q is None or not q.quantizing:
                node.quantizer = None
            elif q.granularity.groups is not None:  # a per-group activation (PEG)
                node.quantizer = QuantDequant(q, channels=channels_of(qm.parts, node))
            else:
                node.quantizer = QuantDequant(q)
        weight_qdqs = {qm.parts.weights[name[len("weight:"):]]: node.quantizer
                       for name, node in qm.weight_nodes.items()}
        with grouped_readers(qm, dict(saved), weight_qdqs):
            yield qm
    finally:
        for node, q in saved:
            node.quantizer = q
