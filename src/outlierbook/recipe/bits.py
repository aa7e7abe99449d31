r"""Bit-widths in one notation: ``W8A8``, ``W6A6E8`` (embeddings at 8), ``W8A32`` (activations in FP).

``W`` is the bit-width of the Linear weights, ``A`` of the activations, ``E`` of the embedding tables
(``E`` defaults to ``W``); 32 means "not quantized". Outlier Suppression writes the same triple as
W-E-A, e.g. ``6-6-6``; :meth:`Bits.parse` reads both and :attr:`Bits.wea` gives the paper's form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from ..quant.quantizer import check_bits

_NOTATION = re.compile(r"^W(\d+)A(\d+)(?:E(\d+))?$")
_WEA = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _bits(value: int | None) -> int | None:
    if value is None or value == 32:
        return None
    check_bits(value)
    return value


@dataclass(frozen=True)
class Bits:
    """Linear weights, embedding tables, activations (``None``: FP32)."""

    weights: int | None
    embeddings: int | None
    acts: int | None

    def __post_init__(self):
        for name in ("weights", "embeddings", "acts"):
            object.__setattr__(self, name, _bits(getattr(self, name)))

    @classmethod
    def parse(cls, text) -> "Bits":
        if isinstance(text, Bits):
            return text
        text = str(text).strip()
        m = _NOTATION.match(text.upper())
        if m:
            w, a, e = (int(v) if v is not None else None for v in m.groups())
            return cls(w, w if e is None else e, a)
        m = _WEA.match(text)
        if m:
            w, e, a = (int(v) for v in m.groups())
            return cls(w, e, a)
        raise ConfigError(f"bit-widths {text!r} are not understood; write them as W8A8, W6A6E8 (embeddings at 8) "
                          "or Outlier Suppression's W-E-A, e.g. 6-6-6")

    @property
    def name(self) -> str:
        """``W6A6`` (``E`` shown only when it differs from ``W``)."""
        w, e, a = (32 if v is None else v for v in (self.weights, self.embeddings, self.acts))
        return f"W{w}A{a}" + ("" if e == w else f"E{e}")

    @property
    def wea(self) -> str:
        """Outlier Suppression's W-E-A form, e.g. ``6-6-6``."""
        return "-".join(str(32 if v is None else v) for v in (self.weights, self.embeddings, self.acts))

    def __str__(self) -> str:
        return self.name
