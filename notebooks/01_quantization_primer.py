# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quantization primer
#
# Every method in the four papers is a variation on one operation: replace a real number by the
# nearest point of a small, evenly spaced grid. This chapter builds that operation, shows what its
# error is made of on a **real** activation of the embedded model — one with outliers — and how the
# choices every paper makes (range estimator, granularity, bit-width) move that error. The
# library code lives in `src/outlierbook/quant/`; each formula below is the docstring of the
# function that implements it.
#
# ## The uniform affine quantizer
#
# A $b$-bit quantizer has a **scale** $s>0$ and an integer **zero point** $z$. It maps $x$ to the
# integer grid and back (Eq. 1–2 of {cite:t}`bondarenko2021understanding`, after
# {cite:t}`jacob2018quantization`):
#
# $$
# x_{\mathbb Z} = \operatorname{clip}\!\Big(\Big\lfloor \frac{x}{s} \Big\rceil + z;\; q_{\min}, q_{\max}\Big),
# \qquad \hat x = s\,\big(x_{\mathbb Z} - z\big).
# $$
#
# The grid is $\{s(q - z) : q = q_{\min},\dots,q_{\max}\}$: $2^b$ points, step $s$. Two ways to place it:
#
# - **asymmetric** (activations): $[q_{\min}, q_{\max}] = [0, 2^b-1]$,
#   $s = \frac{x_{\max} - x_{\min}}{2^b-1}$, $z = \operatorname{clip}(\lfloor -x_{\min}/s\rceil, 0, 2^b-1)$;
# - **symmetric** (weights): $z=0$, $[q_{\min}, q_{\max}] = [-2^{b-1}, 2^{b-1}-1]$,
#   $s = \max(|x_{\min}|,|x_{\max}|)/D$.
#
# The two codebases disagree on $D$: the Qualcomm code (2021, 2023 papers) uses $D = 2^{b-1}-1$ (127
# at 8 bits), the Outlier Suppression code $D = (2^b-1)/2$ (127.5), which clips the positive extreme
# by half a step. The library supports both (`scale_rule="qualcomm"` or `"os"`); chapters use the
# Qualcomm rule unless they reproduce Outlier Suppression. The range is always widened to contain
# 0, so that **zero is exactly representable** — padding and ReLU zeros stay exactly zero. The
# rounding $\lfloor\cdot\rceil$ has zero gradient almost everywhere; training through it uses the
# **straight-through estimator**, which treats its derivative as 1.

# %% tags=["parameters"]
profile = "quick"
model = "all-MiniLM-L6-v2"
data_source = "local"
n_sentences = 64
focus_kind = "ffn.residual"
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from outlierbook.analysis.capture import capture_activations
from outlierbook.analysis.quant_error import (clipping_sweep, error_split, estimator_choices, granularity_errors,
                                              outlier_profile)
from outlierbook.models.tasks import task_setup
from outlierbook.quant.calibrate import calibration_batches
from outlierbook.quant.granularity import group_counts
from outlierbook.quant.quantizer import Grid, fake_quantize, qparams
from outlierbook.results import Recorder, dumps

rec = Recorder("01_quantization_primer", profile, params=dict(model=model, n_sentences=n_sentences,
                                                              focus_kind=focus_kind, seed=seed))

# %% [markdown]
# A toy vector first. At 3 bits there are 8 levels; watch zero survive exactly, and the two
# symmetric scale rules disagree at the positive end.

# %%
x_toy = torch.tensor([-1.0, -0.3, 0.0, 0.2, 0.55, 1.0])
toy = {}
for label, grid in {"asymmetric": Grid(3, False), "symmetric (qualcomm)": Grid(3, True, "qualcomm"),
                    "symmetric (os)": Grid(3, True, "os")}.items():
    s, z = qparams(x_toy.min(), x_toy.max(), grid)
    toy[label] = fake_quantize(x_toy, s, z, grid.qmin, grid.qmax).tolist() + [float(s), float(z)]
toy_table = pd.DataFrame(toy, index=[f"x={v:g}" for v in x_toy.tolist()] + ["scale s", "zero point z"]).T

# %% tags=["nbval-check-output"]
print(toy_table.round(4).to_string())

# %% [markdown]
# ## A real activation with outliers
#
# We run the FP model on sentences from the STS-B **training** split and record every activation
# the 2021 paper quantizes (real tokens only; padding excluded). The table ranks the nodes by the
# ratio of their largest magnitude to their standard deviation — how many "typical" values the
# largest one is worth.

# %%
setup = task_setup("stsb", profile, model=model, eval_limit=10, data_source=data_source, seed=seed)
batches = calibration_batches(setup.calibration, setup.tokenizer, n=n_sentences, batch_size=32, seed=seed)
acts = capture_activations(setup.model, batches)
profile_table = outlier_profile(acts)
profile_table.head(10).style.set_uuid("ch01_profile").format(precision=2).hide(axis="index")

# %% [markdown]
# The residual sums after the FFN and the FFN outputs carry values a hundred standard deviations
# out, and the largest always sits in the same hidden dimension. We follow the node of kind
# `focus_kind` with the largest ratio through the rest of the chapter.

# %%
focus = profile_table[profile_table.node.str.endswith(focus_kind)].iloc[0]
x = acts[focus.node]
amax_per_dim = x.abs().amax(0)
top_dims = torch.argsort(amax_per_dim, descending=True)[:3].tolist()
focus_info = {"node": focus.node, "tokens": x.shape[0], "dims": x.shape[1], "max_abs": float(x.abs().max()),
              "std": float(x.std()), "top_dims": top_dims,
              "share_of_values_beyond_6_std": float(((x - x.mean()).abs() > 6 * x.std()).float().mean())}
rec.update({f"focus/{k}": v for k, v in focus_info.items() if k != "top_dims"})

# %% tags=["nbval-check-output"]
print(dumps(focus_info))

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].hist(x.flatten().numpy(), bins=200, log=True, color="C0")
axes[0].set(xlabel="value", ylabel="count (log)", title=f"{focus.node}: all values")
axes[1].bar(np.arange(x.shape[1]), amax_per_dim.numpy(), width=1.0, color="C1")
axes[1].set(xlabel="hidden dimension", ylabel="max |x| over tokens", title="one dimension dominates")
fig.tight_layout()
plt.show()

# %% [markdown]
# Almost every value lies within a few units of zero; a handful in one or two hidden dimensions
# reach a hundred or more. One per-tensor range must hold both.
#
# ## Rounding error versus clipping error
#
# Shrink the range to $\alpha\,[x_{\min}, x_{\max}]$ with $0<\alpha\le 1$. Values inside are **rounded**:
# each error is at most $s/2$, and spread over many steps it averages $s^2/12$ in mean square.
# Values outside are **clipped** to the nearest end, with error $(x - x_{\max}^{\alpha})^2$. A smaller range
# means a finer step (less rounding error) and more clipping.

# %% [markdown]
# We sweep the range for two tensors: the residual sum above, and the GELU output with the largest
# max/std ratio — an activation whose extreme values are rare.

# %%
contrast = profile_table[profile_table.node.str.endswith("ffn.gelu")].iloc[0].node
sweeps = pd.concat([clipping_sweep(acts[n], bits=(4, 6, 8)).assign(node=n) for n in (focus.node, contrast)],
                   ignore_index=True)
rec.add_rows(sweeps.assign(experiment="clipping_sweep").rename(columns={"mse": "value"}))
fig, axes = plt.subplots(2, 3, figsize=(8.6, 5.6), sharey="row")
for row, (node, dn) in enumerate(sweeps.groupby("node", sort=False)):
    for ax, (b, d) in zip(axes[row], dn.groupby("bits")):
        ax.loglog(d.clip_hi, d.mse, label="total", color="k")
        ax.loglog(d.clip_hi, d.rounding.clip(lower=1e-12), "--", label="rounding")
        ax.loglog(d.clip_hi, d.clipping.clip(lower=1e-12), ":", label="clipping")
        ax.axvline(d.loc[d.mse.idxmin()].clip_hi, color="grey", lw=0.8)
        ax.set_title(f"{node}, {b} bits", fontsize=9)
    axes[row][0].set_ylabel("mean squared error")
for ax in axes[1]:
    ax.set_xlabel("upper end of the range")
axes[0][0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
best = sweeps.loc[sweeps.groupby(["node", "bits"], sort=False).mse.idxmin(), ["node", "bits", "alpha", "clip_hi", "mse", "clipped_share"]]
at_minmax = sweeps[sweeps.alpha == sweeps.alpha.max()][["node", "bits", "mse", "clipped_share"]].rename(
    columns={"mse": "mse at min-max", "clipped_share": "clipped at min-max"})
best = best.merge(at_minmax, on=["node", "bits"])
rec.update({f"clip_best/{r.node}/{int(r.bits)}bit/{k}": r[k] for _, r in best.iterrows()
            for k in ("alpha", "mse", "mse at min-max")})

# %% tags=["nbval-check-output"]
print(best.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

# %% [markdown]
# Read the `alpha` column (1 = the full min-max range). Where the large values are **rare** —
# the GELU output — the best range at few bits clips them hard, because rounding error on the
# many ordinary values dominates; with more bits the step shrinks and the optimum moves back
# towards the full range. Where the large values are **systematic** — one hidden dimension that is
# large on every token, as in the residual sum — clipping them costs more than it saves, and the
# best range stays near min-max at every bit-width: no choice of a single range rescues such a
# tensor. Note also the `clipped at min-max` column: even the full range can clip, when the step is
# larger than $|x_{\min}|$ — the zero point then rounds to 0 and the whole negative side of the
# tensor is clipped to zero (see the residual sum at 4 bits). That is the tension of transformer quantization in two pictures.
#
# ## How range estimators choose
#
# A range estimator sees the calibration activations batch by batch and proposes $[x_{\min},
# x_{\max}]$ (`src/outlierbook/quant/estimators.py`). Here each sees our tensor in chunks of 256
# tokens; the error is at 6 bits.

# %%
estimators = {
    "current min-max (last batch)": "current_minmax",
    "running min-max (momentum 0.9)": ("running_minmax", {"momentum": 0.9}),
    "average of batch min-max (OS 'MinMax')": "avg_minmax",
    "percentile 99.99": ("percentile", {"p": 99.99}),
    "percentile 99.9": ("percentile", {"p": 99.9}),
    "MSE, grid of 100": "mse",
    "MSE, golden section (OMSE)": "omse",
}
choices = estimator_choices(x, estimators, bits=6, batch_rows=256)
rec.add_rows(choices.assign(experiment="estimators_6bit", metric="mse").rename(columns={"mse": "value"}))

# %% tags=["nbval-check-output"]
print(choices[["estimator", "min", "max", "mse", "clipped_share"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))

# %% [markdown]
# The min-max family keeps every outlier (the current min-max even depends on which batch came
# last); the percentiles clip by rank, oblivious to how large the clipped values are; the MSE
# estimators pick the range that minimises the error of *this* tensor. None of them can fix the
# underlying problem, because a single range is the wrong tool for a tensor whose dimensions live on
# different scales.
#
# ## Granularity: per tensor, per channel, per group
#
# Give each hidden dimension its own range (**per-channel**, or per-embedding in the 2021 paper's
# words) and the outlier dimension stops hurting the others — but a matrix multiplication can then
# no longer factor one scale out of its sum. **Per-embedding-group** (PEG) quantization shares one
# range among $d/K$ dimensions; with a **range-based permutation** the dimensions are sorted by their
# range first, so that the outlier dimensions share a group (Eq. 5 of the 2021 paper).

# %%
K1, K2 = group_counts(x.shape[-1], (3, 6))  # K = 3, 6 for the embedded model's width 384; divisors of any width
gran = granularity_errors(x, bits=(6, 8), groups=(K1, K2))
rec.add_rows(gran.assign(experiment="granularity").rename(columns={"mse": "value"}))
gran_wide = gran.pivot(index="granularity", columns="bits", values="mse").loc[gran.granularity.unique()]
gran_wide.columns = [f"MSE at {b} bits" for b in gran_wide.columns]

# %% tags=["nbval-check-output"]
print(gran_wide.to_string(float_format=lambda v: f"{v:.3g}"))

# %% [markdown]
# Groups remove much of the per-tensor error at a cost of $K$ scales instead of one; per-channel is
# the limit. Whether the permutation helps on this one tensor is recorded in the checks below; the
# chapter on {cite:t}`bondarenko2021understanding` measures what groups buy on the task metric.
#
# ## Checks
#
# The {doc}`claims ledger </book/claims>` holds no claim for this primer; its checks are facts of the
# method that must hold on our measurement, computed here and recorded in `metrics.json`:
#
# 1. inside the range, the measured rounding error at 8 bits is $s^2/12$ to within 25 %;
# 2. the MSE estimators give a lower 6-bit error than min-max on this tensor;
# 3. more groups never hurt (K = 1, 3, 6, d).
#
# We also record whether the range-based permutation lowered the error at equal $K$. That is not a
# law: when a single dimension carries the outliers, sorting by range moves the *other* wide
# dimensions into the outlier's group, where the coarse step hurts them more than it hurts the
# narrow dimensions an unsorted group would hold. The permutation pays off when several outlier
# dimensions would otherwise spoil several groups — the 2021 chapter measures it on the task metric.

# %%
grid8 = Grid(8, False)
inside = x[(x > x.min()) & (x < x.max())]
split8 = error_split(inside, x.min(), x.max(), grid8)
by_est = choices.set_index("estimator")["mse"]
g6 = gran_wide["MSE at 6 bits"]
checks = {
    "rounding_mse_over_s2_12": split8["rounding"] / (split8["step"] ** 2 / 12),
    "mse_estimators_beat_minmax": bool(max(by_est["MSE, grid of 100"], by_est["MSE, golden section (OMSE)"])
                                       <= by_est["current min-max (last batch)"]),
    "more_groups_never_hurt": bool(g6["per-tensor"] >= g6[f"per-group K={K1}"] >= g6[f"per-group K={K2}"]
                                   >= g6["per-channel (per-embedding)"]),
    **{f"permutation_lowered_6bit_mse_K{k}": bool(g6[f"per-group K={k} + permutation"] <= g6[f"per-group K={k}"])
       for k in (K1, K2)},
}
checks["rounding_error_is_s2_over_12"] = bool(abs(checks["rounding_mse_over_s2_12"] - 1) <= 0.25)
rec.update({f"check/{k}": v for k, v in checks.items()})

# %% tags=["nbval-check-output"]
print(dumps(checks))

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ## Exercises
#
# 1. Using `error_split`, find the 4-bit range that minimises the error of `x` when you must use a
#    **symmetric** grid. Why is it worse than the asymmetric optimum for the residual sum, and
#    would it be for a GELU output?
# 2. Count how many of the tensor's values the 99.99th percentile clips, and how many distinct
#    tokens they belong to. What does that suggest about clipping *per token*?
# 3. Per-channel activation quantization is nearly free of error here. Write out $\hat W \hat x$ with a
#    per-channel activation scale and explain why integer hardware dislikes it.
#
# ```{admonition} Solution 1
# :class: dropdown
# `clipping_sweep(x, bits=(4,), symmetric=True)` and take the row of minimum `mse`. A symmetric
# grid spends half its levels on the negative side; the residual sum is roughly symmetric apart
# from its outliers, so the loss is modest. A GELU output lies in $[-0.17, \infty)$: a symmetric grid
# wastes almost half its levels there, so asymmetric grids are used for activations.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# `hi = choices.set_index("estimator").loc["percentile 99.99", "max"]; (x > hi).sum()` counts the
# values; `(x > hi).any(1).sum()` counts the tokens. The values concentrate on a few tokens — the
# observation Outlier Suppression's token-wise clipping builds on.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# $\hat W\hat x = s^W \sum_j s^x_j W^{\mathbb Z}_{ij} x^{\mathbb Z}_j$: the activation scale $s^x_j$ varies with
# the summation index, so it cannot be factored out of the integer sum (Eq. 3–4 of the 2021 paper).
# Every product must be re-scaled inside the accumulator, which integer matrix units do not do.
# ```
