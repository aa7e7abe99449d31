r"""The ledger's rules for Bondarenko et al. 2021 (PEG-1 … PEG-7), as pure functions of averaged results.

Each rule takes a Series of scores averaged over tasks (index: the table's row labels, values in metric
points) — :meth:`outlierbook.competence.Averages.verdicts` applies it under the competence precondition and
under the old rule. With :math:`m(\cdot)` the averaged score:

* PEG-1 (activations, not weights, are the problem): :math:`m_{FP} - m_{W8A32} \le 0.5` and
  :math:`m_{FP} - m_{W32A8} > m_{FP} - m_{W8A32}`.
* PEG-2 (the FFN's residual sum is the worst node): leaving it in FP recovers the most of any single
  leave-one-out row.
* PEG-4 (mixed precision recovers FP): :math:`m_{FP} - m_{MP} \le 1`.
* PEG-5 (ledger change 2026-11-29): K = 6 with permutation within 1 point of per-embedding PTQ whose ranges
  come from ≥ 16 sequences, and K = 3 + P above K = 3. The old rule: K = 6 + P recovers ≥ 90 % of the
  per-tensor W8A8 gap, and K = 3 + P above K = 3.
* PEG-7 (low-bit QAT): :math:`m_{FP} - m_{W4A8} \le 2` and :math:`m_{W4A8} - m_{W4A8,\,2\text{-bit emb}} \le 1`.
"""

from __future__ import annotations

FFN_RESIDUAL_KEPT = "all, except residual connections after FFN"
BASELINE_ROWS = ("none (FP32 model)", "all")
PEG6_K, PEG3_K, PEG3_BARE = "6 + P (only FFN)", "3 + P (only FFN)", "3 (only FFN)"
PER_TENSOR = "1 (=per-tensor)"
MIXED_PRECISION = "MP-PTQ*†‡"


def peg1(v) -> bool:
    """PEG-1: weight-only quantization is nearly free and activation-only quantization costs more."""
    return bool(v["FP32"] - v["W8A32"] <= 0.5 and v["FP32"] - v["W32A8"] > v["FP32"] - v["W8A32"])


def recoveries(v):
    """PEG-2's evidence: each leave-one-out row's recovery over quantizing everything (points)."""
    return v.drop(list(BASELINE_ROWS)) - v["all"]


def peg2(v) -> bool:
    """PEG-2: keeping the residual sum after the FFN in FP recovers the most."""
    return recoveries(v).idxmax() == FFN_RESIDUAL_KEPT


def peg4(v) -> bool:
    """PEG-4: mixed-precision PTQ within 1 point of FP."""
    return bool(v["FP32"] - v[MIXED_PRECISION] <= 1.0)


def peg5(v, reference: str) -> bool:
    """PEG-5 (current rule): K = 6 + P within 1 point of ``reference`` (per-embedding from ≥ 16 sequences)
    and the permutation helps at K = 3."""
    return bool(abs(v[PEG6_K] - v[reference]) <= 1.0 and v[PEG3_K] > v[PEG3_BARE])


def gap_recovered(v) -> float:
    """Share of the per-tensor W8A8 gap that K = 6 + P recovers: $(v_{K6+P} - v_{1}) / (v_{FP} - v_{1})$
    (NaN when there is no gap)."""
    gap = v["FP32"] - v[PER_TENSOR]
    return float((v[PEG6_K] - v[PER_TENSOR]) / gap) if gap > 0 else float("nan")


def peg5_old(v) -> bool:
    """PEG-5 before 2026-11-29: K = 6 + P recovers ≥ 90 % of the per-tensor W8A8 gap, and K = 3 + P > K = 3."""
    return bool(gap_recovered(v) >= 0.9 and v[PEG3_K] > v[PEG3_BARE])


def peg7(v) -> bool:
    """PEG-7: W4A8 QAT within 2 points of FP, and 2-bit embeddings cost at most 1 more point."""
    return bool(v["FP32"] - v["W4A8 QAT"] <= 2.0 and v["W4A8 QAT"] - v["W4A8, 2-bit embd. QAT"] <= 1.0)
