r"""Quantization error of one tensor: rounding versus clipping, estimators, granularities.

For a range $[a, b]$ and step $s$, the error of $\hat x$ splits into **rounding** error of the
values inside the range, at most $s/2$ each and $\approx s^2/12$ in mean square when values are
spread over many steps, and **clipping** error $(x-b)^2$ or $(x-a)^2$ of the values outside it.
Shrinking the range trades one for the other.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..quant.estimators import make_estimator
from ..quant.fake_quant import FakeQuantizer
from ..quant.granularity import Granularity
from ..quant.quantizer import Grid, fake_quantize, qparams


def error_split(x: torch.Tensor, lo, hi, grid: Grid) -> dict:
    """Mean squared error of quantizing ``x`` on ``[lo, hi]``, split into rounding and clipping parts."""
    scale, zero = qparams(torch.as_tensor(lo), torch.as_tensor(hi), grid)
    xq = fake_quantize(x, scale, zero, grid.qmin, grid.qmax)
    err = (xq - x) ** 2
    lo_q, hi_q = (grid.qmin - zero) * scale, (grid.qmax - zero) * scale
    inside = (x >= lo_q) & (x <= hi_q)
    n = x.numel()
    return {"mse": float(err.mean()), "rounding": float(err[inside].sum() / n), "clipping": float(err[~inside].sum() / n),
            "clipped_share": float((~inside).float().mean()), "step": float(scale)}


def clipping_sweep(x: torch.Tensor, bits=(4, 6, 8), alphas=None, symmetric: bool = False) -> pd.DataFrame:
    """Error against the clipping range ``alpha * [min, max]`` for several bit-widths."""
    alphas = torch.logspace(-2.5, 0, 60) if alphas is None else torch.as_tensor(alphas)
    lo, hi = float(x.min()), float(x.max())
    rows = []
    for b in bits:
        grid = Grid(b, symmetric)
        for a in alphas.tolist():
            rows.append({"bits": b, "alpha": a, "clip_hi": a * hi, **error_split(x, a * lo, a * hi, grid)})
    return pd.DataFrame(rows)


def estimator_choices(x: torch.Tensor, estimators: dict, bits: int = 6, batch_rows: int | None = None) -> pd.DataFrame:
    """Range each estimator picks for ``x`` (fed in batches of ``batch_rows`` tokens) and its 6-bit error."""
    grid = Grid(bits, False)
    rows = []
    chunks = [x] if batch_rows is None else list(torch.split(x, batch_rows))
    for label, spec in estimators.items():
        fq = FakeQuantizer(grid, make_estimator(spec))
        for chunk in chunks:
            fq.observe(chunk)
        lo, hi = fq.estimator.compute()
        rows.append({"estimator": label, "min": float(lo), "max": float(hi), **error_split(x, lo, hi, grid)})
    return pd.DataFrame(rows)


def range_permutation(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """PEG's range-based permutation: channel indices sorted by their range $r_j = \\max_j - \\min_j$."""
    xc = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return torch.argsort(xc.amax(1) - xc.amin(1), stable=True)


def granularity_errors(x: torch.Tensor, bits=(6, 8), groups=(3, 6)) -> pd.DataFrame:
    """MSE of per-tensor, per-group (K, with and without range permutation) and per-channel quantization
    of a ``[tokens, channels]`` tensor along its last axis (min-max ranges)."""
    perm = range_permutation(x)
    configs = {"per-tensor": Granularity()}
    for k in groups:
        configs[f"per-group K={k}"] = Granularity(axis=-1, groups=k)
        configs[f"per-group K={k} + permutation"] = Granularity(axis=-1, groups=k, permutation=perm)
    configs["per-channel (per-embedding)"] = Granularity(axis=-1)
    rows = []
    for b in bits:
        for label, gran in configs.items():
            fq = FakeQuantizer(Grid(b, False), "all_minmax", gran)
            fq.observe(x)
            fq.fix()
            fq.quantizing = True
            rows.append({"bits": b, "granularity": label, "mse": float(((fq(x) - x) ** 2).mean())})
    return pd.DataFrame(rows)


def outlier_profile(acts: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per node: max |x|, std, their ratio, and the hidden dimension holding the max."""
    rows = []
    for name, x in acts.items():
        if x.dim() != 2:
            continue
        amax = x.abs().amax(0)
        rows.append({"node": name, "max_abs": float(amax.max()), "std": float(x.std()),
                     "max_over_std": float(amax.max() / x.std()), "argmax_dim": int(amax.argmax())})
    return pd.DataFrame(rows).sort_values("max_over_std", ascending=False, kind="stable").reset_index(drop=True)
