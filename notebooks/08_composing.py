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
# # Composing the methods
#
# Each of the previous chapters reproduced one paper on its own path. The papers do not say what
# happens when their methods meet: does Gamma Migration still help once Token-Wise Clipping picks the
# ranges? Does PEG's permutation survive a migration that changes the very ranges it sorts by? Can a
# clipped softmax simply be switched on in a model that was pretrained without it? None of the
# authors' repositories runs two papers' methods together, and the common toolkits implement none
# of PEG, Token-Wise Clipping, clipped softmax or gated attention. This chapter runs all of them on
# one model through one pipeline:
#
# $$\text{FP model} \xrightarrow{\text{transforms}} \text{FP model}' \xrightarrow{\text{wrap}}
# \text{nodes} \xrightarrow{\text{calibrators}} \text{quantized model} \xrightarrow{} \text{evaluate},$$
#
# where a **recipe** names the bit-widths, the node placement, the transforms (functions of the FP
# model that return a new model) and the calibrators (which set ranges), and `quantize(model, recipe,
# batches)` validates it against the model before any compute. The quick profile is a smoke test on
# a sample of STS-B; the full profile runs all four tasks with three calibration seeds.

# %% tags=["parameters"]
profile = "quick"
model = "all-MiniLM-L6-v2"
data_source = "local"
tasks = ["stsb"]
eval_limit = 100
n_calib = 64
bits = ["W8A8", "W6A6", "W4A8"]
seeds = [0]
twc_max_candidates = 6
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from outlierbook.errors import ConfigError
from outlierbook.experiments import composing as cx
from outlierbook.memo import Memo
from outlierbook.methods.peg import peg_config
from outlierbook.models.tasks import task_setup
from outlierbook.quant.calibrate import calibration_batches
from outlierbook.recipe import (GammaMigration, PegPermutation, Ranges, Recipe, SmoothQuant, TokenWiseClipping,
                                 load_quantized, quantize, save_quantized)
from outlierbook.results import Recorder, dumps

rec = Recorder("08_composing", profile, params=dict(model=model, tasks=tasks, eval_limit=eval_limit, n_calib=n_calib,
                                                  bits=bits, seeds=seeds, twc_max_candidates=twc_max_candidates,
                                                  seed=seed))
# resumable long runs; nbval re-runs the quick one
memo = Memo("08_composing", profile, enabled=profile == "full",
            context=dict(model=model, data_source=data_source, n_calib=n_calib, seed=seed))
setups = {t: task_setup(t, profile, model=model, eval_limit=eval_limit, data_source=data_source, seed=seed)
          for t in tasks}


def batches_for(setup, calib_seed):
    return calibration_batches(setup.calibration, setup.tokenizer, n=n_calib, batch_size=32, seed=calib_seed)


fp = {t: s.score() for t, s in setups.items()}
rec.update({f"fp/{t}": v for t, v in fp.items()})

# %% [markdown]
# ## A recipe, and what it refuses
#
# A recipe is a frozen description. Here is Outlier Suppression's framework at 6 bits with PEG's
# groups added on the LayerNorm outputs. Token-Wise Clipping gives every node it calibrates *one*
# per-tensor range, so it cannot also calibrate PEG's per-group nodes; the recipe says so when it is
# validated, before a single forward pass — the fix is to leave those nodes to PEG.

# %%
s0 = setups[tasks[0]]
width = s0.model.config.hidden_size
conflicting = Recipe(bits="W6A6", placement="os", act_estimator="avg_minmax", transforms=(GammaMigration(),),
                     overrides=peg_config(6, cx.LN_KINDS),
                     calibrators=(PegPermutation(cx.LN_KINDS), Ranges(), TokenWiseClipping()))
try:
    conflicting.validate(s0.model)
    refused = None
except ConfigError as err:
    refused = str(err)
composed = cx.recipes("W6A6", width, twc_max_candidates)[f"GM + TWC + PEG (K={cx.group_counts(width, (6,))[0]}+P)"]
composed.validate(s0.model)
rec.update({"check/conflict_refused_at_validation": refused is not None})

# %% tags=["nbval-check-output"]
print("refused:", refused)
print("accepted:", composed.label)

# %% [markdown]
# ## A calibrated model is a file
#
# Everything calibration sets is module state, as in `torch.ao.quantization`: each quantizer's scale,
# zero point, PEG permutation and on/off switches, and each range estimator's statistics (its running
# minimum and maximum, how many batches it has seen) are buffers. So `save_quantized` writes the
# calibrated model's `state_dict` as safetensors, and `load_quantized` rebuilds it from the FP model and
# the same recipe — it refuses another recipe — and the loaded model computes exactly what the saved one
# did. Here with Gamma Migration and PEG's permuted groups, whose permutation travels in the file.

# %%
k0 = cx.group_counts(width, (6,))[0]
peg_recipe = cx.recipes("W6A6", width, twc_max_candidates)[f"GM + PEG (K={k0}+P)"]
calibrated = quantize(s0.model, peg_recipe, batches_for(s0, 0))
with tempfile.TemporaryDirectory() as folder:
    path = save_quantized(calibrated, Path(folder) / "gm_peg_w6a6.safetensors")
    reloaded = load_quantized(s0.model, peg_recipe, path)
    try:
        load_quantized(s0.model, cx.recipes("W6A6", width)["MinMax"], path)
        wrong_recipe = None
    except ConfigError as err:
        wrong_recipe = str(err).replace(folder, "<folder>")
same_score = s0.score(reloaded) == s0.score(calibrated)
rec.update({"check/saved_model_scores_the_same": same_score})

# %% tags=["nbval-check-output"]
print(dumps({"recipe": peg_recipe.label, "same score after loading": same_score}))
print("another recipe:", wrong_recipe)

# %% [markdown]
# ## Which transforms commute
#
# A post-LN encoder layer reads each LayerNorm output $\tilde X = \gamma\odot\hat X + \beta$ twice: through
# Linear layers $W$ and through the residual shortcut of the next sum. For any positive per-channel $s$,
#
# $$\tilde X = s\odot\Big(\frac{\gamma}{s}\odot\hat X + \frac{\beta}{s}\Big),\qquad
# W\tilde x = \big(W\,\mathrm{diag}(s)\big)\frac{\tilde x}{s},\qquad \text{shortcut}\cdot s,$$
#
# so dividing the LN's affine parameters by $s$ and multiplying every reader by $s$ computes the same
# function while the quantized tensor becomes $\tilde X/s$ (`methods/smoothing.py`). **SmoothQuant**
# picks $s_j = \max|\tilde X_j|^{\alpha}/\max|W_{:,j}|^{1-\alpha}$ from calibration data; **Gamma Migration**
# is the data-free case $s = \gamma$, which leaves $\hat X + \beta/\gamma$. SmoothQuant's own
# `smooth_ln_fcs` was written for pre-LN decoders, where the LN output feeds only Linear layers; it
# rescales γ, β and the Linear layers but not the shortcut. On a post-LN encoder that is not exact.
#
# Two rescalings of the same LayerNorm multiply, $\tilde X/(s_1 s_2)$, but they do not commute
# when the second is *computed from* the first:
#
# - **GM after SmoothQuant** divides by the smoothed γ, $\gamma/s_1$, and leaves $\hat X + \beta/\gamma$ again:
#   Gamma Migration undoes any earlier smoothing of the same LN;
# - **SmoothQuant after GM** measures the migrated tensor and smooths it further: a different model.
#
# The pipeline fixes one order for the rest: transforms, then wrapping, then calibrators in stage order
# (PEG's permutation, ranges, Token-Wise Clipping). So PEG's permutation is always computed on the
# tensor that is quantized — after migration — and commuting GM and PEG is not a question the
# pipeline can ask. We measure all of this on the FP model.

# %%
node = "layer2.attention.ln"
exactness, scale = cx.transform_exactness(s0.model, batches_for(s0, seed), node)
tolerance = 1e-4 * max(1.0, scale)
checks = {
    "gm_exact": bool(exactness.loc["GM", "Δ output"] <= tolerance),
    "smoothquant_exact_with_shortcut": bool(exactness.loc["SQ", "Δ output"] <= tolerance),
    "smooth_ln_fcs_not_exact_on_post_ln": bool(exactness.loc["SQ, shortcut not rescaled", "Δ output"] > 100 * tolerance),
    "gm_after_smoothquant_is_gm": bool(exactness.loc["SQ then GM", "Δ tensor vs GM"] <= 1e-3),
    "smoothquant_after_gm_differs": bool(exactness.loc["GM then SQ", "Δ tensor vs GM"] > 1e-2),
}
rec.add_rows(exactness.reset_index().melt(id_vars="transforms", var_name="metric").assign(experiment="exactness"))
rec.update({f"check/{k}": v for k, v in checks.items()})

# %% tags=["nbval-check-output"]
print(exactness.to_string(float_format=lambda v: f"{v:.2g}"))
print(dumps(checks))

# %% [markdown]
# GM is Gamma Migration, SQ SmoothQuant with α = 0.5; "Δ output" is the largest change of the encoder's
# output on a calibration batch, "Δ tensor vs GM" the largest difference of the quantized tensor
# (`layer2.attention.ln`, an MHA-LN output) from Gamma Migration's, "max |tensor|" what the quantizer
# then has to cover. Read "Δ output" against the output's own scale, printed below: the exact
# transforms change it by floating-point rounding; SmoothQuant without the shortcut changes the
# model. GM undoes an earlier smoothing ("SQ then GM" leaves GM's tensor); smoothing after GM
# gives another tensor.

# %%
print(f"largest |output| on the probe: {scale:.3g}")

# %% [markdown]
# ## Every method, alone and together
#
# Nine recipes (`experiments/composing.py`) at three bit-widths. All share the FasterTransformer
# placement (inputs of every matrix product), per-channel weights, per-tensor activations with average
# min-max ranges and embedding tables at the weight bit-width. The clipped softmax is installed on the
# pretrained model without retraining ($\gamma = -0.01$, so probabilities below $\gamma/(\gamma-1)\approx 0.0099$
# become exactly zero): whether a model tolerates the fix *without* training for it is the question.
# Each result is stored as soon as it is computed, so an interrupted full run resumes where it stopped.

# %%
rows = pd.concat([cx.score_recipes(setups[t], bits, lambda sd, s=setups[t]: batches_for(s, sd), seeds, memo,
                                   twc_max_candidates) for t in tasks], ignore_index=True)
summary = cx.summary(rows)
fp_transformed = {t: cx.fp_of_transforms(setups[t], width, batches_for(setups[t], seed)) for t in tasks}
rec.add_rows(rows.drop(columns=["seconds"]).assign(experiment="recipes"))
rec.update({f"recipes/{r.task}/{r.bits}/{r.recipe}": r.mean for r in summary.itertuples()})
rec.update({f"fp_transformed/{t}/{k}": v for t, d in fp_transformed.items() for k, v in d.items()})


def table_for(b):
    d = summary[summary.bits == b]
    mean = d.pivot(index="recipe", columns="task", values="mean").loc[list(dict.fromkeys(d.recipe)), tasks]
    if len(tasks) > 1:
        mean["average"] = mean.mean(axis=1)
    mean.loc["FP32"] = pd.Series({**fp, **({"average": sum(fp.values()) / len(fp)} if len(tasks) > 1 else {})})
    return mean


# %% tags=["nbval-check-output"]
for b in bits:
    print(f"{b} (mean over {len(seeds)} calibration seed(s))")
    print(table_for(b).round(2).to_string())
    print()

# %%
if len(seeds) > 1:
    for b in bits:
        d = summary[summary.bits == b]
        print(b, "— standard deviation over seeds")
        print(d.pivot(index="recipe", columns="task", values="std").loc[list(dict.fromkeys(d.recipe)), tasks]
              .round(2).to_string())
else:
    print("one calibration seed in this profile: no spread to report, and differences between recipes are not "
          "findings until the full profile's seeds give one")

# %%
fig, axes = plt.subplots(len(tasks), 1, figsize=(8.6, 3.2 * len(tasks)), squeeze=False)
for ax, t in zip(axes[:, 0], tasks):
    d = summary[summary.task == t]
    for i, (name, g) in enumerate(d.groupby("recipe", sort=False)):
        g = g.set_index("bits").loc[bits]
        ax.errorbar(range(len(bits)), g["mean"], yerr=g["std"], marker="o", ms=4, capsize=3, lw=1.2,
                    ls=("-", "--", "-.", ":")[i % 4], label=name)
    ax.axhline(fp[t], color="grey", lw=0.8, ls=":", label="FP32")
    ax.set(xticks=range(len(bits)), xticklabels=bits, ylabel=setups[t].metric, title=t)
axes[0, 0].legend(fontsize=7, ncol=2, loc="lower left")
plt.tight_layout()
plt.show()

# %% [markdown]
# The FP metric of each transformed model shows which transforms are free: the exact ones return the
# FP score; the clipped softmax does not, because the pretrained model never learned to live with it.

# %% tags=["nbval-check-output"]
print(pd.DataFrame(fp_transformed).round(2).to_string())

# %% [markdown]
# ## NAQ on top of W8A8
#
# NAQ is not a way of setting ranges but of *executing* a model: it computes the pre-GELU and
# pre-softmax values at 4 bits and recomputes at full precision only where the nonlinearity's gradient
# is large. It runs on the quantized model's modules, so its low-precision path starts from the
# 8-bit weights (thresholds $T_{QP} = 0$, $T_{AS} = -3$, $T_{sum} = 200$, as in the NAQ chapter).

# %%
naq = pd.DataFrame([cx.naq_on_top(setups[t], batches_for(setups[t], seed)) for t in tasks])
rec.add_rows(naq.melt(id_vars="task", var_name="metric").assign(experiment="naq_on_w8a8"))

# %% tags=["nbval-check-output"]
print(naq.round(3).to_string(index=False))

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ## What this chapter shows, and what it does not
#
# The claims ledger has no claim about combinations, so this chapter records checks of the pipeline
# (printed above) and measurements. The quick profile's table is a smoke test on a sample of one task
# with one calibration seed; its orderings are not findings. The full profile (all four tasks, the
# full dev sets, 256 calibration examples, three seeds, the complete Token-Wise Clipping grid) gives
# each recipe a mean and a spread.
#
# ## Exercises
#
# 1. Add a recipe that migrates only the FFN-LNs (`GammaMigration(embedding_ln=False, mha_ln=False)`)
#    and compare it with full Gamma Migration at W6A6. Which LayerNorms carry the benefit?
# 2. Build `Recipe(transforms=(SmoothQuant(alpha=a),))` for α ∈ {0.25, 0.5, 0.75} and plot the W6A6
#    metric against α. Where does the balance between activation and weight error lie for this model?
# 3. Why must Token-Wise Clipping leave PEG's nodes alone, rather than clip each group separately?
#
# ```{admonition} Solution 1
# :class: dropdown
# `r = cx.recipes("W6A6", width)["MinMax"].replace(transforms=(GammaMigration(embedding_ln=False, mha_ln=False),))`,
# then `s0.score(quantize(s0.model, r, batches_for(s0, 0)))`. In the embedded model γ amplifies the outlier
# dimension in the MHA-LNs but damps it in the FFN-LNs (chapter 3), so migrating only the FFN-LNs
# moves little of the outlier out of the quantized tensor; compare the two numbers to see how much.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# Loop over α, build the recipe with `cx.recipes("W6A6", width)["MinMax"].replace(transforms=(SmoothQuant(alpha=a),))`
# and score it. α = 0 leaves the activations alone and flattens the weights; α = 1 moves the
# activation's whole range into the weights, which are quantized per output channel but whose
# *input* columns then carry the outlier. The best α is where neither side dominates the error.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# Token-Wise Clipping chooses one clipping quantile for the whole network by the output error and
# sets one range per node from per-token extremes. A per-group node has K ranges; the token-wise
# extremes of a group are a different statistic, and clipping a group that holds only the outlier
# dimensions is exactly what PEG avoids by giving them their own range. Composing them means
# assigning each node to one method, which the recipe's validation enforces.
# ```
