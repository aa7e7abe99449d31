r"""Range estimators: observe tensors, then propose a range $[x_{\min}, x_{\max}]$ per row.

One interface (``update(rows)``, ``compute() -> (min, max)``, ``reset()``), where ``rows`` is the
``[G, N]`` view of a tensor (see :mod:`outlierbook.quant.granularity`). The estimator never
quantizes anything itself; the fake quantizer does (the observer / fake-quantize split of
``torch.ao.quantization``).

- ``CurrentMinMax``: min and max of the last batch (Bondarenko et al.'s PTQ default).
- ``RunningMinMax(momentum=0.9)``: $m_t = \mu\,m_{t-1} + (1-\mu)\,\hat m_t$ (Qualcomm's EMA).
- ``AllMinMax``: min and max over every batch.
- ``AvgMinMax``: per-batch min and max averaged over batches (Outlier Suppression's "MinMax").
- ``Percentile(p)``: per-batch $(100-p)$-th and $p$-th percentiles, averaged over batches.
- ``MSE(grid)`` and ``GoldenSectionMSE(grid)`` (OMSE): choose $\alpha\in(0,1]$ minimising
  $\mathbb E[(\hat x_\alpha - x)^2]$ for the range $[\alpha\,x_{\min}, \alpha\,x_{\max}]$, by a grid of 100
  candidates or by golden-section search, on a fixed-size random sample of the observed values
  (plus the extremes). Both codebases search the range differently (Qualcomm: a 1-D or 2-D grid on
  the last batch or accumulated losses; OS: scipy's bounded search averaged over batches); we search
  one shrink factor on pooled samples, which treats every batch alike and is deterministic.
- ``PerBatchOMSE(grid)``: OMSE as the Outlier Suppression authors run it (their ``AvgMSEFastObserver``):
  on **every batch**, on all its values, a bounded scalar search of the range and, for an asymmetric
  grid, a nested search of its shift; the per-batch ranges averaged over batches. Slow by design: it
  is the baseline the paper's calibration timings (OS-9) compare against.

Estimators are modules whose statistics are buffers (``lo``, ``hi``, ``n_updates``), like
``torch.ao.quantization`` observers: they sit in the quantizer's ``state_dict``, so a model saved
half-way through calibration and loaded into a fresh wrapper continues where it stopped. Sample
pools (the MSE family, Token-Wise Clipping's recorded extremes) are not saved: up to $2^{18}$ values
per row per node would make every saved model large; an estimator that needs them says so.
"""

from __future__ import annotations

import inspect

import math

import torch
from torch import nn

from ..errors import ConfigError, OutlierBookError
from .quantizer import Grid, fake_quantize, qparams
from .state import adopt_unset_buffers


class RangeEstimator(nn.Module):
    name = "base"
    token_wise = False  # True: update() receives [tokens, features] instead of granularity rows

    def __init__(self):
        nn.Module.__init__(self)
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("lo", None)
        self.register_buffer("hi", None)
        self.reset()

    def reset(self) -> None:
        self.n_updates = torch.zeros((), dtype=torch.int64)
        self.lo = self.hi = None

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Observe ``rows`` and pass them through (an estimator can sit in a module's forward)."""
        self.update(rows)
        return rows

    def _load_from_state_dict(self, state_dict, prefix, *args):
        adopt_unset_buffers(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def update(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _require_data(self) -> None:
        if self.n_updates == 0:
            raise OutlierBookError(f"the {self.name} range estimator saw no data; calibrate with at least one batch")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _minmax(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = torch.aminmax(rows.detach().float(), dim=1)
    return lo, hi


class CurrentMinMax(RangeEstimator):
    name = "current_minmax"

    def update(self, rows):
        self.lo, self.hi = _minmax(rows)
        self.n_updates += 1

    def compute(self):
        self._require_data()
        return self.lo, self.hi


class AllMinMax(CurrentMinMax):
    name = "all_minmax"

    def update(self, rows):
        lo, hi = _minmax(rows)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.n_updates += 1


class RunningMinMax(CurrentMinMax):
    name = "running_minmax"

    def __init__(self, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        super().__init__()

    def update(self, rows):
        lo, hi = _minmax(rows)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo, self.hi = m * self.lo + (1 - m) * lo, m * self.hi + (1 - m) * hi
        self.n_updates += 1

    def __repr__(self):
        return f"RunningMinMax(momentum={self.momentum})"


class AvgMinMax(CurrentMinMax):
    name = "avg_minmax"

    def update(self, rows):
        lo, hi = _minmax(rows)
        n = self.n_updates
        self.lo = lo if self.lo is None else (self.lo * n + lo) / (n + 1)
        self.hi = hi if self.hi is None else (self.hi * n + hi) / (n + 1)
        self.n_updates += 1


def row_quantile(rows: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile by ``kthvalue`` (``torch.quantile`` refuses large tensors); nearest rank."""
    n = rows.shape[1]
    k = min(max(int(math.ceil(q * n)), 1), n)
    return torch.kthvalue(rows.detach().float(), k, dim=1).values


class Percentile(CurrentMinMax):
    name = "percentile"

    def __init__(self, p: float = 99.99):
        if not 50.0 < p <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {p}")
        self.p = p
        super().__init__()

    def update(self, rows):
        lo, hi = row_quantile(rows, 1 - self.p / 100), row_quantile(rows, self.p / 100)
        n = self.n_updates
        self.lo = lo if self.lo is None else (self.lo * n + lo) / (n + 1)
        self.hi = hi if self.hi is None else (self.hi * n + hi) / (n + 1)
        self.n_updates += 1

    def __repr__(self):
        return f"Percentile(p={self.p})"


class MeanStd(CurrentMinMax):
    r"""LSQ+'s weight initialisation (Bhalgat et al. 2020, §3.2; the authors' ``LSQPlusObserver``): per row,

    .. math:: [\mu - k\sigma,\ \mu + k\sigma], \qquad k = 3,

    so a symmetric grid gets :math:`s = \max(|\mu - 3\sigma|, |\mu + 3\sigma|) / q_{max}` instead of
    :math:`\max|w| / q_{max}`: at 4 bits a min-max scale over weights whose largest value lies ten standard
    deviations out rounds most weights to zero. Meant for weights (one observation); repeated updates keep
    the last."""

    name = "mean_std"

    def __init__(self, k: float = 3.0):
        if not k > 0:
            raise ConfigError(f"mean_std needs k > 0 standard deviations, got {k}")
        self.k = k
        super().__init__()

    def update(self, rows):
        rows = rows.detach().float()
        mean, std = rows.mean(dim=1), rows.std(dim=1, unbiased=False)
        self.lo, self.hi = mean - self.k * std, mean + self.k * std
        self.n_updates += 1

    def __repr__(self):
        return f"MeanStd(k={self.k})"


class _GridBound(RangeEstimator):
    """An estimator whose search quantizes: it needs the quantizer's grid, bound by the quantizer (``bind``)."""

    def __init__(self, grid: Grid | None = None):
        self.grid = grid
        super().__init__()

    def bind(self, grid: Grid) -> "_GridBound":
        self.grid = grid
        return self


class _SampledMSE(_GridBound):
    """Shared machinery: keep the extremes and a seeded random sample of values per row."""

    def __init__(self, grid: Grid | None = None, max_samples: int = 2 ** 18, seed: int = 0):
        self.max_samples = max_samples
        self.seed = seed
        super().__init__(grid)

    def reset(self):
        super().reset()
        self.samples: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(self.seed)

    def update(self, rows):
        rows = rows.detach().float()
        lo, hi = _minmax(rows)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        n = rows.shape[1]
        if n > self.max_samples:
            idx = torch.randint(0, n, (self.max_samples,), generator=self.generator)
            rows = rows[:, idx]
        self.samples.append(rows)
        self.n_updates += 1

    def _pool(self) -> torch.Tensor:
        if not self.samples:
            raise OutlierBookError(f"the {self.name} range estimator's sample pool is not part of a saved state; "
                                   "observe the calibration batches again after loading")
        pooled = torch.cat(self.samples, dim=1)
        if pooled.shape[1] > self.max_samples:
            idx = torch.randint(0, pooled.shape[1], (self.max_samples,), generator=self.generator)
            pooled = pooled[:, idx]
        self.samples = [pooled]
        return pooled

    def loss(self, rows: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Per-row MSE of quantizing ``rows`` with the range ``alpha * [lo, hi]``."""
        if self.grid is None:
            raise ConfigError("an MSE range estimator needs the quantization grid; it is bound by the quantizer")
        scale, zero = qparams(alpha * self.lo, alpha * self.hi, self.grid)
        q = fake_quantize(rows, scale[:, None], zero[:, None], self.grid.qmin, self.grid.qmax)
        return ((q - rows) ** 2).mean(dim=1)


class MSE(_SampledMSE):
    name = "mse"

    def __init__(self, grid: Grid | None = None, candidates: int = 100, **kw):
        self.candidates = candidates
        super().__init__(grid, **kw)

    def compute(self):
        self._require_data()
        rows = self._pool()
        alphas = torch.arange(1, self.candidates + 1, dtype=torch.float32) / self.candidates
        losses = torch.stack([self.loss(rows, a.expand(rows.shape[0])) for a in alphas])  # [A, G]
        best = alphas[losses.argmin(dim=0)]
        return best * self.lo, best * self.hi


class GoldenSectionMSE(_SampledMSE):
    name = "omse"

    def __init__(self, grid: Grid | None = None, lower: float = 0.01, iterations: int = 40, **kw):
        self.lower, self.iterations = lower, iterations
        super().__init__(grid, **kw)

    def compute(self):
        self._require_data()
        rows = self._pool()
        g = rows.shape[0]
        invphi = (math.sqrt(5) - 1) / 2
        a, b = torch.full((g,), self.lower), torch.ones(g)
        c, d = b - invphi * (b - a), a + invphi * (b - a)
        fc, fd = self.loss(rows, c), self.loss(rows, d)
        for _ in range(self.iterations):
            left = fc < fd  # minimum in [a, d]
            b = torch.where(left, d, b)
            a = torch.where(left, a, c)
            new_c, new_d = b - invphi * (b - a), a + invphi * (b - a)
            fnew = self.loss(rows, torch.where(left, new_c, new_d))
            c, d = torch.where(left, new_c, d), torch.where(left, c, new_d)
            fc, fd = torch.where(left, fnew, fd), torch.where(left, fc, fnew)
        best = (a + b) / 2
        return best * self.lo, best * self.hi


class TokenWiseClip(CurrentMinMax):
    r"""The coarse stage of Outlier Suppression's Token-Wise Clipping (§4.2, Alg. 1; notes §1.5).

    Per batch of real tokens ``[N, d]``: the per-token maxima $m_t = \max_j x_{t,j}$ and minima
    $n_t = \min_j x_{t,j}$; the upper clip is the largest $m_t$ not above the $p$-quantile of $|m_t|$, the
    lower clip the $n_t$ of largest magnitude not above the $p$-quantile of $|n_t|$. So a fraction
    $1-p$ of the *tokens* — not of the values — is clipped. Clips are averaged over batches (equal
    weight), like the authors' ``AvgPruneMinMaxObserver``. ``p = 1`` is the average min-max.
    """

    name = "token_wise_clip"
    token_wise = True

    def __init__(self, p: float = 0.99):
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"token quantile p must be in (0, 1], got {p}")
        self.p = p
        super().__init__()

    @staticmethod
    def _clip(values: torch.Tensor, p: float) -> torch.Tensor:
        mags = values.abs()
        q = row_quantile(mags[None], p)[0]
        keep = mags <= q
        return values[keep][mags[keep].argmax()]

    def update(self, tokens):
        tokens = tokens.detach().float().reshape(-1, tokens.shape[-1])
        self.update_extremes(tokens.amax(1), tokens.amin(1))

    def update_extremes(self, maxima: torch.Tensor, minima: torch.Tensor) -> None:
        """One batch given by its per-token maxima $m_t$ and minima $n_t$ (what :meth:`update` computes)."""
        hi = self._clip(maxima, self.p).reshape(1)
        lo = self._clip(minima, self.p).reshape(1)
        n = self.n_updates
        self.lo = lo if self.lo is None else (self.lo * n + lo) / (n + 1)
        self.hi = hi if self.hi is None else (self.hi * n + hi) / (n + 1)
        self.n_updates += 1

    def __repr__(self):
        return f"TokenWiseClip(p={self.p})"


class TokenExtremes(CurrentMinMax):
    """Records each batch's per-token maxima and minima, so that :class:`TokenWiseClip` ranges for any
    number of quantiles $p$ can be derived from one pass (they depend on the data only through these).

    Its own range is the min-max over all batches; :meth:`token_wise_clip` gives the token-wise clip estimator for a $p$.
    """

    name = "token_extremes"
    token_wise = True

    def reset(self):
        super().reset()
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, tokens):
        tokens = tokens.detach().float().reshape(-1, tokens.shape[-1])
        maxima, minima = tokens.amax(1), tokens.amin(1)
        self.batches.append((maxima, minima))
        lo, hi = minima.min().reshape(1), maxima.max().reshape(1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.n_updates += 1

    def token_wise_clip(self, p: float) -> "TokenWiseClip":
        """A ``TokenWiseClip(p)`` fed the recorded batches: the same state as calibrating it directly."""
        self._require_data()
        if not self.batches:
            raise OutlierBookError("the recorded token extremes are not part of a saved state; observe the "
                                   "calibration batches again after loading")
        est = TokenWiseClip(p)
        for maxima, minima in self.batches:
            est.update_extremes(maxima, minima)
        return est


class PerBatchOMSE(_GridBound):
    r"""OMSE searched per batch and averaged, as the Outlier Suppression code does it (notes §1.6).

    For one batch with extremes $x_{\min}, x_{\max}$ (per row), find the range $[l, h]$ minimising
    $\mathbb E[(\hat x_{[l,h]} - x)^2]$ over **all** the batch's values:

    - symmetric grid, or values of one sign: one bounded search of the half-width
      $r \in [\min(0.1,\,0.01 R),\, R]$, $R = \max(|x_{\min}|, x_{\max})$, range $[-r, r]$ (or $[0, r]$, $[-r, 0]$);
    - otherwise two nested bounded searches: the width $r \in [\min(0.1,\,0.01 R),\, R]$ with
      $R = x_{\max} - x_{\min}$, and for each width the shift $t \in [q_{\min}\Delta,\, q_{\max}\Delta]$,
      $\Delta = r/(q_{\max}-q_{\min})$, giving $l = \max(-t, x_{\min})$, $h = \min(r - t, x_{\max})$.

    The range is the mean of the per-batch ranges (equal weight per batch). Searches use scipy's bounded
    Brent method, as the authors' code does; rows (per-channel use) are searched one by one.
    """

    name = "omse_per_batch"

    def reset(self):
        super().reset()
        self.one_sided: str | None = None

    def _mse(self, x: torch.Tensor, lo: float, hi: float) -> float:
        scale, zero = qparams(torch.tensor([lo]), torch.tensor([hi]), self.grid)
        q = fake_quantize(x, scale, zero, self.grid.qmin, self.grid.qmax)
        return float(((q - x) ** 2).mean())

    def _search_row(self, x: torch.Tensor) -> tuple[float, float]:
        from scipy.optimize import minimize_scalar

        x_min, x_max = float(x.min()), float(x.max())
        if self.one_sided is None:  # decided on the first batch, as the authors' observer does
            self.one_sided = "pos" if x_min >= 0 else "neg" if x_max <= 0 else "no"
        if self.one_sided != "no" or self.grid.symmetric:
            big = max(abs(x_min), x_max)
            lo_of = (lambda r: 0.0) if self.one_sided == "pos" else (lambda r: -r)
            hi_of = (lambda r: 0.0) if self.one_sided == "neg" else (lambda r: r)
            r = minimize_scalar(lambda r: self._mse(x, lo_of(r), hi_of(r)), bounds=(min(0.1, 0.01 * big), big),
                                method="bounded").x
            return lo_of(r), hi_of(r)
        span = self.grid.qmax - self.grid.qmin

        def bounds(r, t):
            return max(-t, x_min), min(r - t, x_max)

        def best_shift(r):
            delta = r / span
            return minimize_scalar(lambda t: self._mse(x, *bounds(r, t)),
                                   bounds=(self.grid.qmin * delta, self.grid.qmax * delta), method="bounded")

        width = x_max - x_min
        r = minimize_scalar(lambda r: best_shift(r).fun, bounds=(min(0.1, 0.01 * width), width), method="bounded").x
        return bounds(r, best_shift(r).x)

    def update(self, rows):
        if self.grid is None:
            raise ConfigError("the per-batch OMSE estimator needs the quantization grid; it is bound by the quantizer")
        rows = rows.detach().float()
        found = torch.tensor([self._search_row(row) for row in rows], dtype=torch.float32)
        lo, hi = found[:, 0], found[:, 1]
        n = self.n_updates
        self.lo = lo if self.lo is None else (self.lo * n + lo) / (n + 1)
        self.hi = hi if self.hi is None else (self.hi * n + hi) / (n + 1)
        self.n_updates += 1

    def compute(self):
        self._require_data()
        return self.lo, self.hi


ESTIMATORS = {cls.name: cls for cls in (CurrentMinMax, AllMinMax, RunningMinMax, AvgMinMax, Percentile, MeanStd, MSE,
                                        GoldenSectionMSE, PerBatchOMSE, TokenWiseClip, TokenExtremes)}


def make_estimator(spec) -> RangeEstimator:
    """An estimator from a name (``"running_minmax"``), a ``(name, kwargs)`` pair, or an instance."""
    if isinstance(spec, RangeEstimator):
        return spec
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], dict):
        name, kwargs = spec
    else:
        raise ConfigError(f"range estimator {spec!r} is not understood; use a name (e.g. 'running_minmax') "
                          "or a (name, {argument: value}) pair (e.g. ('percentile', {'p': 99.99}))")
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown range estimator {name!r}; use one of: {', '.join(ESTIMATORS)}")
    takes = [p for p in inspect.signature(ESTIMATORS[name]).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise ConfigError(f"range estimator {name!r} takes no argument {', '.join(map(repr, unknown))}; "
                          f"it takes: {', '.join(takes) or 'no arguments'}")
    return ESTIMATORS[name](**kwargs)
