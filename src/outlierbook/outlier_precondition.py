r"""The ledger's *outliers present* precondition (QT-3 … QT-7).

A fix for outliers can only be seen to work on a model that has outliers. The ledger fixes the rule
on the vanilla (baseline) model's two statistics of the 2023 paper, computed as
:func:`outlierbook.analysis.lm_outliers.outlier_stats` computes them:

.. math:: \text{present} \iff \max_s \lVert x_s \rVert_\infty \ge 20
          \ \wedge\ \overline{\operatorname{kurt}}(x) \ge 20

(the paper's vanilla BERT-base: 735 and 3 076; a Gaussian's kurtosis is 3). A claim whose vanilla
model fails it is "not testable here" on that model, with the measured statistics as the reason.
"""

from __future__ import annotations

from collections.abc import Mapping

MIN_MAX_INF_NORM = 20.0
MIN_AVG_KURTOSIS = 20.0


def _stat(stats: Mapping, key: str) -> float:
    if key not in stats:
        raise KeyError(f"outlier statistics lack {key!r}: pass the dict of analysis.lm_outliers.outlier_stats "
                       "(keys max_inf_norm and avg_kurtosis)")
    return float(stats[key])


def present(stats: Mapping) -> bool:
    """Whether a vanilla model's ``max_inf_norm`` and ``avg_kurtosis`` both reach the ledger's thresholds."""
    return _stat(stats, "max_inf_norm") >= MIN_MAX_INF_NORM and _stat(stats, "avg_kurtosis") >= MIN_AVG_KURTOSIS


def describe(stats: Mapping, model: str) -> str:
    """One clause for a claim's note: the measured statistics of ``model`` and whether they meet the rule."""
    verdict = "outliers present" if present(stats) else "no outliers to fix"
    return (f"{model}: max inf-norm {_stat(stats, 'max_inf_norm'):.1f}, avg kurtosis "
            f"{_stat(stats, 'avg_kurtosis'):.1f} ({verdict}; precondition: both ≥ {MIN_MAX_INF_NORM:g})")


def gated(holds: bool | None, baselines: Mapping[str, Mapping]) -> bool | None:
    """A verdict under the precondition: ``None`` (not testable here) unless every baseline in ``baselines``
    (name → statistics) has outliers; otherwise ``holds`` unchanged."""
    if not baselines:
        raise ValueError("gated needs at least one baseline model's statistics")
    return holds if all(present(s) for s in baselines.values()) else None
