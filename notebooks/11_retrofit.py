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
# # Retrofitting the fix where the outliers are real
#
# Chapter 6 tested clipped softmax and gated attention {cite:p}`bondarenko2023quantizable` the way the
# paper does: by pre-training from scratch. On this CPU its vanilla models stayed small and short-trained,
# and their outliers never formed, so the claims about removing them were "not testable here" (the
# ledger's *outliers present* precondition). The embedded all-MiniLM-L6-v2 is different: it was
# pretrained at scale and has the outliers the paper is about (chapter 3; its 2023 statistics are
# printed below). The paper's authors released no checkpoints, and every pre-training script they
# published needs an A100. So this chapter asks the question users of the paper keep asking, on a model
# that has the problem:
#
# > **Can the fix be retrofitted onto a model that is already pretrained?**
#
# We install each attention variant on the pretrained encoder and **continue training**. The vanilla
# model is trained the same way, as the control:
#
# | variant | attention | at step 0 |
# |---|---|---|
# | vanilla | softmax | the pretrained model |
# | clipped softmax | $\mathrm{clip}((\zeta-\gamma)\,\mathrm{softmax}(z)+\gamma, 0, 1)$, $\gamma=-\alpha/T$, the paper's BERT α | the pretrained model ($\gamma$ ramps in from 0) |
# | gated attention | each head's context times $\pi_h=\sigma(G_h(x))/\pi_{init}$ | the pretrained model (exactly) |
# | softmax + 1 | $e^{z_i}/(1+\sum_k e^{z_k})$ | close to it (measured below) |
#
# The last variant is in none of the four papers. It was proposed elsewhere as a one-line fix for the
# same problem ("attention is off by one") and has never been measured against the paper's statistics.
#
# Two objectives: **masked-LM** training on the book's pre-training text (the paper's objective, so the
# ledger's perplexity rules apply), and **fine-tuning on SST-2**, the setting in which the paper first
# shows the outliers (fine-tuned BERT). Every `track_every` steps we log the paper's statistics and
# chapter 3's no-op statistics, so a retrofit that does not shrink the outliers can be read, not just
# reported.
#
# **What differs from the paper.** Its fixes are trained in for 1 M steps from scratch; ours get under two
# hundred steps on a model that already found its way of doing nothing. A negative result here says
# "not within this budget", and the curves show whether the statistics are moving at all. The quick
# profile runs a few steps of every variant to exercise the code; its numbers are **not comparable**.

# %% tags=["parameters"]
profile = "quick"
model = "all-MiniLM-L6-v2"
seq_len = 128  # the paper's BERT T; γ = −α/T with its α
mlm_steps = 6
mlm_batch_size = 4
freeze_encoder_steps = 2  # the new MLM head trains alone first
lr = 1e-4
warmup = 0.1
gamma_ramp = 0.2  # γ ramps in from 0 over this fraction of the steps
track_every = 6  # one tracked point per quick run: the code path, not a curve
track_quality = True  # also log FP and W8A8 perplexity (16 held-out blocks) every track_every steps
eval_blocks = 8
calib_batches = 1
eval_batch_size = 16
ptq_seeds = [0]
act_estimators = ["running_minmax", ["percentile", {"p": 99.999}]]
seeds = [0]
pi_inits = [0.25]  # QT-7: further initial gate probabilities (π_init = 0.5 is the gated run above)
pi_seeds = [0]  # the training seeds of the extra π_init runs; QT-7 reads the control at the same seeds
task = "sst2"
task_steps = 8
task_batch_size = 8
task_lr = 1e-4
task_track_every = 8
task_eval_limit = 64
tracked_examples = 16  # FP and W8A8 accuracy every task_track_every steps, on this many evaluation sentences
probe_sentences = 8
task_calib = 16
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

import textwrap
from dataclasses import replace

import matplotlib.pyplot as plt
import pandas as pd

from outlierbook import claims, compare, outlier_precondition
from outlierbook.errors import ConfigError
from outlierbook.experiments import qt_rules as rules
from outlierbook.experiments import quantizable as qx
from outlierbook.experiments import retrofit as rx
from outlierbook.headline import SMOKE_TEST, experiment_rows, run_label
from outlierbook.models.attention_variants import install, nearly_open_gate
from outlierbook.models.load import load_encoder
from outlierbook.nbsetup import progress_enabled
from outlierbook.quant.calibrate import calibration_batches
from outlierbook.results import Recorder, dumps, full_profile_verdicts, stored_full_run
from outlierbook.seeds import mean_pm_std

rec = Recorder("11_retrofit", profile, params=dict(
    model=model, seq_len=seq_len, mlm_steps=mlm_steps, mlm_batch_size=mlm_batch_size,
    freeze_encoder_steps=freeze_encoder_steps, lr=lr, warmup=warmup, gamma_ramp=gamma_ramp, eval_blocks=eval_blocks,
    calib_batches=calib_batches, ptq_seeds=ptq_seeds, act_estimators=act_estimators, seeds=seeds, pi_inits=pi_inits,
    pi_seeds=pi_seeds, track_quality=track_quality, tracked_examples=tracked_examples, task=task, task_steps=task_steps,
    task_batch_size=task_batch_size, task_lr=task_lr, task_eval_limit=task_eval_limit,
    probe_sentences=probe_sentences, task_calib=task_calib, seed=seed))
if not set(pi_seeds) <= set(seeds):
    raise ConfigError(f"pi_seeds {pi_seeds} must be among seeds {seeds}: QT-7 reads the control at the same seeds")
progress = progress_enabled()
estimators = [tuple(a) if isinstance(a, list) else a for a in act_estimators]
ev = dict(ptq_seeds=ptq_seeds, calib_batches=calib_batches, batch_size=eval_batch_size, act_estimators=estimators)
mlm = rx.configs(model, steps=mlm_steps, batch_size=mlm_batch_size, seq_len=seq_len, lr=lr, warmup=warmup,
                 freeze_encoder_steps=freeze_encoder_steps, gamma_ramp=gamma_ramp, track_every=track_every,
                 track_quality=track_quality, checkpoint_every=max(track_every, 1))
tok, train, test = rx.corpus(model, seq_len, eval_blocks=eval_blocks)


def shown(experiment: str, current: pd.DataFrame):
    """The stored full run's rows of one experiment in a quick build that has them, this run's otherwise."""
    rows = experiment_rows("11_retrofit", profile, experiment, current)
    return rows.table, textwrap.fill(rows.source, 80)


# %% tags=["nbval-check-output"]
print(run_label(profile))
print(dumps({"model": model, "train blocks": int(train.shape[0]), "tokens per block": seq_len,
             "WikiText-2 test blocks": int(test.shape[0]), "variants": list(mlm)}))

# %% [markdown]
# ## Two variants that start where the model is
#
# A retrofit should not destroy what pretraining built, so a variant should start at (or very near)
# the pretrained function and let training move it.
#
# **The nearly open gate.** The authors' fine-tuning set-up gives the gate $G_h(x) = w_h^\top x + b_h$
# zero weights and the bias $b_h = \mathrm{logit}(\pi_{init})$, and scales its output by $1/\pi_{init}$:
#
# $$\pi_h = \frac{\sigma(w_h^\top x + b_h)}{\pi_{init}} = \frac{\sigma(\mathrm{logit}\,\pi_{init})}{\pi_{init}} = 1
#   \quad\text{at step 0.}$$
#
# With $\pi_{init} = 1/2$ the sigmoid sits where its slope is largest (1/4), so a head can learn to close
# (towards 0) or to open further (up to 2). The paper's own gate for training from scratch has
# $\pi_{init}$ as its *initial openness*, with no rescaling; on a pretrained model that would halve
# every head's output at step 0.
#
# **Softmax + 1.** Add one to the softmax's denominator:
#
# $$\mathrm{softmax}_1(z)_i = \frac{e^{z_i}}{1 + \sum_k e^{z_k}}
#   = \mathrm{softmax}(z_1, \dots, z_T, 0)_i ,\qquad \sum_i \mathrm{softmax}_1(z)_i < 1 .$$
#
# It is the softmax over the keys plus one extra key whose logit is 0 and whose value is the zero vector.
# A head that wants to do nothing can put its mass on that key with *finite* scores: making every $z_i$
# very negative gives $\sum_i p_i \to 0$, so the head outputs zero without a delimiter. It does not
# start at the pretrained function: the extra key takes mass $1/(1+\sum_k e^{z_k})$ from every row. The
# clipped softmax starts at γ = 0, which is the softmax. `outlierbook.models.attention_variants` holds
# all four, and the unit tests check the identities above.
#
# How far each variant moves the pretrained encoder when installed, as the largest absolute difference
# of the last hidden states on a few SST-2 sentences:

# %% tags=["nbval-check-output"]
setup = rx.task_data(task, model, eval_limit=task_eval_limit, seed=seed)
probe = rx.sentence_probe(setup, n=probe_sentences, seed=seed)
deviation = rx.start_deviation(model, rx.variants(seq_len), probe[0])
rec.update({f"start_deviation/{k}": v for k, v in deviation.items()})
print(dumps({k: f"{v:.0e}" if v < 1e-3 else round(v, 3) for k, v in deviation.items()}))

# %% [markdown]
# ## Masked-LM retrofitting
#
# The pretrained sentence encoder has no MLM head (sentence-transformers dropped it), so a new one is
# built as BERT initialises it, with its decoder tied to the pretrained word embeddings. It first trains
# **alone** for `freeze_encoder_steps` steps, with the encoder frozen, so the encoder's first gradient
# comes from a head that already predicts words, not from random noise. That head-only model is the
# **start** of every variant, measured the same way as the end: perplexity on WikiText-2 test blocks,
# the paper's statistics (the max infinity norm and the average kurtosis of the attention, FFN and layer
# outputs), and W8A8 perplexity with the better of two activation range estimators. Then each variant
# continues for `mlm_steps` steps at learning rate `lr`. γ ramps in over the first `gamma_ramp` of them.

# %%
start_rows, start_hist = rx.run_all({"start": rx.start_config(mlm["vanilla"])}, seeds, tok, train, test,
                                    progress=progress, stage="start", **ev)
end_rows, histories = rx.run_all(mlm, seeds, tok, train, test, progress=progress, **ev)
mlm_rows = pd.DataFrame(start_rows + end_rows)
rec.add_rows(mlm_rows.assign(experiment="mlm"))
curves = pd.concat([pd.DataFrame(h["track"]).assign(variant=label, seed=s) for (label, s), h in histories.items()])
rec.add_rows(curves.assign(experiment="mlm_curves"))

# %% [markdown]
# The statistics during training, averaged over training seeds. If a fix works, its curves fall below
# vanilla's. Chapter 3's no-op statistics are in the fourth and fifth panels. One is the attention mass that
# real queries put on delimiters (the separator, "." and ","). The other is the value norm of delimiter
# keys over that of the other keys: a no-op head puts its mass on small values. With `track_quality` the
# last two panels follow the quality during training: FP and W8A8 perplexity on 16 held-out blocks, with
# one calibration subset and the better of the two range estimators (the outcome table below uses more
# blocks and calibration batches, so the end points differ a little). A run stored before quality was
# tracked shows the first five panels only.

# %%
TRACKED = ["max_inf_norm", "avg_kurtosis", "live_rows", "delimiter_mass", "delimiter_value_norm_ratio"]
QUALITY = ["ppl_fp", "ppl_w8a8", "fp", "w8a8"]  # masked LM: perplexity (log scale); task: accuracy in %
LOG_SCALE = {"max_inf_norm", "avg_kurtosis", "ppl_fp", "ppl_w8a8"}


def plot_curves(frame, title):
    shown_cols = TRACKED + [c for c in QUALITY if c in frame and frame[c].notna().any()]  # a run may not track quality
    fig, axes = plt.subplots(len(shown_cols), 1, figsize=(6.4, 2.2 * len(shown_cols)), sharex=True)
    fig.suptitle(title, fontsize=9)
    mean = frame.groupby(["variant", "step"], sort=False)[shown_cols].mean().reset_index()
    for label, g in mean.groupby("variant", sort=False):
        for ax, col in zip(axes, shown_cols):
            ok = g[col].notna()
            ax.plot(g["step"][ok], g[col][ok], marker="o", ms=3, label=label)
            ax.set(ylabel=col.replace("_", " "), yscale="log" if col in LOG_SCALE else "linear")
    axes[-1].set(xlabel="training step")
    axes[0].legend(fontsize=8)
    plt.tight_layout()
    plt.show()


mlm_curves_shown, mlm_curves_source = shown("mlm_curves", curves)
plot_curves(mlm_curves_shown, "masked-LM retrofit — " + mlm_curves_source)

# %% [markdown]
# ## The outcome, beside the paper's Table 2
#
# Start and end of retrofitting, mean ± std over training seeds. The paper's rows are BERT-base
# pre-trained *from scratch* with each variant (its Table 2), so compare effects, not values: how
# far each fix moves our model relative to the vanilla control, against how far the paper's moved
# BERT relative to vanilla BERT.

# %%
mlm_table = rx.outcome(mlm_rows.to_dict("records"))
rec.update({f"mlm/{r.label}/{r.stage}/{m}": float(getattr(r, m)) for r in mlm_table.itertuples()
            for m in rx.OUTCOME})
mlm_shown, mlm_source = shown("mlm", mlm_rows)
shown_table = rx.outcome(mlm_shown.to_dict("records"))
ends = shown_table[shown_table["stage"] == "end"].set_index("label")
paper2 = compare.load_paper("quantizable", "Table 2")
side = qx.beside_paper(ends, paper2, lambda label: f"BERT {label}")
starts = shown_table[shown_table["stage"] == "start"].set_index("label")
side_start = qx.beside_paper(starts, paper2, lambda label: "BERT vanilla")
both = pd.concat([side_start.rename(index=lambda i: "start (head only)"), side])
both.style.set_uuid("ch11_mlm").format({c: "{:.2f}" for c in both.columns if c[1] == "paper"}, na_rep="—").set_caption(
    f"Masked-LM retrofit. Ours: {mlm_source}")

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(dumps({f"{r.label} ({r.stage})": {m: round(float(getattr(r, m)), 2) for m in rx.OUTCOME}
             for r in mlm_table.itertuples()}))

# %% [markdown]
# ### Which differences are findings
#
# Each variant against the vanilla control at the end of retrofitting: $\Delta$ of the seed means, and the
# larger of the two seed standard deviations. A difference is a finding only when $|\Delta|$ exceeds that
# spread (`retrofit.effects`). The W8A8 gap is $\mathrm{ppl}_{W8A8} - \mathrm{ppl}_{FP}$; the last two rows
# of each variant are chapter 3's no-op statistics at the last tracked step.

# %% tags=["nbval-check-output"]
NOOP = ["delimiter_mass", "delimiter_value_norm_ratio"]
last = (mlm_curves_shown.sort_values("step").groupby(["variant", "seed"]).tail(1)
        .drop(columns=["label"], errors="ignore").rename(columns={"variant": "label"})[["label", "seed", *NOOP]])
end_rows = mlm_shown[mlm_shown["stage"] == "end"].drop(columns=NOOP, errors="ignore").merge(last, on=["label", "seed"])
end_rows["w8a8_gap"] = end_rows["ppl_w8a8"] - end_rows["ppl_fp"]
mlm_effects = rx.effects(end_rows.to_dict("records"), metrics=[*rx.OUTCOME, "w8a8_gap", *NOOP])
print(mlm_source)
print(mlm_effects.round(3).to_string())

# %% [markdown]
# ## QT-7: the initial gate probability
#
# The paper's Figure 7 trains gated BERT from scratch at several $\pi_{init}$ and finds a wide range
# that works. For a retrofit the nearly open gate rescales by $1/\pi_{init}$, so every $\pi_{init}$ starts
# at the pretrained function. What changes is where on the sigmoid a head starts: how easily it can close
# ($\pi_{init}$ small: the slope $\pi_{init}(1-\pi_{init})$ is small, and closing is already most of the way
# done) and how far it can open (to $1/\pi_{init}$). The extra $\pi_{init}$ values train at the seeds
# `pi_seeds`; the $\pi_{init} = 1/2$ row is the gated run above. **Every row, and the vanilla control it is
# compared with, is a mean over those same seeds** (`retrofit.pi_init_table`). The book's first full run
# compared seed-0 runs with a control averaged over two seeds. Seed 0 had the higher perplexity for every
# variant, so the seed, not $\pi_{init}$, decided the 5 % FP clause. The section on the full run
# shows that verdict beside the same rows read at matching seeds.

# %%
gate_configs = {f"π_init {p}": replace(mlm["vanilla"], variant=nearly_open_gate(p)) for p in pi_inits}
gate_rows, _ = rx.run_all(gate_configs, pi_seeds, tok, train, test, progress=progress, **ev)
gate_rows = pd.DataFrame(gate_rows).assign(pi_init=[float(p) for p in pi_inits for _ in pi_seeds])
rec.add_rows(gate_rows.assign(experiment="pi_init"))
pi_table, pi_control = rx.pi_init_table(gate_rows.to_dict("records"), end_rows)  # this run's: the claim check
gate_shown, gate_source = shown("pi_init", gate_rows)
ends_shown = mlm_shown[mlm_shown["stage"] == "end"]
pi_shown, control_shown = rx.pi_init_table(gate_shown.to_dict("records"), ends_shown.to_dict("records"))
pi_view = pd.DataFrame({m: [mean_pm_std(r[m], r[f"{m}_std"], 1) for _, r in pi_shown.iterrows()] for m in rx.OUTCOME},
                       index=pi_shown.index).assign(seeds=pi_shown["n_seeds"].astype(int))
pi_view.loc["vanilla control"] = [f"{control_shown[m]:.1f}" for m in rx.OUTCOME] + [int(pi_shown["n_seeds"].max())]
print(gate_source)
print(pi_view.rename_axis("π_init").to_string())
print("\nFP perplexity at the end, per training seed:")
print(ends_shown.pivot_table(index="label", columns="seed", values="ppl_fp").round(1).to_string())

# %% [markdown]
# ## Retrofitting by fine-tuning on SST-2
#
# The paper's first sight of the outliers is fine-tuned BERT, and fine-tuning is how most users would
# meet a retrofit. Here each variant is installed on the pretrained encoder with a fresh classification
# head and fine-tuned on SST-2 for `task_steps` steps. The clipped softmax's γ ramps in as above. The
# statistics are tracked on single sentences without padding, because padding would enter the kurtosis.
# W8A8 uses the placement of the LM experiment (the 2021/2023 papers') with the better of the two range
# estimators. The start is the pretrained encoder (no head can be scored there). Its statistics are the
# same for every variant up to the small deviations measured above.

# %%
task_cfgs = rx.task_configs(model, task, seq_len, steps=task_steps, batch_size=task_batch_size, lr=task_lr,
                            gamma_ramp=gamma_ramp, track_every=task_track_every, track_quality=track_quality)
calibration = calibration_batches(setup.calibration, setup.tokenizer, n=task_calib, batch_size=min(task_calib, 32),
                                  seed=seed)
task_rows, task_hist = rx.task_run_all(task_cfgs, seeds, setup, probe, calibration, estimators, progress=progress,
                                       tracked_examples=tracked_examples)
start_stats = rx.task_tracker(probe, setup.tokenizer)(install(load_encoder(model).eval(), rx.variants(seq_len)["vanilla"]))
task_rows = pd.DataFrame([{"label": "pretrained encoder", "stage": "start", **start_stats}] + task_rows)
rec.add_rows(task_rows.drop(columns=["live_rows", "delimiter_mass", "delimiter_value_norm_ratio"], errors="ignore")
             .assign(experiment="task"))
task_curves = pd.concat([pd.DataFrame([{"step": 0, **start_stats}] + h).assign(variant=label, seed=s)
                         for (label, s), h in task_hist.items()])
rec.add_rows(task_curves.assign(experiment="task_curves"))
task_curves_shown, task_curves_source = shown("task_curves", task_curves)
plot_curves(task_curves_shown, f"{task.upper()} retrofit — " + task_curves_source)

# %% tags=["nbval-check-output"]
TASK_OUTCOME = ["fp", "max_inf_norm", "avg_kurtosis", "w8a8"]
task_shown, task_source = shown("task", task_rows)
task_table = task_shown.groupby(["label", "stage"], sort=False)[TASK_OUTCOME].agg(["mean", "std"])
rec.update({f"task/{label}/{m}": float(v) for (label, stage), row in
            task_rows.groupby(["label", "stage"], sort=False)[TASK_OUTCOME].mean().iterrows()
            for m, v in row.items() if pd.notna(v)})
print(task_source)
print(task_table.round(2).to_string())

# %% [markdown]
# The same reading for the SST-2 runs (accuracy in %; higher is better):

# %% tags=["nbval-check-output"]
task_effects = rx.effects(task_shown[task_shown["stage"] == "end"].to_dict("records"), metrics=TASK_OUTCOME)
print(task_source)
print(task_effects.round(3).to_string())

# %% [markdown]
# ## Claim checks
#
# The rules are the {doc}`claims ledger's </book/claims>`: QT-3 and QT-5 ask that the fix lowers the max
# infinity norm and the average kurtosis below the vanilla control's, keeps FP perplexity within 5 % of
# it, and narrows the W8A8 gap; QT-7 asks for at least two $\pi_{init}$ values with a lower max infinity
# norm and FP perplexity within 5 %. They are decided on the masked-LM runs, the objective the rules are
# written for, against the vanilla control at the end of the same training (seed means).
#
# The ledger's *outliers present* precondition is read on that control:
#
# $$\text{present} \iff \max_s \lVert x_s \rVert_\infty \ge 20 \ \wedge\ \overline{\operatorname{kurt}}(x) \ge 20 .$$
#
# This is the chapter's reason to exist. Each check also records the verdict without the precondition
# (*old rule*), as the ledger asks for its dated changes. The SST-2 runs are reported beside the
# checks as evidence, not as a test: the ledger's rules are written in perplexity.

# %%
end = mlm_table[mlm_table["stage"] == "end"].set_index("label")  # this run's, in a quick build too
vanilla = end.loc["vanilla"]
outliers = rules.statistics(vanilla)
print(outlier_precondition.describe(outliers, "vanilla control (end of retrofit)"))
task_end = task_rows[task_rows.stage == "end"].groupby("label", sort=False)[TASK_OUTCOME].mean()
for claim_id, label, paper in (("QT-3", "clipped softmax", "BERT-base from scratch: inf-norm 735 → 21.5, kurtosis "
                                "3076 → 80, W8A8 ppl 1294 → 4.52 (Table 2)"),
                               ("QT-5", "gated attention", "BERT-base from scratch: inf-norm 735 → 39.2, W8A8 ppl "
                                "1294 → 4.65 (Table 2)")):
    verdict = rules.fixes(end.loc[label], vanilla)
    claims.check(rec, claim_id, ours={"vanilla control": rules.summary(vanilla), label: rules.summary(end.loc[label]),
                                      f"{task} (beside)": task_end.loc[["vanilla", label]].round(3).to_dict("index")},
                 paper=paper, holds=outlier_precondition.gated(verdict, {"vanilla control": outliers}),
                 old_rule=verdict,
                 note=f"retrofit of pretrained {model} by {mlm_steps} masked-LM steps, {len(seeds)} seed(s); "
                      + outlier_precondition.describe(outliers, "vanilla control"))
good = rules.robust_pi_inits(pi_table.reset_index().to_dict("records"), pi_control)
_ = claims.check(rec, "QT-7", ours={"π_init with lower inf-norm and FP ppl within 5 %": good,
                                    "π_init tried": pi_table.index.tolist(), "training seeds": pi_seeds},
                 paper="π_init ∈ [0.25, 0.9] works for BERT-6L from scratch (Figure 7)",
                 holds=outlier_precondition.gated(len(good) >= 2, {"vanilla control": outliers}),
                 old_rule=len(good) >= 2,
                 note="nearly open linear gates (output scaled by 1/π_init), every π_init and the control "
                      f"averaged over the same seeds {pi_seeds}; "
                      + outlier_precondition.describe(outliers, "vanilla control"))

# %% tags=["nbval-check-output"]
print(dumps({c["id"]: c["holds"] for c in rec.claims}))

# %% [markdown]
# A difference in the table smaller than its seed std is not a finding; with one seed (quick profile) no
# std exists, and the verdicts test the code path only.

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ## What the pre-training experiment can and cannot say
#
# Chapter 6's verdicts and this chapter's answer different questions. Chapter 6 asks whether the fixes
# *prevent* outliers while a model learns; its vanilla models never grew them, so the answer there is
# "not testable". This chapter asks whether the fixes *remove* outliers a model already has. The
# precondition side by side: chapter 6's vanilla models from its stored full run, and this chapter's
# starting model and vanilla control.

# %% tags=["nbval-check-output"]
where = {}
ch06 = stored_full_run("06_quantizable")
if ch06 is not None:
    t2 = qx.stored_tables(ch06["table"]).get("table2")
    for m in ("encoder", "decoder"):
        if t2 is not None and f"{m} vanilla" in t2.index:
            where[f"chapter 6, {m} vanilla (full run)"] = outlier_precondition.describe(
                rules.statistics(t2.loc[f"{m} vanilla"]), "")
where["this chapter, start (head only)"] = outlier_precondition.describe(
    rules.statistics(mlm_table[mlm_table.stage == "start"].iloc[0]), "")
where["this chapter, vanilla control"] = outlier_precondition.describe(outliers, "")
print(run_label(profile))
print(dumps({k: v.lstrip(": ") for k, v in where.items()}))

# %% [markdown]
# ## The full profile
#
# The full profile continues each variant for a few hundred masked-LM steps (the first ones train the head
# alone) at two training seeds, runs the extra $\pi_{init}$ values, and fine-tunes each variant on SST-2 for
# a few hundred steps at two seeds, sized to fit about two hours on 2 cores (`registry.py` holds the
# settings; the stored run's own are printed below, from its `run.json`). It is a small budget next to the
# paper's million steps, and the curves show whether the statistics are still moving when it ends. Every
# run writes its checkpoints as one atomic set and resumes from the last one; a finished run and its
# evaluation are loaded, not recomputed. Its results go to `results/11_retrofit/full/`:
#
# ```bash
# .venv/bin/python -m outlierbook run 11_retrofit --profile full
# ```

# %% tags=["nbval-check-output"]
stored11 = stored_full_run("11_retrofit")
BUDGET = ["mlm_steps", "freeze_encoder_steps", "mlm_batch_size", "seeds", "pi_inits", "pi_seeds", "track_quality",
          "task_steps", "task_batch_size", "eval_blocks", "calib_batches", "ptq_seeds"]
if stored11 is None:
    print("the full profile has not been run yet")
else:
    params = stored11["run"]["params"]
    print(f"the stored full run's settings (its run.json, commit {stored11['run']['git_sha'][:10]}):")
    print(dumps({k: params.get(k, "not recorded (run before the setting existed)") for k in BUDGET}))

# %% [markdown]
# ### The full profile's verdicts

# %% tags=["nbval-check-output"]
print(full_profile_verdicts("11_retrofit", profile))

# %% [markdown]
# QT-7's stored verdict was decided by the comparison its run used. The same stored rows, read with every
# $\pi_{init}$ and the control at the extra runs' seeds (`retrofit.pi_init_table`, the comparison the chapter
# uses from now on), beside it:

# %% tags=["nbval-check-output"]
if stored11 is None:
    print("the full profile has not been run yet")
else:
    print(dumps(rx.stored_qt7_readings(stored11["table"], stored11["claims"], stored11["run"]["params"]["seeds"])))

# %% [markdown]
# ### What the full run says
#
# We wrote this section after reading the full run's tables and verdicts; the numbers are in the cells
# above. In short: **within this budget, retrofitting did not remove the outliers. The clipped softmax
# changed how attention does nothing; the other variants stayed within the seed spread of the control.**
#
# - **The precondition is met.** The vanilla control keeps outliers far above the ledger's thresholds
#   (the side-by-side cell above), unlike chapter 6's models, so QT-3, QT-5 and QT-7 are tested here.
#   Continued training alone moves the statistics a little (start against vanilla control), which is
#   why every variant is read against the control trained the same way, not against the start.
# - **In the masked-LM runs, clipped softmax is the only variant with effects beyond the seed spread.**
#   Its average kurtosis fell below the control's, and its attention mass on delimiters fell to about a third. That fits the
#   paper's mechanism: heads that can output exact zeros no longer need to park probability on
#   delimiters. The max infinity norm did not move beyond the spread, FP perplexity rose by more than the
#   ledger's 5 %, and the W8A8 gap widened, so **QT-3 does not hold**. The largest values live in the FFN
#   and LayerNorm weights (chapter 3); a short retrofit does not undo them even where attention no
#   longer needs them (exercise 3).
# - **Gated attention sits on the control.** Every masked-LM difference from the control is inside the
#   seed spread, and the three $\pi_{init}$ runs are nearly identical to each other: the gates start with zero
#   weights at the identity and barely moved in this budget at this learning rate. So
#   **QT-5's "holds"** is the ledger's rule applied to means that differ by less than the seed spread:
#   it records that installing the gate did no harm, not that gating removed outliers.
# - **QT-7 was decided by the training seed, not by $\pi_{init}$.** The first full run trained the extra
#   $\pi_{init}$ values at seed 0 only and compared them with the control averaged over both seeds. Seed 0
#   has the higher perplexity for every variant (the per-seed table), so the 5 % FP clause decided the stored
#   verdict. The same rows read at matching seeds (the cell after the verdicts) give the other verdict, by
#   max inf-norm differences far inside the seed spread, as for QT-5. Neither reading says anything about
#   $\pi_{init}$. The chapter now trains the extra values at the seeds `pi_seeds` (both, in the full
#   profile) and compares like with like; the stored verdict changes only with the next full run.
# - **Softmax + 1 changed nothing measurable**, not even the delimiter mass: within the budget the
#   heads did not move their mass to the implicit zero key.
# - **W8A8 costs every variant a fraction of its FP perplexity, not the paper's collapse**, so the rules'
#   W8A8 clause carries little signal. The MLM head is new and had only the run's steps to learn; its
#   perplexity, not the encoder's outliers, dominates the FP and W8A8 numbers alike.
# - **SST-2: no variant moved the outlier statistics beyond the seed spread.** FP accuracy stayed
#   within it too. W8A8 accuracy differs from the control's by more than the spread for all three
#   variants, lower for clipped softmax and softmax + 1 and higher for gated attention, by less than two
#   points and with two seeds, and with no change in the outlier statistics beside them.
#
# What would change the picture is a longer retrofit. The paper's fixes are present for a million steps
# of pre-training; ours get 150 encoder steps on a model whose outliers formed over its whole
# pretraining. The curves show whether the statistics were still moving at the last step. The same code
# runs longer retrofits (`mlm_steps`, `task_steps`, `lr`) on a GPU through Accelerate.

# %% [markdown]
# ## Exercises
#
# 1. Show that $\mathrm{softmax}_1$ of a row equals the softmax of that row with one extra logit 0,
#    restricted to the original keys. Then show that a head using it outputs the zero vector in the limit
#    $z_i \to -\infty$ for every $i$, while a softmax head cannot.
# 2. The nearly open gate starts at exactly the pretrained function. Why would drawing its weights from
#    $\mathcal N(0, 0.01^2)$, as the authors' code does, break this only slightly, and by how much would it
#    change a head's output at step 0 for an input of norm $\lVert x\rVert$?
# 3. In the curves, suppose a variant lowers the delimiter attention mass but leaves the max infinity norm
#    where it was. What does that say about where the outliers live, given chapter 3's anatomy (FFN output
#    dimensions, LayerNorm γ)?
#
# ```{admonition} Solution 1
# :class: dropdown
# $\mathrm{softmax}(z_1,\dots,z_T,0)_i = e^{z_i}/(e^0 + \sum_k e^{z_k}) = \mathrm{softmax}_1(z)_i$ for
# $i \le T$, and the extra key's value is zero, so it adds nothing to $\sum_i p_i v_i$. If every
# $z_i \to -\infty$, each $p_i \to 0$ and the output $\sum_i p_i v_i \to 0$. A softmax row always sums to one,
# so its output is a convex combination of the values and is zero only if the values it attends to are
# zero. That is the no-op head of chapter 3, which needs a delimiter with a small value and extreme scores.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# With weights $w$ the gate's logit is $w^\top x + \mathrm{logit}\,\pi_{init}$ instead of
# $\mathrm{logit}\,\pi_{init}$. To first order the gate changes by
# $\sigma'(\mathrm{logit}\,\pi_{init})\, w^\top x / \pi_{init} = (1-\pi_{init})\, w^\top x$. With
# $w \sim \mathcal N(0, 0.01^2 I)$, $w^\top x$ has std $0.01\lVert x\rVert$. For a LayerNorm output of
# MiniLM's width, $\lVert x\rVert \approx \sqrt{384} \approx 20$, so each head is scaled by $1 \pm$ about 0.1:
# a visible change at step 0, which the zero initialisation avoids.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# The outliers are produced by the FFN and LayerNorm (chapter 3: a few hidden dimensions, large γ). The
# paper's argument is that attention's need to do nothing drives them; once they exist, they are in the
# weights. A variant can give attention another way to do nothing, and the heads can use it, which lowers
# the delimiter mass, while the FFN keeps producing the large dimensions until training pushes them back.
# Nothing in a short retrofit's loss asks it to do that. Look at whether the max infinity norm is still
# falling at the last step: then the budget, not the mechanism, is the limit.
# ```
