r"""The fake quantizer: a grid, a granularity and a range estimator, with observe / quantize toggles.

``observe(x)`` feeds the estimator; ``fix()`` turns its range into scale and zero point;
``forward(x)`` returns $\hat x$ when quantizing is on and $x$ otherwise. Ranges can be made
learnable (``make_learnable``): LSQ learns the scale, LSQ+ also the zero point (rounded with a
straight-through estimator), with LSQ's gradient scaling $g = 1/\sqrt{N\,q_{\max}}$ where $N$ is
the number of elements sharing one scale. PACT (``make_pact``) instead learns the clipping bounds
$[l, u]$ themselves: $\hat x = \mathrm{clip}(x, l, u)$ rounded with a straight-through estimator, so
$\partial \hat x/\partial u = \mathbb 1[x > u]$ and $\partial \hat x/\partial l = \mathbb 1[x < l]$.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError, OutlierBookError
from .estimators import RangeEstimator, make_estimator
from .granularity import Granularity
from .quantizer import Grid, fake_quantize, qparams, round_ste
from .state import adopt_unset_buffers


class NaNActivationError(OutlierBookError, ValueError):
    pass


def grad_scale(t: torch.Tensor, g: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``g`` (LSQ)."""
    return (t - t * g).detach() + t * g


def _switch(index: int, doc: str) -> property:
    """A boolean view of one entry of the ``switches`` buffer."""

    def get(self) -> bool:
        return bool(self.switches[index])

    def set(self, on: bool) -> None:
        self.switches[index] = bool(on)

    return property(get, set, doc=doc)


class FakeQuantizer(nn.Module):
    def __init__(self, grid: Grid, estimator="current_minmax", granularity: Granularity | None = None, name: str = ""):
        super().__init__()
        self.grid = grid
        self.register_buffer("permutation", None)
        self.granularity = granularity or Granularity()
        self.name = name
        self.estimator: RangeEstimator = make_estimator(estimator)
        if hasattr(self.estimator, "bind"):
            self.estimator.bind(grid)
        # The switches are module state (like torch.ao's fake_quant_enabled / observer_enabled buffers),
        # so a calibrated model's mode travels with its state_dict.
        self.register_buffer("switches", torch.zeros(2, dtype=torch.uint8))
        self.learnable = False
        self.pact = False
        self.lsq_grad_scaling = True
        self.register_buffer("scale", None)
        self.register_buffer("zero", None)

    # --------------------------------------------------------------- state
    observing = _switch(0, "True while calibration feeds the estimator")
    quantizing = _switch(1, "True while forward returns the quantized tensor")

    @property
    def granularity(self) -> Granularity:
        return self._granularity

    @granularity.setter
    def granularity(self, g: Granularity) -> None:
        self._granularity = g
        self.permutation = None if g.permutation is None else g.permutation.detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A calibrated state loads into an uncalibrated quantizer: ranges and a permutation not set yet
        (``None`` buffers, which ``nn.Module`` would skip) are taken from the state."""
        adopt_unset_buffers(self, state_dict, prefix)
        if state_dict.get(prefix + "permutation") is not None:
            from dataclasses import replace

            self._granularity = replace(self._granularity, permutation=self._buffers["permutation"])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # --------------------------------------------------------------- observe / fix
    def observe(self, x: torch.Tensor) -> None:
        if torch.isnan(x).any():
            raise NaNActivationError(
                f"NaN values reached quantization node {self.name or '?'}; check the input data and the model "
                "(a NaN in calibration data poisons every range)"
            )
        if getattr(self.estimator, "token_wise", False):
            if self.granularity.axis is not None:
                raise ConfigError(f"node {self.name}: token-wise clipping gives one per-tensor range")
            self.estimator.update(x.detach().reshape(-1, x.shape[-1]))
        else:
            try:
                rows = self.granularity.rows(x.detach())
            except ConfigError as exc:
                raise ConfigError(f"node {self.name or '?'}: {exc}") from None
            self.estimator.update(rows)

    def fix(self) -> None:
        """Compute scale and zero point from the estimator's range."""
        try:
            lo, hi = self.estimator.compute()
        except OutlierBookError as exc:
            raise OutlierBookError(f"node {self.name or '?'}: {exc}") from None
        scale, zero = qparams(lo, hi, self.grid)
        self.set_qparams(scale, zero)

    def set_qparams(self, scale: torch.Tensor, zero: torch.Tensor) -> None:
        if self.pact:
            with torch.no_grad():
                self.lo_param.copy_((self.grid.qmin - zero) * scale)
                self.hi_param.copy_((self.grid.qmax - zero) * scale)
        elif self.learnable:
            with torch.no_grad():
                self.scale_param.copy_(scale)
                self.zero_param.copy_(zero)
        else:
            self.scale, self.zero = scale.detach().clone(), zero.detach().clone()

    def set_range(self, lo, hi) -> None:
        self.set_qparams(*qparams(torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32), self.grid))

    @property
    def calibrated(self) -> bool:
        return self.learnable or self.scale is not None

    def reset(self) -> None:
        self.estimator.reset()

    # --------------------------------------------------------------- learnable ranges
    def make_learnable(self, zero_point: bool = True, grad_scaling: bool = True) -> None:
        """LSQ (scale) / LSQ+ (scale and zero point) parameters initialised from the current range."""
        if not self.calibrated:
            raise OutlierBookError(f"node {self.name}: calibrate before making ranges learnable")
        scale, zero = self.scale, self.zero
        self.scale_param = nn.Parameter(scale.clone())
        self.zero_param = nn.Parameter(zero.clone(), requires_grad=zero_point and not self.grid.symmetric)
        self.learnable, self.lsq_grad_scaling = True, grad_scaling
        self.scale = self.zero = None

    def make_pact(self) -> None:
        """PACT: learnable clipping bounds ``lo_param``/``hi_param`` initialised from the current range."""
        if not self.calibrated or self.learnable:
            raise OutlierBookError(f"node {self.name}: PACT starts from a calibrated, non-learnable range")
        if self.granularity.axis is not None:
            raise ConfigError(f"node {self.name}: PACT learns one per-tensor clipping range")
        scale, zero = self.scale, self.zero
        self.lo_param = nn.Parameter(((self.grid.qmin - zero) * scale).clone())
        self.hi_param = nn.Parameter(((self.grid.qmax - zero) * scale).clone())
        self.pact = self.learnable = True
        self.scale = self.zero = None

    def range_parameters(self) -> list[nn.Parameter]:
        """The trainable range parameters (LSQ/LSQ+: scale, zero point; PACT: the two bounds)."""
        if not self.learnable:
            return []
        params = (self.lo_param, self.hi_param) if self.pact else (self.scale_param, self.zero_param)
        return [p for p in params if p.requires_grad]

    def current_qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pact:
            return qparams(self.lo_param.detach(), self.hi_param.detach(), self.grid)
        if not self.learnable:
            return self.scale, self.zero
        scale, zero = self.scale_param, self.zero_param
        if self.lsq_grad_scaling:
            per_scale = x.numel() / max(scale.numel(), 1)
            g = 1.0 / math.sqrt(per_scale * self.grid.qmax)
            scale, zero = grad_scale(scale, g), grad_scale(zero, g)
        scale = scale.abs().clamp(min=1e-8)
        zero = torch.clamp(round_ste(zero), self.grid.qmin, self.grid.qmax)
        return scale, zero

    # --------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            return x
        if not self.calibrated:
            raise OutlierBookError(f"node {self.name or '?'} is set to quantize but has no range; calibrate first")
        if self.pact:
            lo, hi = self.lo_param, self.hi_param
            clipped = torch.minimum(torch.maximum(x, lo), hi)
            scale, zero = self.current_qparams(x)
            return clipped + (fake_quantize(clipped, scale, zero, self.grid.qmin, self.grid.qmax) - clipped).detach()
        scale, zero = self.current_qparams(x)
        g = self.granularity
        return fake_quantize(x, g.expand(scale, x), g.expand(zero, x), self.grid.qmin, self.grid.qmax)

    def extra_repr(self) -> str:
        sym = "sym" if self.grid.symmetric else "asym"
        return f"{self.name}: {self.grid.bits}-bit {sym} {self.granularity.kind}, {self.estimator!r}"
