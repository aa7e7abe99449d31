r"""The ledger's rules for the Quantizable Transformers claims (QT-3 … QT-7), as pure functions of result rows.

A row is anything with the fields ``ppl_fp``, ``ppl_w8a8``, ``max_inf_norm`` and ``avg_kurtosis`` (a pandas
row of a chapter's table, or a dict). The rules (the claims ledger, ``book/claims.md``):

* **fixes** (QT-3, QT-5): a variant *fixes* the vanilla model when

  .. math:: \lVert x\rVert^{v}_\infty < \lVert x\rVert^{0}_\infty,\quad \bar\kappa^{v} < \bar\kappa^{0},\quad
            \mathrm{ppl}^{v}_{FP} \le 1.05\,\mathrm{ppl}^{0}_{FP},\quad
            \mathrm{ppl}^{v}_{W8A8} - \mathrm{ppl}^{v}_{FP} < \mathrm{ppl}^{0}_{W8A8} - \mathrm{ppl}^{0}_{FP}.

* **closer to vanilla** (QT-4): ζ > 1 alone is "close to vanilla" when, for both outlier statistics,
  :math:`|\log(s_\zeta / s_0)| < |\log(s_\gamma / s_0)|` — it moves them less than γ < 0 does.
* **one α across lengths** (QT-6): some α lowers the max inf-norm below vanilla's at the same T for at least
  two sequence lengths.
* **robust π_init** (QT-7): at least two initial gate probabilities give a lower max inf-norm than vanilla
  and an FP perplexity within 5 % of vanilla's.

Whether a rule may be applied at all is :mod:`outlierbook.outlier_precondition`'s question.
"""

from __future__ import annotations

import math

STATISTICS = ("max_inf_norm", "avg_kurtosis")
FP_TOLERANCE = 1.05


def _get(row, key: str) -> float:
    return float(row[key])


def summary(row, keys=("ppl_fp", "max_inf_norm", "avg_kurtosis", "ppl_w8a8")) -> dict:
    """The row's outcome, rounded for a claim record."""
    return {k: round(_get(row, k), 3) for k in keys}


def statistics(row) -> dict:
    """The two statistics the outliers-present precondition reads."""
    return {k: _get(row, k) for k in STATISTICS}


def fixes(variant, vanilla) -> bool:
    """QT-3 / QT-5: lower max inf-norm and kurtosis, FP perplexity within 5 %, a smaller W8A8 gap."""
    return bool(all(_get(variant, k) < _get(vanilla, k) for k in STATISTICS)
                and _get(variant, "ppl_fp") <= FP_TOLERANCE * _get(vanilla, "ppl_fp")
                and _get(variant, "ppl_w8a8") - _get(variant, "ppl_fp")
                < _get(vanilla, "ppl_w8a8") - _get(vanilla, "ppl_fp"))


def closer_to_vanilla(zeta_only, gamma_only, vanilla) -> bool:
    """QT-4: (0, ζ>1) moves both outlier statistics less (on the log scale) than (γ<0, 1) does."""
    return all(abs(math.log(_get(zeta_only, k) / _get(vanilla, k)))
               < abs(math.log(_get(gamma_only, k) / _get(vanilla, k))) for k in STATISTICS)


def lowered_at(clipped_rows, vanilla_by_length) -> dict[float, list[int]]:
    """QT-6's evidence: per α, the sequence lengths T at which it lowers the max inf-norm below vanilla's at T.

    ``clipped_rows`` iterates rows with ``alpha``, ``seq_len`` and ``max_inf_norm``; ``vanilla_by_length``
    maps T to vanilla's row."""
    out: dict[float, list[int]] = {}
    for r in clipped_rows:
        T = int(_get(r, "seq_len"))
        out.setdefault(float(_get(r, "alpha")), [])
        if _get(r, "max_inf_norm") < _get(vanilla_by_length[T], "max_inf_norm"):
            out[float(_get(r, "alpha"))].append(T)
    return out


def one_alpha(lowered: dict[float, list[int]], lengths=None) -> list[float]:
    """QT-6: the α values that lower the outliers at ≥ 2 sequence lengths (of ``lengths`` if given)."""
    allowed = None if lengths is None else set(lengths)
    return [a for a, Ts in lowered.items() if len([T for T in Ts if allowed is None or T in allowed]) >= 2]


def robust_pi_inits(gate_rows, vanilla) -> list[float]:
    """QT-7's evidence: the π_init values with a lower max inf-norm than vanilla and FP perplexity within 5 %."""
    return [float(_get(r, "pi_init")) for r in gate_rows
            if _get(r, "max_inf_norm") < _get(vanilla, "max_inf_norm")
            and _get(r, "ppl_fp") <= FP_TOLERANCE * _get(vanilla, "ppl_fp")]
