r"""NAQ's low-precision path (notes §4.2): symmetric signed quantization, fixed input range, per-row weights.

$q_{\max} = 2^{b-1}-1$; inputs use the fixed scale $s = M/q_{\max}$ (everything beyond $\pm M$ clips; at
4 bits and $M=4$ the step is $4/7$); weights use per-row absmax scales; the bias uses the input's scale.
$\hat x = s\cdot\mathrm{clamp}(\mathrm{round}(x/s), -q_{\max}-1, q_{\max})$.
"""

from __future__ import annotations

import torch

from ..quant.quantizer import check_bits


def _q(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / scale), -qmax - 1, qmax) * scale


def quantize_fixed(x: torch.Tensor, bits: int = 4, max_value: float = 4.0) -> torch.Tensor:
    """Symmetric quantization with the fixed range ±``max_value``."""
    check_bits(bits)
    return _q(x, torch.tensor(max_value / (2 ** (bits - 1) - 1)), bits)


def quantize_rows(w: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Symmetric per-row (output channel) absmax quantization of a weight matrix."""
    check_bits(bits)
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / (2 ** (bits - 1) - 1)
    return _q(w, scale, bits)


def low_precision_linear(x: torch.Tensor, linear: torch.nn.Linear, bits: int = 4, max_value: float = 4.0):
    """$(\\hat x \\hat W^\\top, \\hat b)$: the low-precision product and the bias on the input's grid."""
    product = quantize_fixed(x, bits, max_value) @ quantize_rows(linear.weight, bits).T
    bias = None if linear.bias is None else quantize_fixed(linear.bias, bits, max_value)
    return product, bias
