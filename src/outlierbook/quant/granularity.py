r"""Quantization granularity: which elements share one scale and zero point.

Every granularity is expressed as a view of the tensor as **rows** ``[G, N]``, one row per set of
shared quantization parameters, so that every range estimator is written once for rows:

- per-tensor: ``G = 1``;
- per-channel along ``axis``: ``G = C`` (size of that axis);
- per-group (PEG, Bondarenko et al. 2021, Eq. 5): ``G = K`` groups of ``C/K`` contiguous channels,
  optionally after a **permutation** $\pi$ of the channels (``permutation[j]`` is the channel placed at
  position ``j``), so that channel $\pi(j)$ belongs to group $\lfloor j K / C\rfloor$.

``expand`` maps per-row parameters back to a tensor that broadcasts against ``x``.
K = 1 is per-tensor and K = C without permutation is per-channel (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


def group_counts(width: int, wanted=(3, 6)) -> tuple[int, ...]:
    """For each wanted K, the divisor of ``width`` nearest to it (ties: the larger), without repeats.

    Group counts must divide the width; the book's defaults K = 3, 6 divide 384 and 768 but not, say,
    64 or 1024, where this gives K = 4, 8.
    """
    if width < 1:
        raise ConfigError(f"width must be positive, got {width}")
    divisors = [k for k in range(1, width + 1) if width % k == 0]
    out: list[int] = []
    for k in wanted:
        best = min(divisors, key=lambda d: (abs(d - k), -d))
        if best not in out:
            out.append(best)
    return tuple(out)


@dataclass
class Granularity:
    axis: int | None = None
    groups: int | None = None
    permutation: torch.Tensor | None = None

    def __post_init__(self):
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int)):
            raise ConfigError(f"axis must be an int (e.g. -1 for the hidden dimension) or None (per-tensor), got {self.axis!r}")
        if self.groups is not None and (isinstance(self.groups, bool) or not isinstance(self.groups, int)):
            raise ConfigError(f"number of groups must be an int, got {self.groups!r}")
        if self.groups is not None and self.axis is None:
            raise ConfigError("per-group quantization needs an axis (e.g. axis=-1 for the hidden dimension)")
        if self.groups is not None and self.groups < 1:
            raise ConfigError(f"number of groups must be >= 1, got {self.groups}")

    @property
    def kind(self) -> str:
        if self.axis is None:
            return "per-tensor"
        return "per-channel" if self.groups is None else f"per-group(K={self.groups}{'+P' if self.permutation is not None else ''})"

    def check_axis(self, x: torch.Tensor) -> int:
        """The axis as a non-negative index into ``x``; a one-line error if ``x`` has no such axis."""
        if not -x.dim() <= self.axis < x.dim():
            raise ConfigError(f"axis {self.axis} does not exist in a {x.dim()}-d tensor of shape {tuple(x.shape)}; "
                              f"use an axis from {-x.dim()} to {x.dim() - 1} (-1: the hidden dimension)")
        return self.axis % x.dim()

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        xc = x.movedim(self.check_axis(x), 0)
        if self.permutation is not None:
            if self.permutation.numel() != xc.shape[0]:
                raise ConfigError(f"permutation has {self.permutation.numel()} entries for {xc.shape[0]} channels")
            xc = xc[self.permutation]
        return xc

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[G, N]`` view of ``x`` (a copy where reordering is needed)."""
        if self.axis is None:
            return x.reshape(1, -1)
        xc = self._channels_first(x)
        channels = xc.shape[0]
        if self.groups is None:
            return xc.reshape(channels, -1)
        if channels % self.groups:
            raise ConfigError(f"{channels} channels cannot be split into {self.groups} equal groups")
        return xc.reshape(self.groups, -1)

    def n_rows(self, x: torch.Tensor) -> int:
        if self.axis is None:
            return 1
        return self.groups if self.groups is not None else x.shape[self.check_axis(x)]

    def expand(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-row values -> a tensor broadcastable against ``x``."""
        if self.axis is None:
            return values.reshape(())
        axis = self.check_axis(x)
        channels = x.shape[axis]
        if self.groups is None:
            per_channel = values
        else:
            in_order = values.repeat_interleave(channels // self.groups)
            if self.permutation is None:
                per_channel = in_order
            else:
                per_channel = torch.empty_like(in_order)
                per_channel[self.permutation] = in_order
        shape = [1] * x.dim()
        shape[axis] = channels
        return per_channel.reshape(shape)
