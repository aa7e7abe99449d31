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
# # Nonlinearity-aware quantization: compute cheaply where the gradient is small
#
# The previous chapters quantize a tensor uniformly and fight its outliers. NAQ {cite:p}`naq2025`
# starts from the other end: a value that is about to pass through GELU or softmax matters only as
# much as the nonlinearity's gradient there. Where the gradient is small, a coarse estimate is as
# good as the exact value; where it is large, recompute exactly. The method computes the
# pre-nonlinearity values at 4 bits, predicts from them where the gradient is large, and recomputes
# only those elements at full precision.
#
# **What differs from the paper.** The paper applies NAQ to GPTQ-quantized OPT and BLOOM (perplexity)
# and to PTQ4ViT DeiT/ViT models (ImageNet); none of these models or data sets is available offline,
# so their numbers appear only in the paper. We apply NAQ to the embedded encoder, all-MiniLM-L6-v2,
# on STS-B (zero-shot Spearman) and SST-2 (accuracy). NAQ runs on OPT-style decoders too (its wrapper
# works through the book's model anatomy, and a unit test runs it on a small OPT), but this chapter does
# not sweep the small decoder the Quantizable Transformers chapter pre-trains, so it measures no
# perplexity. Thresholds on
# the FFN are in pre-activation units (the authors' code normalises by the input width and the grid
# sizes); the energy model is our reading of §2.4, stated below, because the authors' code has none.
# The quick profile uses 100 evaluation examples per task and a coarse threshold grid.

# %% tags=["parameters"]
profile = "quick"
model = "all-MiniLM-L6-v2"
data_source = "local"
tasks = ["stsb", "sst2"]
eval_limit = 100
qp_values = [-3.0, -2.0, -1.0, 0.0]
as_values = [-3.0, 0.0]
sum_values = [200.0, 3200.0]
combined_pairs = []
bits = 4
max_input = 4.0
n_calib = 64
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from outlierbook import claims, compare
from outlierbook.headline import SMOKE_TEST, run_label
from outlierbook.experiments import naq as nx
from outlierbook.models.tasks import task_setup
from outlierbook.naq.gradients import ACTIVATIONS, activation_derivative, softmax_diagonal
from outlierbook.naq.macs import ENERGY_PJ, encoder_macs, measured_macs
from outlierbook.quant.calibrate import calibration_batches
from outlierbook.recipe import Recipe, quantize
from outlierbook.results import Recorder, dumps, full_profile_verdicts, provenance, stored_full_run

rec = Recorder("07_naq", profile, params=dict(model=model, tasks=tasks, eval_limit=eval_limit, qp_values=qp_values,
                                             as_values=as_values, sum_values=sum_values, combined_pairs=combined_pairs,
                                             bits=bits, max_input=max_input, n_calib=n_calib, seed=seed))
setups = {t: task_setup(t, profile, model=model, eval_limit=eval_limit, data_source=data_source, seed=seed)
          for t in tasks}
fp = {t: s.score() for t, s in setups.items()}

# %% [markdown]
# ## Where gradients are small (Figure 1)
#
# For an element-wise activation $y = f(x)$ the output's sensitivity to an error in $x$ is $f'(x)$.
# GELU and ReLU are flat on the negative side; SiLU nearly so; tanh and sigmoid are flat in both
# tails. For softmax $p_i = e^{z_i}/S$, $S=\sum_k e^{z_k}$, the Jacobian is
#
# $$\frac{\partial p_i}{\partial z_j} = p_i(\delta_{ij} - p_j), \qquad
# \frac{\partial p_i}{\partial z_i} = p_i(1-p_i) = \frac{e^{z_i}(S - e^{z_i})}{S^2}.$$
#
# The diagonal grows with $e^{z_i}$ and shrinks as $S$ grows — so a score can be served at low
# precision when it is small **and** its row's sum of exponentials is large: NAQ's two thresholds
# $T_{AS}$ (on $z_i$, i.e. on $e^{z_i}$) and $T_{sum}$ (on $S$), combined with "and". The
# off-diagonal entries obey $|p_ip_j| \le p_i$, so they are small under the same condition.

# %%
x = torch.linspace(-6, 6, 241)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for name in ACTIVATIONS:
    axes[0].plot(x, activation_derivative(name, x), label=name)
axes[0].set(xlabel="input x", ylabel="f'(x)", title="activation gradients")
axes[0].legend(fontsize=8)
ez = np.logspace(-2, 3, 200)
for s_ in (200, 800, 3200, 12800):
    axes[1].plot(ez, softmax_diagonal(torch.tensor(ez), torch.tensor(float(s_)).clamp(min=torch.tensor(ez).max())),
                 label=f"S = {s_}")
axes[1].set(xscale="log", xlabel=r"$e^{z_i}$", ylabel=r"$\partial p_i/\partial z_i$", title="softmax gradient")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()
gelu_tail = float(activation_derivative("gelu", torch.linspace(-6, -3, 31)).abs().max())
diag = softmax_diagonal(torch.tensor([1.0, 10.0]), torch.tensor([[200.0], [3200.0]]))
rec.update({"gelu_max_grad_below_-3": gelu_tail})

# %% [markdown]
# (In the right panel each curve uses $S = \max(S, e^{z_i})$, since a row sum cannot be smaller than
# one of its terms.)
#
# ## How much of the compute precedes a nonlinearity (Figure 3)
#
# Per layer and sequence of $T$ tokens (hidden $d$, FFN width $d_{ff}$): Q, K, V and output
# projections $4Td^2$, FFN $2Td\,d_{ff}$, scores and context $T^2d$ each. The pre-nonlinearity part
# is FFN1 ($Td\,d_{ff}$, before GELU) and the scores ($T^2d$, before softmax). We count them twice —
# from the formula and by hooks during a forward pass on a real sequence of each task — and show the
# share for a range of sequence lengths.

# %%
cfg = setups[tasks[0]].model.config
for t, s in setups.items():  # the formula and the hooks agree on a real, unpadded sequence
    b = calibration_batches(s.calibration, s.tokenizer, n=1, batch_size=1, seed=seed)[0]
    analytic, measured = encoder_macs(cfg, b["input_ids"].shape[1]), measured_macs(s.model, b)
    assert analytic["total"] == measured["total"] and analytic["pre_nonlinearity"] == measured["pre_nonlinearity"]
macs = pd.DataFrame([{"T": T, "pre-nonlinearity share": encoder_macs(cfg, T)["pre_nonlinearity"] / encoder_macs(cfg, T)["total"]}
                     for T in (16, 32, 64, 128, 256)]).set_index("T")
rec.update({f"pre_share/T{T}": v for T, v in macs["pre-nonlinearity share"].items()})

# %% tags=["nbval-check-output"]
print(macs.round(3).to_string())

# %% [markdown]
# The share grows with $T$ because the score computation is quadratic in the sequence length.
#
# ## The method and its energy model
#
# **FFN (Linear + GELU).** Quantize the input to 4 bits with the fixed range $\pm M$ ($M = 4$, step
# $4/7$) and the weight per row (absmax); compute the low-precision product $P = \hat x\hat W^\top$.
# Where $P < T_{QP}$ the output is served as $\mathrm{GELU}(P + \hat b)$; elsewhere the full-precision
# $\mathrm{GELU}(xW^\top + b)$ is recomputed.
#
# **Attention (scores + softmax).** Quantize the layer input the same way, recompute Q and K through
# the FP projections, and form low-precision scores $\hat z$ (scaled and masked). Where
# $\hat z_{ij} \le T_{AS}$ and $\sum_j e^{\hat z_{ij}} \ge T_{sum}$, $\hat z_{ij}$ is used; elsewhere the FP
# score; then a regular softmax. Padded tokens and masked positions are excluded from every count
# (the authors' code counts masked positions as avoided, which inflates its share).
#
# **Energy.** Per multiply-add INT4 0.065 pJ, INT8 0.23 pJ, FP16 1.5 pJ (§2.4). The low-precision
# pass runs over all $N_{pre}$ pre-nonlinearity MACs; a share $1-p$ of them is recomputed at the
# baseline precision $b$; all other MACs run at $b$:
#
# $$\frac{E_{NAQ}}{E_b} = \frac{N_{pre}\,(e_{4} + (1-p)\,e_b) + N_{other}\,e_b}{(N_{pre}+N_{other})\,e_b}.$$
#
# Against an FP16 baseline the low-precision pass costs $e_4/e_{16} \approx 4\%$ of what it saves;
# against INT8, $e_4/e_8 \approx 28\%$, so the saving is much smaller.

# %% [markdown]
# ## Sweeping the thresholds (Figures 5–8 analogue)
#
# First each wrapper alone — $T_{QP}$ with attention in full precision, then $(T_{AS}, T_{sum})$ with
# the FFN in full precision — and, in the full profile, every $T_{QP}$ combined with a few
# $(T_{AS}, T_{sum})$ pairs. Each point reports the
# task metric, the share of pre-nonlinearity FP compute avoided, and the relative energy against
# FP16 and INT8 baselines.

# %%
sweeps = pd.concat([nx.sweep(setups[t], qp_values, as_values, sum_values, combined_pairs=combined_pairs, bits=bits,
                             max_input=max_input) for t in tasks], ignore_index=True)
sweeps["fp32"] = sweeps.task.map(fp)
sweeps["drop"] = sweeps["fp32"] - sweeps["value"]
rec.add_rows(sweeps.assign(experiment="naq_sweep"))
show = ["task", "t_qp", "t_as", "t_sum", "value", "drop", "share_ffn", "share_attention", "avoided_share",
        "energy_vs_fp16", "energy_vs_int8"]

# %% tags=["nbval-check-output"]
print(sweeps[show].round(3).to_string(index=False))

# %% [markdown]
# The INT8 reference: the same model with 8-bit weights and activations (FasterTransformer positions,
# average min-max ranges on `n_calib` training examples), to place NAQ's metric beside a plain INT8
# model.

# %%
int8 = {}
for t, s in setups.items():
    batches = calibration_batches(s.calibration, s.tokenizer, n=n_calib, batch_size=32, seed=seed)
    qm = quantize(s.model, Recipe(bits="W8A8", placement="os", act_estimator="avg_minmax"), batches)
    int8[t] = s.score(qm)
rec.update({f"int8/{t}": v for t, v in int8.items()})
# In a quick build the figure shows the stored full run's sweep (every dev example, the whole grid).
stored_full = None if profile == "full" else stored_full_run("07_naq")
if stored_full is not None and "experiment" in stored_full["table"]:
    plotted = stored_full["table"][stored_full["table"]["experiment"] == "naq_sweep"]
    lines = {t: (plotted[plotted.task == t]["fp32"].iloc[0], stored_full["metrics"].get(f"int8/{t}"))
             for t in plotted.task.unique()}
else:
    plotted, lines = sweeps, {t: (fp[t], int8[t]) for t in tasks}
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
for t, (fp_line, int8_line) in lines.items():
    d = plotted[plotted.task == t]
    axes[0].scatter(d["avoided_share"], d["value"], s=14, label=t)
    axes[1].scatter(d["energy_vs_fp16"], d["value"], s=14, label=f"{t} vs FP16")
    axes[1].scatter(d["energy_vs_int8"], d["value"], s=14, marker="x", label=f"{t} vs INT8")
    for ax in axes:
        ax.axhline(fp_line, color="grey", lw=0.6)
        if int8_line is not None:
            ax.axhline(int8_line, color="grey", lw=0.6, ls=":")
fig.suptitle("full run" if plotted is not sweeps else f"this run ({profile} profile)", fontsize=9)
axes[0].set(xlabel="share of pre-nonlinearity FP compute avoided", ylabel="metric", title="metric vs avoided compute")
axes[1].set(xlabel="relative energy", title="metric vs relative energy")
axes[0].legend(fontsize=8)
axes[1].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# Solid grey lines mark the FP model, dotted lines the INT8 model.
#
# ## Which threshold avoids what (Appendix C)
#
# The breakdown by wrapper at each task's best point within one metric point of FP: the share of FFN
# elements served at low precision ($P_{QP}$), of attention scores ($P_{sm}$), and of all
# pre-nonlinearity MACs ($P_{NAQ}$).

# %%
best = {t: nx.best_within(sweeps[sweeps.task == t], fp[t], 1.0) for t in tasks}
breakdown = pd.DataFrame({t: (b[["t_qp", "t_as", "t_sum", "share_ffn", "share_attention", "avoided_share", "drop",
                                 "energy_vs_fp16", "energy_vs_int8"]] if b is not None else pd.Series(dtype=float))
                          for t, b in best.items()})
rec.update({f"best/{t}/{k}": v for t, col in breakdown.items() for k, v in col.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(breakdown.round(3).to_string())

# %% [markdown]
# ## Beside the paper
#
# The paper measures NAQ on LLMs quantized with GPTQ (full precision FP16) and on vision transformers
# quantized with PTQ4ViT (full precision INT8), so its numbers are ranges over those models, not values
# to match. Ours are read at each task's best point within one metric point of FP (above); in a quick
# build they are the stored full run's (every dev example, the whole threshold grid).

# %%
shown_metrics, source = ((stored_full["metrics"], provenance(stored_full)) if stored_full else
                         (rec.metrics, "this run" + ("" if profile == "full" else f" ({SMOKE_TEST})")))
shown_tasks = [t for t in ("stsb", "sst2", "mrpc", "rte") if f"best/{t}/avoided_share" in shown_metrics]
nx.beside_paper(shown_metrics, shown_tasks, compare.load_paper("naq")).style.set_uuid("ch07_paper").format(
    {t: "{:.3f}" for t in shown_tasks}, na_rep="—").set_caption(f"NAQ: the paper's reported ranges beside ours. "
                                                                f"Ours: {source}")

# %% [markdown]
# ## Claim checks
#
# Rules from the {doc}`claims ledger </book/claims>`. NAQ-3 and NAQ-4 are read at the point of largest avoided share
# whose metric loss is at most one point.

# %%
decreasing_in_s = bool(diag[0, 0] > diag[1, 0] and diag[0, 1] > diag[1, 1])
increasing_in_ez = bool(diag[0, 1] > diag[0, 0])
claims.check(rec, "NAQ-1", ours={"max |GELU'| for x ≤ −3": round(gelu_tail, 4), "softmax diag falls with S": decreasing_in_s,
                                 "softmax diag rises with e^z": increasing_in_ez},
             paper="Fig. 1", holds=gelu_tail < 0.02 and decreasing_in_s and increasing_in_ez,
             note="small = |f'| < 0.02 on x ≤ −3")
share = {f"T={T}": round(float(v), 3) for T, v in macs["pre-nonlinearity share"].items()}
claims.check(rec, "NAQ-2", ours=share, paper="29–57 % of computation energy (Fig. 3)",
             holds=bool(macs["pre-nonlinearity share"].min() >= 0.29),
             note="large = at least the paper's lower end, 29 %, at every length shown")
ok = {t: b for t, b in best.items() if b is not None}
claims.check(rec, "NAQ-3", ours={t: round(float(b["avoided_share"]), 3) for t, b in ok.items()},
             paper="24–62 % avoided (Figs. 5, 7)",
             holds=bool(ok) and all(b["avoided_share"] >= 0.20 for b in ok.values()) and len(ok) == len(tasks),
             note="≥ 20 % avoided at ≤ 1 point loss, on every task")
_ = claims.check(rec, "NAQ-4", ours={t: {"vs FP16": round(float(b["energy_vs_fp16"]), 3), "vs INT8": round(float(b["energy_vs_int8"]), 3)}
                                     for t, b in ok.items()},
                 paper="0.71 vs FP16; ≤ 10 % saving vs INT8 (Figs. 6, 8)",
                 holds=bool(ok) and all(b["energy_vs_fp16"] < 1 and (1 - b["energy_vs_int8"]) < (1 - b["energy_vs_fp16"])
                                        for b in ok.values()),
                 note="at each task's NAQ-3 point")

# %% tags=["nbval-check-output"]
print(dumps({c["id"]: c["holds"] for c in rec.claims}))

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ### The full profile's verdicts
#
# The full profile's results are stored with the book (`results/07_naq/full/`), so a quick
# build shows the verdicts of the real run here, beside the quick run's above (every STS-B and SST-2
# dev example, 256 calibration examples, the full threshold grids). They regenerate with
#
# ```bash
# .venv/bin/python -m outlierbook run 07_naq --profile full
# ```

# %% tags=["nbval-check-output"]
print(full_profile_verdicts("07_naq", profile))

# %% [markdown]
# ## Exercises
#
# 1. The paper notes that tanh and sigmoid need the threshold on $|QP|$. Why, and what would the
#    FFN rule be?
# 2. Our counts exclude masked score positions. Re-count with them included (use `t_as=inf`,
#    `t_sum=-inf` and a padded batch): how much would the "avoided" share be inflated?
# 3. At what share $p$ does NAQ break even against an INT8 baseline?
#
# ```{admonition} Solution 1
# :class: dropdown
# Their gradients vanish in **both** tails, so a large positive pre-activation is as safe to serve
# at low precision as a large negative one: serve low where $|P| > T$, recompute where $|P| \le T$.
# GELU and ReLU are flat only on the negative side, hence the one-sided rule $P < T_{QP}$.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# A padded sequence of length $T$ with $n$ real tokens has $n^2$ real (query, key) pairs but $T^2$
# entries per head. Masked entries carry a score near the dtype's minimum, so they always pass
# $\hat z \le T_{AS}$; counting them adds $(T^2-n^2)/T^2$ to the attention share whenever a row passes
# $T_{sum}$ — for batches padded to twice the typical length, three quarters of the entries.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# Setting $E_{NAQ} = E_b$ in the formula: $N_{pre}(e_4 + (1-p)e_b) = N_{pre}e_b$, so $p = e_4/e_b$ —
# $0.065/0.23 \approx 0.28$ against INT8 (and $0.065/1.5 \approx 0.04$ against FP16). Below that
# share NAQ costs energy.
# ```
