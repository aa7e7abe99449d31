r"""The ledger's rules for Outlier Suppression (OS-7, OS-8), as pure functions of averaged results.

* OS-7 (every component helps, 6-6-6): :math:`m_{MinMax} < m_{MinMax+GM}` and :math:`m_{TWC} < m_{GM+TWC}`.
* OS-8 (the method is the best PTQ): at 6-6-6, GM + TWC is at least every other method (ties count); at
  8-8-8, when run, it is within 1 point of FP. ``v`` is indexed by (bits, method).
"""

from __future__ import annotations

OURS = "Ours (GM + TWC)"
FP_ROW = ("32-32-32", "FP32")


def os7(v) -> bool:
    """OS-7: Gamma Migration helps both MinMax and Token-Wise Clipping."""
    return bool(v["MinMax"] < v["MinMax + GM"] and v["TWC"] < v["GM + TWC"])


def os8_evidence(v) -> dict:
    """The numbers OS-8 is decided on: ours and the best other method at 6-6-6, and the gaps to FP."""
    six = v.xs("6-6-6", level="bits")
    fp = float(v[FP_ROW])
    out = {"6-6-6 ours": float(six[OURS]), "6-6-6 best other": float(six.drop([OURS]).max()),
           "gap to FP (6-6-6)": fp - float(six[OURS])}
    if "8-8-8" in v.index.get_level_values("bits"):
        out["gap to FP (8-8-8 ours)"] = fp - float(v.xs("8-8-8", level="bits")[OURS])
    return out


def os8(v) -> bool:
    """OS-8: best at 6-6-6 (ties count) and, where 8-8-8 ran, within 1 point of FP."""
    e = os8_evidence(v)
    return bool(e["6-6-6 ours"] >= e["6-6-6 best other"] and e.get("gap to FP (8-8-8 ours)", 0.0) <= 1.0)
