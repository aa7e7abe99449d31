r"""Summaries over seeds: a difference smaller than the spread over seeds is not a finding.

For values $v_1,\dots,v_n$ of one setting under $n$ seeds (calibration subsets or training runs):
mean $\bar v = \frac1n\sum_i v_i$, sample standard deviation
$s = \sqrt{\frac{1}{n-1}\sum_i (v_i-\bar v)^2}$ (undefined, NaN, for $n = 1$: one seed shows no spread,
not a spread of zero), and the median, which the 2021 paper reports.
"""

from __future__ import annotations

import math
import statistics


def summarize(values) -> dict:
    """``{"mean", "std", "median", "n_seeds"}`` of the values (std NaN for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarize: run at least one seed")
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return {"mean": statistics.fmean(values), "std": std, "median": statistics.median(values),
            "n_seeds": len(values)}


def mean_pm_std(mean: float, std: float, digits: int = 2) -> str:
    """``"71.03 ± 0.42"``; the mean alone when the std is undefined (one seed)."""
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
