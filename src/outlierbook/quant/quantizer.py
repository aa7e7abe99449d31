r"""The uniform affine quantizer, with a straight-through estimator.

For bit-width $b$, scale $s>0$ and integer zero point $z$ (Eq. 1–2 of each paper):

$$x_{\mathbb Z} = \operatorname{clip}\big(\lfloor x/s \rceil + z;\ q_{\min}, q_{\max}\big),\qquad
\hat x = s\,(x_{\mathbb Z} - z).$$

Grids:

- **asymmetric**: $[q_{\min}, q_{\max}] = [0, 2^b-1]$, $s = (x_{\max}-x_{\min})/(2^b-1)$,
  $z = \operatorname{clip}(\lfloor -x_{\min}/s \rceil, 0, 2^b-1)$. The range is first widened to contain 0
  ($x_{\min}\le 0 \le x_{\max}$) so that zero is exactly representable (padding, ReLU zeros).
- **symmetric**: $z=0$, $[q_{\min}, q_{\max}] = [-2^{b-1}, 2^{b-1}-1]$ and
  $s = \max(|x_{\min}|, |x_{\max}|)/D$ where the two codebases differ on $D$:
  ``scale_rule="qualcomm"`` (Bondarenko et al.) uses $D = 2^{b-1}-1$ (127 at 8 bits, the positive
  extreme lands on the grid); ``scale_rule="os"`` (Outlier Suppression) uses $D = (2^b-1)/2$
  (127.5 at 8 bits: the positive extreme rounds to $2^{b-1}$ and is clipped half a step).
  For a non-negative tensor the Qualcomm code switches to an unsigned grid
  ($[0, 2^b-1]$, $s=x_{\max}/(2^b-1)$); ``unsigned=True`` selects that.

Rounding is half-to-even (``torch.round``). The straight-through estimator passes the gradient of
the rounding unchanged: $\partial\lfloor u\rceil/\partial u := 1$.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

MIN_BITS, MAX_BITS = 2, 16
SCALE_RULES = ("qualcomm", "os")
EPS = 1e-8


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"bit-width {bits!r} is outside {MIN_BITS}–{MAX_BITS}; use an integer in that range "
                          "(or 'fp32' to leave a node unquantized)")
    return bits


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even) with a straight-through gradient."""
    return (torch.round(x) - x).detach() + x


@dataclass(frozen=True)
class Grid:
    """An integer grid: bit-width, symmetric or not, the symmetric scale rule."""

    bits: int = 8
    symmetric: bool = False
    scale_rule: str = "qualcomm"
    unsigned: bool = False  # symmetric only: non-negative input on [0, 2^b - 1]

    def __post_init__(self):
        check_bits(self.bits)
        if self.scale_rule not in SCALE_RULES:
            raise ConfigError(f"unknown scale rule {self.scale_rule!r}; use one of {SCALE_RULES}")

    @property
    def qmin(self) -> int:
        return 0 if (not self.symmetric or self.unsigned) else -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1 if (not self.symmetric or self.unsigned) else 2 ** (self.bits - 1) - 1

    @property
    def levels(self) -> int:
        return 2 ** self.bits


def qparams(x_min: torch.Tensor, x_max: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and (float-valued, integer) zero point from a range; broadcasts over groups."""
    x_min = torch.clamp(torch.as_tensor(x_min, dtype=torch.float32), max=0.0)
    x_max = torch.clamp(torch.as_tensor(x_max, dtype=torch.float32), min=0.0)
    if not grid.symmetric:
        scale = torch.clamp((x_max - x_min) / (2 ** grid.bits - 1), min=EPS)
        zero = torch.clamp(torch.round(-x_min / scale), grid.qmin, grid.qmax)
        return scale, zero
    absmax = torch.maximum(-x_min, x_max)
    if grid.unsigned:
        denom = 2 ** grid.bits - 1
    elif grid.scale_rule == "qualcomm":
        denom = 2 ** (grid.bits - 1) - 1
    else:
        denom = (2 ** grid.bits - 1) / 2
    scale = torch.clamp(absmax / denom, min=EPS)
    return scale, torch.zeros_like(scale)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """$\\hat x = s(\\operatorname{clip}(\\lfloor x/s\\rceil + z, q_{min}, q_{max}) - z)$ with STE rounding.

    ``scale`` and ``zero`` must broadcast against ``x``. Gradients flow to ``x`` (STE inside the
    range, zero outside) and to ``scale``/``zero`` when they require grad (LSQ/LSQ+).
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or getattr(scale, "requires_grad", False)
                                         or getattr(zero, "requires_grad", False))):
        # Inference: four passes in place instead of eight fresh tensors, bit-identical: round_ste's forward
        # (round(y) - y) + y is exactly round(y) (|round(y) - y| <= 1/2 makes the difference exact, and adding
        # y back gives the representable round(y)), and with an integer-valued z,
        # clamp(round(y) + z, qmin, qmax) - z = clamp(round(y), qmin - z, qmax - z) in exact integer arithmetic.
        y = torch.div(x, scale).round_()
        if zero.numel() == 1:
            z = float(zero)
            y.clamp_(qmin - z, qmax - z)
        else:
            y = torch.maximum(torch.minimum(y, qmax - zero, out=y), qmin - zero, out=y)
        return y.mul_(scale)
    x_int = torch.clamp(round_ste(x / scale) + zero, qmin, qmax)
    return (x_int - zero) * scale
