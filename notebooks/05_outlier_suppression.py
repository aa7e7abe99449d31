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
# # Outlier Suppression: Gamma Migration and Token-Wise Clipping
#
# {doc}`03_anatomy_of_outliers` found that the outliers of a BERT-family model sit in a few
# embedding dimensions, that the LayerNorm scale γ shares those dimensions, and that the largest
# values belong to a few tokens. Wei et al. {cite:p}`wei2022outlier` turn each observation into a
# method:
#
# - **Gamma Migration** moves γ out of the tensor that gets quantized and into the weights that
#   read it — an exact rewrite of the FP model;
# - **Token-Wise Clipping** chooses clipping ranges by the share of *tokens* clipped, searched
#   coarsely on a grid and then refined by learning the scales.
#
# This chapter derives both, implements them as a transform and an estimator of the book's library,
# and reruns the paper's PTQ tables (3, 4, 14, 15), its cosine tables (1, 2, 12) and a CPU-sized
# version of its QAT table (5).
#
# **Setup.** The paper's quantization positions (FasterTransformer: embedding LayerNorm, Q, K, V,
# attention probabilities, context, MHA-LN, GELU, FFN-LN); weights symmetric per output channel,
# embeddings at their own bit-width ("W-E-A" bits), activations asymmetric per tensor; calibration
# on training examples in batches of 32 — 256 of them in the full profile, as in the paper.
#
# **What differs from the paper, and why.** The model is the embedded 6-layer all-MiniLM-L6-v2
# (22 M parameters) instead of BERT-base/RoBERTa/BART; STS-B is evaluated zero-shot on the bare
# encoder (so Token-Wise Clipping's output loss is the MSE of the last hidden states), the other
# tasks with heads fine-tuned on this CPU. CoLA, MNLI, QNLI and QQP, SQuAD, XSum and CNN/DailyMail
# are not available offline and are **not reproduced**; their numbers appear only in the paper.
# The quick profile uses one task (SST-2), 64 calibration examples, 100 evaluation examples, at most
# 8 candidates of the token-quantile grid and a 20-step QAT: it exercises every code path, and its
# numbers are not comparable with the paper. Knowledge distillation is left out of QAT. The authors
# released no EasyQuant and no QAT code; ours are written from the papers (see below).

# %% tags=["parameters"]
profile = "quick"
model = "all-MiniLM-L6-v2"
data_source = "local"
tasks = ["sst2"]
eval_limit = 100
n_calib = 64
twc_max_candidates = 8
percentiles = [99.9, 99.99, 99.999]
table4_bits = ["6-6-6", "8-8-8"]
qat_bits = ["4-4-4"]
qat_steps = 10
qat_batch_size = 16
selective_gm = ["sgm+minmax"]
authors_omse = False
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

from dataclasses import replace

import matplotlib.pyplot as plt
import pandas as pd

from outlierbook import claims, compare, competence
from outlierbook.experiments import outlier_suppression as osx
from outlierbook.experiments import os_rules as rules
from outlierbook.methods.token_wise_clipping import grid as twc_grid
from outlierbook.models.tasks import task_setup
from outlierbook.quant.calibrate import calibration_batches
from outlierbook.recipe import quantize
from outlierbook.headline import experiment_rows, headline_table, run_label
from outlierbook.memo import Memo
from outlierbook.results import Recorder, dumps, full_profile_verdicts

rec = Recorder("05_outlier_suppression", profile, params=dict(
    model=model, tasks=tasks, eval_limit=eval_limit, n_calib=n_calib, twc_max_candidates=twc_max_candidates,
    percentiles=percentiles, table4_bits=table4_bits, qat_bits=qat_bits, qat_steps=qat_steps,
    qat_batch_size=qat_batch_size, selective_gm=selective_gm, authors_omse=authors_omse, seed=seed))
PAPER_NAME = {"stsb": "STS-B", "sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE"}


def result(prefix: str, current: pd.DataFrame):
    """This section's result: the stored full run's table in a quick build, else this run's (see chapter 0)."""
    return headline_table("05_outlier_suppression", profile, prefix, current, column_order=list(PAPER_NAME))
cosine_task = "sst2"  # the paper's Tables 1 and 2 use BERT-SST-2
all_tasks = list(dict.fromkeys([cosine_task, *tasks]))
setups = {t: task_setup(t, profile, model=model, eval_limit=eval_limit, data_source=data_source, seed=seed)
          for t in all_tasks}
batches = {t: calibration_batches(s.calibration, s.tokenizer, n=n_calib, batch_size=32, seed=seed)
           for t, s in setups.items()}
migrated = {t: osx.migrated_copy(s.model) for t, s in setups.items()}
cache = {}  # (task, method, bits) -> result, shared by the tables below
# a full run keeps each finished experiment on disk, so a stopped run resumes; nbval re-runs the quick one
memo = Memo("05_outlier_suppression", profile, enabled=profile == "full",
            context=dict(model=model, data_source=data_source, n_calib=n_calib, seed=seed))

# %% [markdown]
# ## Gamma Migration
#
# A LayerNorm normalises each token, $\hat X = (X-\mu)/\sqrt{\sigma^2+\epsilon}$, then scales and
# shifts it, $\tilde X = \gamma\odot\hat X + \beta$. Factor γ out (Eq. 3 of the paper):
#
# $$\tilde X = \gamma \odot X', \qquad X' = \hat X + \beta/\gamma .$$
#
# $X'$ is the output of a **non-scaling LayerNorm**. In a post-LN BERT layer every consumer of
# $\tilde X$ is linear in it, so γ can be moved into each consumer:
#
# - the next Linear layer (Q, K, V after the embedding LN and after each FFN-LN; FFN1 after each
#   MHA-LN), with $W\in\mathbb R^{m\times d}$: column $j$ of $W$ is multiplied by $\gamma_j$ (Eq. 5,
#   below);
# - the shortcut of the next residual sum: $\tilde x + F(\tilde x) = \gamma\odot x' + F'(x')$ — the
#   shortcut branch is multiplied by γ (element-wise, in FP).
#
# For the Linear layer, Eq. 5 of the paper:
#
# $$W\tilde x = W(\gamma\odot x') = \sum_j W_{:j}\,\gamma_j\,x'_j = \big(W\operatorname{diag}(\gamma)\big)\,x'.$$
#
# Nothing else reads $\tilde X$, so the migrated model computes **the same function** — the
# identity is exact up to floating-point rounding. What changes is the tensor that gets quantized:
# $X'$ instead of $\tilde X$. Where γ is large in the outlier dimensions (Outlier Suppression's
# Fig. 1; chapter 3 measured the overlap on MiniLM), $X'$ has no such outliers, and the weights
# absorb γ instead — weights are quantized per output channel, so a column scaling costs little.
# The last FFN-LN feeds the pooler/head (or, for STS-B, the sentence embedding) and stays as it is.
#
# `outlierbook.methods.gamma_migration.migrate_gamma` implements this as an in-place transform in
# the shape of SmoothQuant's `smooth_ln_fcs`: swap each LayerNorm for a `NonScalingLayerNorm`,
# scale the consumers' input columns, and register a pre-hook that multiplies the shortcut by γ.
# First the check that it is exact, on real calibration inputs of every task (claim OS-4):

# %%
migration_diff = {t: osx.migration_max_difference(setups[t].model, migrated[t], batches[t]) for t in all_tasks}
rec.update({f"migration_max_abs_diff/{t}": v for t, v in migration_diff.items()})

# %% tags=["nbval-check-output"]
print(dumps({t: {"max_abs_diff_below_1e-4": v <= 1e-4} for t, v in migration_diff.items()}))

# %% [markdown]
# ### Why it helps: the quantization error of $\tilde X$ and $X'$ (Tables 1, 12 and 2)
#
# The paper measures the cosine similarity between a tensor and its 6-bit per-tensor min-max
# quantization. For every MHA-LN and FFN-LN output of the SST-2 model on the calibration batches,
# we compare $\tilde X$ with $X'$; then, for every FFN1 weight, the original $W$ with the
# γ-scaled $W\operatorname{diag}(\gamma)$ (6-bit, per output channel).

# %%
ln_cos = osx.ln_cosine_table(setups[cosine_task].model, batches[cosine_task], bits=6)
w_cos = osx.weight_cosine_table(setups[cosine_task].model, bits=6)
rec.add_rows(ln_cos.melt(id_vars=["layer", "ln"], var_name="metric").assign(experiment="ln_cosine_6bit", task=cosine_task))
rec.add_rows(w_cos.melt(id_vars=["layer"], var_name="metric").assign(experiment="weight_cosine_6bit", task=cosine_task))

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(dumps({ln: f"X' better in {int((g.x_prime > g.x_tilde).sum())}/{len(g)} layers" for ln, g in ln_cos.groupby("ln")}))

# %% [markdown]
# The result, per layer (in a quick build, the stored full run's):

# %%
ln_shown = experiment_rows("05_outlier_suppression", profile, "ln_cosine_6bit", ln_cos, wide=("layer", "ln"))
w_shown = experiment_rows("05_outlier_suppression", profile, "weight_cosine_6bit", w_cos, wide=("layer",))
display(replace(ln_shown, table=ln_shown.table.set_index(["ln", "layer"])).styled(
    "ch05_ln_cosine", "6-bit cosine similarity (%) of the LayerNorm outputs X̃ and X'"))
replace(w_shown, table=w_shown.table.set_index("layer")).styled(
    "ch05_weight_cosine", "6-bit cosine similarity (%) of the FFN1 weights W and W·diag(γ)")

# %%
paper_t1 = compare.load_paper("outlier_suppression", "Table 1")
paper_t1 = paper_t1.pivot(index="setting", columns="metric", values="value")
paper_t1 = paper_t1.loc[[f"MHA-LN layer {i}" for i in range(12)]]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for ax, (title, frame, xs) in zip(axes, [
        ("ours: MiniLM, SST-2 (6 layers)", ln_shown.table[ln_shown.table.ln == "MHA-LN"], None),
        ("paper: BERT-base, SST-2 (Table 1)", paper_t1.reset_index(drop=True), None)]):
    ax.plot(range(len(frame)), frame["x_tilde"].to_numpy(), "o-", label=r"$\tilde X$ (LayerNorm output)")
    ax.plot(range(len(frame)), frame["x_prime"].to_numpy(), "s-", label=r"$X'$ (non-scaling LN output)")
    ax.axhline(99, color="grey", lw=0.8, ls="--")
    ax.set(title=title, xlabel="layer (MHA-LN)")
axes[0].set_ylabel("6-bit cosine similarity (%)")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The left panel is ours, the right the paper's. Read them for the same pattern: the non-scaling
# output $X'$ sits above $\tilde X$ in the layers where γ carries the outliers. The count printed
# above also reports the FFN-LN outputs, which the paper's Table 12 covers for other models: on
# MiniLM they need not follow the MHA-LN pattern — where γ does not line up with the outlier
# dimensions, dividing by γ *creates* large values (β/γ for small γ) instead of removing them.
# So migrating a LayerNorm can *widen* the range of what is quantized, and whether Gamma Migration helps
# depends on which LayerNorms dominate: in the stored full run it helps MinMax on the four-task average
# but not Token-Wise Clipping (Table 3 below, and the verdicts at the end). The weight table
# shows the other side of the trade: absorbing γ into FFN1 changes the weights' 6-bit cosine
# similarity by very little (the paper: at most 0.05 points).
#
# ## Token-Wise Clipping
#
# Chapter 3 showed that clipping the largest values costs nothing in FP as long as it touches only
# a few tokens. Token-Wise Clipping picks the clipping range by that criterion (Algorithm 1).
#
# **Coarse stage.** For a node's activations on a calibration batch, take each token's maximum
# $m_t = \max_j x_{t,j}$ and minimum $n_t = \min_j x_{t,j}$. For a quantile $\alpha$, the upper
# clip $c_u$ is the $\alpha$-quantile of $\{m_t\}$ and the lower clip $c_l$ the corresponding
# quantile of $\{n_t\}$ (by magnitude): a share $1-\alpha$ of the **tokens** gets clipped, not of
# the values. The clips are averaged over batches and become the node's range. All nodes share one
# $\alpha$, chosen from a grid by the loss
#
# $$\mathcal L(\alpha) = \sum_{\text{batches}} \big\| f_{\hat\theta(\alpha)}(x) - f(x) \big\|_2^2$$
#
# between the final outputs of the activation-quantized and the FP model (weights stay FP during
# the search, attention probabilities keep min-max, as in the authors' code). The grid is the
# authors' `cac_step_iters`: steps of 0.01 below 1, spanning 0.3 at 6 bits (0.1 at 8, 0.9 at 4).
#
# **Fine stage.** Starting from the coarse ranges, the scales $s$ and zero points $z$ of every
# activation quantizer become parameters trained on the same loss with the straight-through
# estimator (LSQ+ with LSQ's gradient scale $1/\sqrt{N q_{\max}}$): Adam, learning rate
# $10^{-5}$, cosine annealing, three epochs over the calibration batches.

# %%
grid6 = twc_grid(6)
print(f"6-bit grid: {len(grid6)} quantiles from {grid6[0]} down to {grid6[-1]}; this profile uses "
      f"{len(osx.twc_candidates(6, twc_max_candidates))} of them")

# %% [markdown]
# ## Table 3: each component, at 6-6-6
#
# Five recipes on the same calibration batches: MinMax; MinMax on the migrated model; the coarse
# stage; coarse + fine; and both methods together ("ours" from here on).

# %%
ABLATION = {"minmax": "MinMax", "gm+minmax": "MinMax + GM", "twc_coarse": "TWC coarse", "twc": "TWC",
            "gm+twc": "GM + TWC"}
bits666 = osx.Bits.parse("6-6-6")
ablation = []
for t in tasks:
    ablation += osx.run_methods(setups[t], list(ABLATION), bits666, batches[t], cache=cache, memo=memo,
                                twc_max_candidates=twc_max_candidates)
ablation = pd.DataFrame(ablation).assign(label=lambda d: d.method.map(ABLATION))
fp_scores = {t: setups[t].score() for t in tasks}
table3 = ablation.pivot(index="label", columns="task", values="value").loc[list(ABLATION.values()), tasks]
table3.loc["FP32"] = pd.Series(fp_scores)
table3["average"] = table3[tasks].mean(axis=1)
rec.add_rows(ablation.drop(columns=["fine_losses"], errors="ignore").assign(experiment="table3_ablation"))
rec.update({f"table3/{label}/{t}": v for label, row in table3.iterrows() for t, v in row.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table3.round(2).to_string())

# %% [markdown]
# The result, ours beside the paper's: in a quick build "ours" is the stored full run (all four tasks,
# every dev example, 256 calibration examples, the whole search grid); the numbers above are the smoke test.

# %%
shown3 = result("table3", table3.rename_axis("label"))
display(shown3.styled("ch05_table3_ours", "Table 3 (ours): the ablation at 6-6-6, with the four-task average"))
paper_t3 = compare.load_paper("outlier_suppression", "Table 3")
ours_t3 = shown3.table.reset_index().melt(id_vars="label", var_name="task").query("task != 'average'")
ours_t3 = ours_t3.assign(setting=ours_t3.label, metric=ours_t3.task.map(PAPER_NAME))
t3 = compare.compare(paper_t3[paper_t3.metric.isin(ours_t3.metric)], ours_t3, tol=2.0, profile=shown3.profile)
compare.styled(t3, "ch05_table3", caption=shown3.caption("Table 3 (paper: RoBERTa-base) beside ours (MiniLM), 6-6-6"))

# %% [markdown]
# ### Selective Gamma Migration: where γ shrinks the outliers and where it grows them
#
# Migration quantizes the non-scaling output $X' = \tilde X/\gamma$ (up to the bias term) in place of
# $\tilde X = \gamma \odot X'$. On a dimension $j$ with $|\gamma_j| < 1$,
#
# $$|X'_j| = \frac{|\tilde X_j|}{|\gamma_j|} > |\tilde X_j| ,$$
#
# so where the outlier dimensions have $|\gamma| < 1$, migration makes the outliers *larger*: the
# per-tensor range $\max_j |X'_j|$ widens and with it the step $s = (\max - \min)/(2^b - 1)$ of every
# other dimension. Only where γ *amplifies* the outlier dimensions ($|\gamma| > 1$ there) does migration
# shrink the range it is meant to shrink. The rule, fixed before we measured it: take the ten dimensions
# of largest $\max|\tilde X|$ on the calibration batches (as the ledger's OS-1); migrate a LayerNorm iff
# the mean $|\gamma|$ over them exceeds 1 (`methods.gamma_migration.outlier_gammas`; the recipe's
# `GammaMigration(selective=True)`, the method prefix `sgm+`). The mean $|\gamma|$ at the outlier
# dimensions of every LayerNorm that migration touches, per task:

# %%
from outlierbook.methods.gamma_migration import outlier_gammas

gammas = pd.DataFrame({t: pd.DataFrame(outlier_gammas(setups[t].model, batches[t])).set_index("layernorm")[
    "mean |γ| at outlier dims"] for t in tasks})
rec.update({f"outlier_gamma/{ln}/{t}": v for ln, row in gammas.iterrows() for t, v in row.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(gammas.round(2).to_string())
print(dumps({t: [ln for ln in gammas.index if gammas.loc[ln, t] > 1] for t in tasks}))

# %% [markdown]
# Selective migration against migrating every LayerNorm and none, at 6-6-6 on the same batches (the
# quick profile runs it with MinMax only; the full profile also with Token-Wise Clipping):

# %%
SELECTIVE = {"sgm+minmax": "MinMax + selective GM", "sgm+twc": "selective GM + TWC"}
sel = []
for t in tasks:
    sel += osx.run_methods(setups[t], selective_gm, bits666, batches[t], cache=cache, memo=memo,
                           twc_max_candidates=twc_max_candidates)
sel = pd.DataFrame(sel).assign(label=lambda d: d.method.map(SELECTIVE))
rec.add_rows(sel.drop(columns=["fine_losses"], errors="ignore").assign(experiment="selective_gm"))
selective = pd.concat([table3.loc[["MinMax", "MinMax + GM"] + (["TWC", "GM + TWC"] if "sgm+twc" in selective_gm else []),
                                  tasks],
                       sel.pivot(index="label", columns="task", values="value")[tasks]])
selective = selective.loc[[r for r in ["MinMax", "MinMax + GM", "MinMax + selective GM", "TWC", "GM + TWC",
                                       "selective GM + TWC"] if r in selective.index]]
selective["average"] = selective[tasks].mean(axis=1)
rec.update({f"selective_gm/{label}/{t}": v for label, row in selective.iterrows() for t, v in row.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(selective.round(2).to_string())

# %%
shown_sel = result("selective_gm", selective.rename_axis("label"))
shown_sel.styled("ch05_selective_gm", "Selective Gamma Migration beside all and none, 6-6-6")

# %% [markdown]
# The paper's Table 3 is for RoBERTa, whose outliers are the strongest of its three models; the
# *ordering* of the rows is the comparable quantity, not the values. The coarse search's loss over
# the grid shows what the search sees: clipping a few per cent of the tokens lowers the output error,
# clipping more raises it again.

# %%
t0 = tasks[0]
qm = quantize(setups[t0].model, osx.recipe_for("gm+twc_coarse", bits666, twc_max_candidates), batches[t0])
search = qm.info["token_wise_clipping"]
losses = pd.Series(search["losses"]).sort_index()
rec.update({f"coarse_loss/{t0}/{p}": v for p, v in losses.items()})
# the figure shows the stored full run's search (the whole grid, 256 examples) in a quick build that has one
stored_losses = result("coarse_loss", pd.DataFrame(index=[t0], columns=[]))
shown_loss = stored_losses.table.iloc[0].dropna() if stored_losses.from_stored_run else losses
shown_loss.index = shown_loss.index.astype(float)
shown_loss = shown_loss.sort_index()
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(100 * (1 - shown_loss.index), shown_loss.to_numpy(), "o-")
ax.axvline(100 * (1 - shown_loss.idxmin()), color="C3", ls="--", lw=1, label="chosen (least loss)")
task_shown = stored_losses.table.index[0] if stored_losses.from_stored_run else t0
ax.set(xlabel="tokens clipped per node (%)", ylabel="output MSE (sum over batches)", yscale="log",
       title=f"Coarse stage on the migrated model ({PAPER_NAME[task_shown]}, 6-bit; "
             f"{'full run' if stored_losses.from_stored_run else 'this run'})")
ax.legend()
plt.show()

# %% [markdown]
# ## Table 4: against the other calibration methods, at 8-8-8 and 6-6-6
#
# Baselines, all on the same batches and positions: **MinMax**; **OMSE** (golden-section search of
# the quantization MSE per node); **Percentile** (best of 99.9 / 99.99 / 99.999 % on the evaluation
# set, as the paper did — which flatters it); **EasyQuant** and **PEG**.
#
# *EasyQuant* (Wu et al. 2020) alternately searches, per Linear layer, the activation scale and the
# weight scale that maximise the cosine similarity of the layer's output with the FP output. The
# authors did not release their implementation; ours (`methods/easyquant.py`) searches multipliers
# in $[0.5, 1]$ of the min-max scales, two alternations, on inputs recorded from the FP model, and
# leaves the attention-internal nodes at min-max. *PEG* (from the 2021 paper, chapter 4) here uses
# $K=6$ groups with range-based permutation on the three LayerNorm outputs of this placement.

# %%
METHODS4 = {"minmax": "MinMax", "omse": "OMSE", **{f"percentile:{p}": f"percentile:{p}" for p in percentiles},
            "easyquant": "EasyQuant", "peg": "PEG (K=6, permuted)", "gm+twc": "Ours (GM + TWC)"}
rows4 = []
for b in table4_bits:
    for t in tasks:
        rows = osx.run_methods(setups[t], list(METHODS4), osx.Bits.parse(b), batches[t],
                               cache=cache, memo=memo, twc_max_candidates=twc_max_candidates)
        rows4 += [r for r in rows if not r["method"].startswith("percentile:")] + [osx.best_percentile(rows)]
table4_long = pd.DataFrame(rows4).assign(label=lambda d: d.method.map(METHODS4).fillna("Percentile (best on dev)"))
rec.add_rows(table4_long.drop(columns=["fine_losses"], errors="ignore").assign(experiment="table4_ptq"))
table4 = table4_long.pivot_table(index=["bits", "label"], columns="task", values="value")[tasks]
table4["average"] = table4.mean(axis=1)
for t in tasks:
    table4.loc[("32-32-32", "FP32"), t] = fp_scores[t]
table4.loc[("32-32-32", "FP32"), "average"] = sum(fp_scores.values()) / len(fp_scores)
rec.update({f"table4/{b}/{label}/{t}": v for (b, label), row in table4.iterrows() for t, v in row.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table4.round(2).to_string())

# %%
shown4 = result("table4", table4)
display(shown4.styled("ch05_table4_ours", "Table 4 (ours): the methods at each bit-width, with the four-task average"))
paper_t4 = compare.load_paper("outlier_suppression", "Table 4")
NAME4 = {"MinMax": "MinMax", "OMSE": "OMSE", "Percentile (best on dev)": "Percentile", "EasyQuant": "EasyQuant",
         "PEG (K=6, permuted)": "PEG*", "Ours (GM + TWC)": "Ours", "FP32": "FP32"}
ours_t4 = shown4.table.drop(columns="average").reset_index().melt(id_vars=["bits", "label"], var_name="task")
ours_t4 = ours_t4.assign(setting=ours_t4.label.map(NAME4) + " " + ours_t4.bits, metric=ours_t4.task.map(PAPER_NAME))
t4 = compare.compare(paper_t4[paper_t4.metric.isin(ours_t4.metric)], ours_t4, tol=2.0, profile=shown4.profile)
compare.styled(t4, "ch05_table4", caption=shown4.caption(
    "Table 4 (paper: BERT-base) beside ours (MiniLM); PEG* used PEG's own positions"))

# %% [markdown]
# ## Tables 14 and 15: how long does calibration take?
#
# The paper reports wall-clock activation calibration on 256 samples: TWC's coarse stage
# (30-point grid) 136 s against 1754 s for the authors' OMSE, which runs scipy's bounded search of
# each node's range on every calibration batch and averages the results. We time every method above on
# the same batches in this run (`seconds` excludes evaluation). Our "OMSE" is a vectorised
# golden-section search on a pooled sample; the grid variant (100 candidates per node) is timed
# separately below; the authors' per-batch OMSE (`omse_per_batch`, `quant.estimators.PerBatchOMSE`)
# is timed in the full profile only, in the claim check (it takes hours on this CPU). Timings depend
# on the machine and vary between runs, so they are printed, not checked.

# %%
t0 = tasks[0]
timed = osx.run_methods(setups[t0], ["mse_grid"], bits666, batches[t0], cache=cache, memo=memo)
timing_rows = [r for r in cache.values() if r["task"] == t0 and r["bits"] == "6-6-6"] + timed
timing = pd.DataFrame(timing_rows)[["method", "value", "seconds"]].drop_duplicates("method").set_index("method")
timing["candidates"] = [cache.get((t0, m, "6-6-6"), {}).get("n_candidates") for m in timing.index]
rec.update({f"calibration_seconds/{t0}/{m}": v for m, v in timing["seconds"].items()})
print(f"{PAPER_NAME[t0]}, 6-6-6, {n_calib} calibration examples:")
print(timing.round(2).to_string())

# %% [markdown]
# ## Table 5: quantization-aware training at 4-bit weights
#
# QAT fine-tunes the weights and the quantizers' ranges together through the straight-through
# estimator, on the task's training data. Three initialisations and range parameterisations of the
# activations:
#
# - **LSQ+** {cite:p}`bhalgat2020lsqplus` from MinMax ranges: scales and zero points learned, with LSQ's
#   gradient scale $g = 1/\sqrt{N\,q_{max}}$ for $N$ elements per scale;
# - **PACT** {cite:p}`choi2018pact` from MinMax ranges: the activation clipping bounds $[l, u]$ are the
#   parameters, $\partial\hat x/\partial u = \mathbb 1[x>u]$ (PACT's straight-through rule, two-sided because
#   a transformer's activations are signed);
# - **ours**: Gamma Migration + TWC's coarse stage, then LSQ+.
#
# The weights start the same way in all three, as LSQ+ initialises them (`quant.estimators.MeanStd`,
# the authors' `LSQPlusObserver`): a symmetric scale per output channel from
# $\max(|\mu - 3\sigma|, |\mu + 3\sigma|)$ instead of $\max|w|$, trading a little clipping of the largest
# weights for a finer grid. Where we still differ from the baselines' papers: PACT initialises its bound at a
# constant and regularises it with weight decay, ours starts it from MinMax with no decay (as every range
# here); and the papers searched learning rates per method, we give all three one learning rate and
# the same steps. What the two weight initialisations do to this model's encoder weights, before any
# training:

# %% tags=["nbval-check-output"]
weight_init = osx.weight_init_table(setups["sst2"].model)
rec.add_rows(weight_init.assign(experiment="qat_weight_init"))
print(weight_init.round(2).to_string(index=False))

# %% [markdown]
# At 4 bits the LSQ+ start rounds fewer weights to zero and has the smaller rounding error; at 6 and 8 bits
# its clipping costs more than the finer grid saves (LSQ+ was proposed for 2- to 4-bit quantization).
#
# The same training loop as fine-tuning (Accelerate, AdamW, warm-up and linear decay), on SST-2,
# without knowledge distillation.

# %%
qat_rows = []
for b in qat_bits:
    for variant in osx.QAT_VARIANTS:
        qat_rows.append(osx.qat_variant(setups["sst2"], variant, osx.Bits.parse(b), batches["sst2"], steps=qat_steps,
                                        batch_size=qat_batch_size, seed=seed, twc_max_candidates=twc_max_candidates,
                                        memo=memo))
table5 = pd.DataFrame(qat_rows)
rec.add_rows(table5.assign(experiment="table5_qat"))
rec.update({f"table5/{r.bits}/{r.variant}/{k}": getattr(r, k) for r in table5.itertuples() for k in ("ptq_init", "value")})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table5[["bits", "variant", "ptq_init", "value"]].round(2).to_string(index=False))

# %%
shown5 = result("table5", table5.set_index(["bits", "variant"])[["ptq_init", "value"]])
paper_t5 = compare.load_paper("outlier_suppression", "Table 5")
VAR5 = {"LSQ+": "LSQ+", "PACT": "PACT", "Ours (GM + TWC coarse → LSQ+)": "Ours"}
ours_t5 = shown5.table.reset_index()
ours_t5 = ours_t5.assign(setting=ours_t5.variant.map(VAR5) + " " + ours_t5.bits, metric="SST-2")
t5 = compare.compare(paper_t5[paper_t5.metric == "SST-2"], ours_t5, tol=2.0, profile=shown5.profile)
compare.styled(t5, "ch05_table5", caption=shown5.caption(
    "Table 5 (paper: BERT-base, SST-2) beside ours (MiniLM, SST-2, CPU budget)"))

# %% [markdown]
# ## Not reproduced: question answering and summarization (Tables 6 and 7)
#
# The paper also quantizes BERT, RoBERTa and BART on SQuAD and BART on CNN/DailyMail and XSum. None of
# these data sets or models is available offline, so the book does **not** reproduce them; their
# numbers are shown here only as context, transcribed from the paper.

# %%
for table, what in [("Table 6", "question answering (F1)"), ("Table 7", "summarization (ROUGE-1)")]:
    paper_only = compare.load_paper("outlier_suppression", table).pivot_table(
        index="setting", columns="metric", values="value", sort=False)
    display(paper_only.style.set_uuid(f"ch05_not_reproduced_{table[-1]}").format("{:.2f}", na_rep="—").set_caption(
        f"Paper only, {table}, {what} — NOT reproduced in this book"))

# %% [markdown]
# ## Claim checks
#
# The rules are fixed in the {doc}`claims ledger </book/claims>`; the averages are over the tasks this profile ran.

# %%
claims.check(rec, "OS-4", ours={t: f"{v:.2e}" for t, v in migration_diff.items()}, paper="exact (Eq. 4–5)",
             holds=all(v <= 1e-4 for v in migration_diff.values()), note="max |Δ output| on calibration inputs")

mha = ln_cos[ln_cos.ln == "MHA-LN"]
better = int((mha.x_prime > mha.x_tilde).sum())
claims.check(rec, "OS-2", ours={"MHA-LN layers where X' > X~": f"{better}/{len(mha)}"},
             paper="Table 1: X' higher in 12/12 MHA-LN layers (93.3–98.6 → 98.7–99.4 %)",
             holds=better > len(mha) / 2, note="most = more than half of the MHA-LN layers; SST-2 model")

w_drop = (w_cos.original - w_cos.gamma_scaled).max()
claims.check(rec, "OS-3", ours={"largest drop (points)": round(float(w_drop), 3)}, paper="≤ 0.05 points (Table 2)",
             holds=bool(w_drop <= 0.1), note="6-bit per-channel FFN1 weights, every layer")

# The ledger's competence precondition (2026-11-29): a task enters an average only if its FP model beats the
# majority class by 5 points; each averaged claim is also evaluated under the old rule (every task) beside it.
state = competence.status(fp_scores, {t: setups[t].eval_data.labels for t in tasks})


a3 = competence.averages(table3[tasks], state)
new, old = a3.verdicts(rules.os7)
claims.check(rec, "OS-7", ours=a3.shown(list(table3.index)),
             paper="RoBERTa 6-6-6: MinMax < MinMax+GM; TWC < GM+TWC on every task", holds=new, old_rule=old,
             note=f"averages over {', '.join(a3.tasks)}; {competence.note(state, a3)}")

a4 = competence.averages(table4[tasks], state)
new, old = a4.verdicts(rules.os8)
claims.check(rec, "OS-8", ours=rules.os8_evidence(a4.new if a4.new is not None else a4.old),
             paper="BERT avg: ours 81.19 vs FP 83.83 at 6-6-6 (gap 2.64); 8-8-8 83.96", holds=new, old_rule=old,
             note=f"best on the average over {', '.join(a4.tasks)} at 6-6-6 (ties count) and 8-8-8 within 1 point of FP; "
                  f"{competence.note(state, a4)}")

# OS-9 changed on 2026-11-29: the reference is the authors' OMSE (scipy's bounded search on every batch,
# `omse_per_batch`), timed in the same run on the same batches; the vectorised OMSE and the grid are timed
# beside it. The per-batch search takes hours on this CPU, so only the full profile runs it.
seconds = {m: cache[(tasks[0], m, "6-6-6")]["seconds"] for m in ("twc_coarse", "mse_grid", "omse")
           if (tasks[0], m, "6-6-6") in cache}
if authors_omse:
    osx.run_methods(setups[tasks[0]], ["omse_per_batch"], bits666, batches[tasks[0]], cache=cache, memo=memo)
    seconds["omse_per_batch"] = cache[(tasks[0], "omse_per_batch", "6-6-6")]["seconds"]
    rec.update({f"calibration_seconds/{tasks[0]}/omse_per_batch": seconds["omse_per_batch"],
                f"authors_omse/6-6-6/{tasks[0]}": cache[(tasks[0], "omse_per_batch", "6-6-6")]["value"]})
t_coarse = seconds["twc_coarse"]
claims.check(rec, "OS-9", ours={**{f"{m} (s)": round(v, 1) for m, v in seconds.items()},
                                "candidates": cache[(tasks[0], "twc_coarse", "6-6-6")]["n_candidates"]},
             paper="135.7 s vs 1754 s (Table 15)",
             holds=t_coarse < seconds["omse_per_batch"] if authors_omse else None,
             old_rule=t_coarse < seconds["mse_grid"],
             note=f"{PAPER_NAME[tasks[0]]}, same {n_calib} examples, one run; wall-clock, not a checked output"
                  + ("" if authors_omse else "; the authors' per-batch OMSE runs in the full profile only"))

q444 = table5[table5.bits == "4-4-4"].set_index("variant")["value"]
# OS-10 compares with LSQ+: a baseline at chance tests nothing, so LSQ+ must clear the same precondition
sst2_ok = state.get("sst2", {}).get("competent", False)
lsq_ok = sst2_ok and competence.is_competent("sst2", float(q444["LSQ+"]), setups["sst2"].eval_data.labels)
os10 = bool(q444["Ours (GM + TWC coarse → LSQ+)"] > q444["LSQ+"])
_ = claims.check(rec, "OS-10", ours={k: round(float(v), 2) for k, v in q444.items()},
                 paper="SST-2 4-4-4: ours 91.86 vs LSQ+ 82.34 / PACT 83.03",
                 holds=os10 if lsq_ok else None, old_rule=os10,
                 note=f"{int(table5.steps.iloc[0])} QAT steps of {qat_batch_size}; {profile} profile"
                      + ("" if sst2_ok else "; SST-2's FP model not competent")
                      + ("" if lsq_ok or not sst2_ok else "; LSQ+ at 4-4-4 is not above the majority class + 5, "
                                                          "so the comparison tests nothing"))

# %% tags=["nbval-check-output"]
print(dumps({c["id"]: c["holds"] for c in rec.claims if c["id"] != "OS-9"}))

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ## What the results say
#
# Read the claim table above together with the tables: where a claim fails at our scale, the
# tables show by how much. Two claims depend on more than the algorithm. **OS-9 (calibration
# time)** compares implementations as much as algorithms. Our coarse stage records every node's
# per-token extremes in one FP pass (the ranges of every candidate follow from them; a unit test
# checks that this equals recalibrating per candidate), but it must still run the quantized model once
# per candidate quantile to measure the output loss. Our MSE grid search evaluates all 100 candidates
# of a node on one pooled sample in a single vectorised pass, without re-running the model; the
# authors' OMSE loops over candidates and batches, hence their 1754 s. The ledger therefore times
# TWC against the authors' per-batch OMSE (full profile), with the vectorised searches beside it as
# a finding about OMSE, not as the claim's test. **OS-7 (every component helps)**
# needs Gamma Migration to help both MinMax and Token-Wise Clipping, which requires γ to carry the
# outlier dimensions of the LN output; the cosine table above shows for which LayerNorms that is true on MiniLM. A 6-layer, 384-wide sentence encoder has milder outliers than
# BERT-base (chapter 3), so MinMax loses less at 6 bits and every method has less to recover; with
# the quick profile's 100 evaluation examples one example is one point. The full profile's results
# (all four tasks, every dev example, 256 calibration examples, the whole quantile grid) are stored in
# `results/05_outlier_suppression/full/`. The stored run trained QAT for 250 steps at 4-4-8 and 4-4-4;
# the full profile now trains OS-10's 4-4-4 for one epoch of SST-2 with LSQ+'s weight start, so Table 5
# and OS-10 change when it is run again with
#
# ```bash
# .venv/bin/python -m outlierbook run 05_outlier_suppression --profile full
# ```

# %% [markdown]
# ### The full profile's verdicts
#
# The full profile's results are stored with the book (`results/05_outlier_suppression/full/`), so a quick
# build shows the verdicts of the real run here, beside the quick run's above:

# %% tags=["nbval-check-output"]
# wall-clock seconds stay out of checked outputs: OS-9's row points to the stored file instead
print(full_profile_verdicts("05_outlier_suppression", profile,
                            replace={"OS-9": "timings in results/05_outlier_suppression/full/claims.json"}))

# %% [markdown]
# ## Exercises
#
# 1. Apply Gamma Migration to the embedding LayerNorm only (`migrate_gamma(m, ffn_ln=False,
#    mha_ln=False)`). Which nodes' 6-bit cosine similarity changes, and which cannot?
# 2. Token-Wise Clipping clips a share of *tokens*. Write the value-wise alternative (clip the
#    same share of all values with the `percentile` estimator) and compare the ranges it picks on
#    a tensor with one outlier token.
# 3. Why are the attention probabilities exempt from the coarse search?
#
# ```{admonition} Solution 1
# :class: dropdown
# Only `embeddings.ln` changes: it now outputs $X'$ without γ's outliers, and Q, K, V of layer 0
# absorb γ. The MHA-LN and FFN-LN outputs are computed by their own LayerNorms, which keep γ, so
# their quantization error is unchanged; the model's FP function is unchanged everywhere. Compare
# with `osx.ln_cosine_table` on both models and `quantized_cosine` on the embedding LN output.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# Build `x = torch.randn(1000, 384); x[7, 5] = 60` and compare `TokenWiseClip(0.99)` with
# `Percentile(99.0)` (`quant.estimators`). The outlier token is 0.1 % of the tokens but only
# 0.0003 % of the values: the token-wise clip at 0.99 removes it, a value-wise 99th percentile
# clips one value in a hundred of *every* token — much more aggressive on ordinary values while
# set by the bulk, not by the tokens that carry the outliers.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# Probabilities live in $[0, 1]$ and rows sum to one; the large ones carry the attention pattern
# (chapter 3's delimiter heads put almost all mass on one token). Clipping them changes which
# tokens a head reads, and their range is bounded anyway, so min-max is already tight.
# ```
