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
# # Quantizable Transformers: clipped softmax and gated attention
#
# Chapters 4 and 5 accepted the outliers of a trained model and worked around them. Bondarenko et
# al. {cite:p}`bondarenko2023quantizable` ask where they come from. Their answer: attention heads
# that want to **do nothing** for a token. A head that has nothing to add must make its update of the
# residual stream (nearly) zero. With softmax attention the cheapest way is to put almost all
# probability on a token with small values — a delimiter, as chapter 3 saw — and to drive the
# probability of everything else towards zero. Softmax never outputs an exact zero, so training keeps
# pushing the scores apart, and the LayerNorm and FFN that produce those scores grow a few huge
# values: the outliers.
#
# The fix is to give attention a way to output exact zeros, or to switch itself off, with finite
# weights:
#
# - **clipped softmax** $\mathrm{clip}\big((\zeta-\gamma)\,\mathrm{softmax}(x) + \gamma,\ 0,\ 1\big)$ with
#   $\gamma < 0$ (and optionally $\zeta > 1$);
# - **gated attention**: each head's output multiplied by a gate $\pi = \sigma(G(x)) \in (0, 1)$
#   computed from the layer input.
#
# No pretrained model helps here — the fix changes pre-training — so this chapter **trains its own
# small models from scratch on this CPU**: a BERT-style masked-LM encoder (post-LayerNorm, GELU) and an
# OPT-style causal decoder (pre-LayerNorm, ReLU), on real English that ships offline (BBC News and the
# King James Bible), with perplexity measured on WikiText-2 test articles the models never see.
#
# **What differs from the paper, and why.** The paper pre-trains BERT-base for 1 M steps and OPT-125m
# for 125 k steps on BookCorpus + Wikipedia on A100s; we train models of about 1.3 M parameters (full
# profile: 128 wide, 4 layers, 2000 steps of 16 × 128 tokens — about 8 minutes each) or smaller ones for
# 150 steps (quick profile) on a 2-core CPU. Our perplexities are therefore much higher, and whether
# outliers emerge at all at this scale is the first question, answered by the pilot below. Its answer
# shaped the rest: only the decoder, at a larger learning rate than the encoder tolerates, grew
# outliers within our budget, so Table 1 and Figures 6–7 — BERT experiments in the paper — run on the
# decoder here. Our sequence lengths are shorter, and γ is scaled with them through the
# authors' own parameterisation $\gamma = -\alpha/T$. One remedy is ours, not the paper's: at small
# width the clipped softmax switches attention off at initialisation (measured below), so we ramp γ
# linearly from 0 to its target during warm-up. The quick profile's numbers exercise every code path
# and are **not comparable** with the paper; the full profile's are stored under
# `results/06_quantizable/full/`, and the end of the chapter shows them and says what they mean.

# %% tags=["parameters"]
profile = "quick"
hidden = 64
layers = 2
heads = 4
ffn = 256
seq_len = 64
vocab_size = 4096
batch_size = 16
steps = 150
lr = 1e-3  # the encoder's; at 3e-3 our post-LN encoder stalls at the unigram loss (pilot)
decoder_lr = 3e-3  # at 1e-3 the decoder's outliers stay flat (pilot)
warmup = 0.1
gamma_ramp = 0.1
track_every = 25
eval_blocks = 48
seeds = [0]
table1_seeds = [0]  # Table 1's ζ rows: one training seed (Table 2 has its vanilla and γ < 0 rows at every seed)
ptq_seeds = [0]
calib_batches = 4
act_estimators = ["running_minmax", ["percentile", {"p": 99.999}]]
table1_settings = [[0.0, 1.0], [0.0, 1.03], [-0.03, 1.0], [-0.03, 1.03]]  # (γ, ζ) at the paper's T = 128
encoder_gate = "mlp"  # the paper's BERT row of Table 2: MLP gates
decoder_alpha = 3.84  # Table 1's γ = −0.03 at T = 128 (the authors' OPT script: α = 12 at T = 512)
decoder_pi_init = 0.25
decoder_wd_ln_gamma = False  # OPT's default; the paper's Table 5 has both (× gave the larger outliers)
alphas = [1.0, 3.84]
alpha_seq_lens = [32, 64]
pi_inits = [0.1, 0.25, 0.5, 0.9]
sweep_model = "decoder"  # Table 1, Figures 6 and 7 (the paper: BERT); the model whose outliers grow at our scale
live_alphas = [0.5, 1.0, 2.0, 3.2, 4.0]
pilot_attempts = {"encoder, lr 3e-3": ["encoder", {"lr": 3e-3}]}  # label: [base model, changed settings]
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

import textwrap
from dataclasses import replace

import matplotlib.pyplot as plt
import pandas as pd

from outlierbook import claims, compare, outlier_precondition
from outlierbook.experiments import qt_rules as rules
from outlierbook.experiments import quantizable as qx
from outlierbook.models.attention_variants import AttentionVariant
from outlierbook.models.pretrain import PretrainConfig
from outlierbook.nbsetup import progress_enabled
from outlierbook.headline import SMOKE_TEST, experiment_rows, run_label
from outlierbook.results import Recorder, dumps, full_profile_verdicts, provenance, stored_full_run

rec = Recorder("06_quantizable", profile, params=dict(
    hidden=hidden, layers=layers, heads=heads, ffn=ffn, seq_len=seq_len, vocab_size=vocab_size,
    batch_size=batch_size, steps=steps, lr=lr, decoder_lr=decoder_lr, warmup=warmup, gamma_ramp=gamma_ramp, seeds=seeds,
    table1_seeds=table1_seeds, ptq_seeds=ptq_seeds, calib_batches=calib_batches, eval_blocks=eval_blocks, alphas=alphas,
    alpha_seq_lens=alpha_seq_lens, pi_inits=pi_inits, table1_settings=table1_settings, pilot_attempts=pilot_attempts,
    decoder_wd_ln_gamma=decoder_wd_ln_gamma, decoder_alpha=decoder_alpha, sweep_model=sweep_model))
encoder = PretrainConfig(kind="mlm", hidden=hidden, layers=layers, heads=heads, ffn=ffn, seq_len=seq_len,
                         vocab_size=vocab_size, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                         gamma_ramp=gamma_ramp, track_every=track_every, checkpoint_every=max(steps // 4, 1))
decoder = replace(encoder, kind="clm", lr=decoder_lr, wd_ln_gamma=decoder_wd_ln_gamma)
sweep = {"encoder": encoder, "decoder": decoder}[sweep_model]
data = {T: qx.corpus(replace(encoder, seq_len=T), eval_blocks=eval_blocks)
        for T in sorted({seq_len, *alpha_seq_lens})}
tok, train, test = data[seq_len]
ev = dict(ptq_seeds=ptq_seeds, calib_batches=calib_batches, batch_size=batch_size,
          act_estimators=[tuple(a) if isinstance(a, list) else a for a in act_estimators])
progress = progress_enabled()


def clipped(alpha, zeta=1.0, T=seq_len):
    """The clipped softmax with γ = −α/T (the authors' parameterisation)."""
    return AttentionVariant(softmax="clipped", alpha=alpha, seq_len=T, zeta=zeta)


stored_full = None if profile == "full" else stored_full_run("06_quantizable")
stored_tables = qx.stored_tables(stored_full["table"]) if stored_full else {}


def shown_table(key: str, current: pd.DataFrame):
    """The stored full run's table in a quick build, this run's otherwise, with a line saying which."""
    if key in stored_tables:
        return stored_tables[key], provenance(stored_full)
    return current, "this run" + ("" if profile == "full" else f" ({SMOKE_TEST})")


def shown_rows(experiment: str, current: pd.DataFrame):
    """The stored full run's rows of one experiment (for a figure) in a quick build, this run's otherwise."""
    shown = experiment_rows("06_quantizable", profile, experiment, current)
    return shown.table, textwrap.fill(shown.source, 80)  # wrapped: it titles a figure


# %% tags=["nbval-check-output"]
n_params = sum(p.numel() for p in qx.build_model(encoder, len(tok), tok.pad_token_id).parameters())
print(dumps({"vocabulary": len(tok), "train blocks": int(train.shape[0]), "tokens per block": seq_len,
             "WikiText-2 test blocks": int(test.shape[0]), "encoder parameters": n_params}))

# %% [markdown]
# ## Why softmax attention grows outliers
#
# Write one attention row as $p = \mathrm{softmax}(z)$, $p_i = e^{z_i}/\sum_k e^{z_k}$. Its Jacobian is
#
# $$\frac{\partial p_i}{\partial z_j} = p_i\,(\delta_{ij} - p_j),$$
#
# because $\partial e^{z_i}/\partial z_j = \delta_{ij} e^{z_i}$ and $\partial S/\partial z_j = e^{z_j}$ for
# $S = \sum_k e^{z_k}$, so $\partial p_i/\partial z_j = \delta_{ij}e^{z_i}/S - e^{z_i}e^{z_j}/S^2$. Suppose
# the head wants $p_i \to 0$ for every token but one delimiter $d$. Every $p_i$ with $i \ne d$ is
# positive for finite scores, and its gradient with respect to the gap $z_d - z_i$ is
# $-p_i(1-p_i)\cdot$(sign) — non-zero however small $p_i$ already is. So gradient descent never stops
# widening the gap: $p_i = e^{-(z_d - z_i)}/(\dots)$ reaches zero only at an infinite gap. A finite
# model gets there by growing the inputs of the score computation — the LayerNorm output in a
# post-LN encoder, the residual stream in a pre-LN decoder — in a few dimensions: the outliers of
# chapter 3. At the same time the gradient $p_i(1-p_i)$ gets tiny, so the push is slow but
# persistent: outliers grow with the length of training.
#
# **Clipped softmax.** Stretch and clip: $\hat p_i = \mathrm{clip}((\zeta-\gamma)\,p_i + \gamma, 0, 1)$.
# With $\gamma < 0$ the output is **exactly** zero wherever
#
# $$(\zeta-\gamma)\,p_i + \gamma \le 0 \iff p_i \le \frac{-\gamma}{\zeta-\gamma},$$
#
# and the clip passes **no** gradient there ($\partial\hat p_i/\partial p_i = 0$ outside $(0, 1)$). A
# token whose probability is already below the threshold is exactly ignored and stops pulling on
# the scores: a head can do nothing with finite scores. $\zeta > 1$ does the same at the top (exact
# ones); the paper finds only the bottom matters. With the authors' $\gamma = -\alpha/T$ and
# $\zeta = 1$ the threshold is $\alpha/(T+\alpha) \approx \alpha/T$: α counts "how many times the
# uniform probability $1/T$" a token needs to survive.
#
# **Gated attention.** Multiply head $h$'s context by $\pi_h = \sigma(G_h(x))$, with $G_h$ a small
# Linear (or MLP) of the layer input. $\pi_h \to 0$ needs only a moderately negative logit
# ($\sigma(-5) \approx 0.007$), so "do nothing" no longer requires extreme attention scores. The gate's
# bias sets the initial openness $\pi_{init} = \sigma(b_{init})$.
#
# Both are installed on the library's own BERT and OPT modeling code through
# `transformers.AttentionInterface` (`outlierbook.models.attention_variants`); quantization reuses
# the same attention function with fake-quantizers on scores, probabilities and context.
#
# ## First: does clipping kill attention at our width?
#
# A freshly initialised model attends almost uniformly, $p \approx 1/T$. If the clipping threshold
# $\approx\alpha/T$ is above that, every probability is clipped, the attention output is exactly zero
# and Q and K receive no gradient. The share of attention rows that keep any non-zero probability at
# initialisation:

# %% tags=["nbval-check-output"]
live = pd.DataFrame([{"alpha": a, "gamma": round(-a / seq_len, 5),
                      "live rows at init": qx.live_row_share_at_init(replace(encoder, variant=clipped(a)), tok, train)}
                     for a in live_alphas]).set_index("alpha")
rec.add_rows(live.reset_index().assign(experiment="live_rows_at_init"))
print(live.round(4).to_string())

# %% [markdown]
# Where the share is zero, training would start with attention switched off. That is why we ramp γ
# from 0 to its target over the first `gamma_ramp` of the steps (the learning-rate warm-up): attention
# first sharpens with the plain softmax, then clipping takes effect gradually. The curves below track
# the live-row share during training, so a run in which attention dies anyway shows it.
#
# ## The pilot: do outliers emerge in a vanilla model?
#
# Before any comparison, the vanilla encoder and decoder are trained with the outlier statistics of a
# fixed WikiText-2 batch logged every `track_every` steps: the largest infinity norm and the kurtosis
# (per sequence over tokens × features, averaged over sequences, as in the authors' code — plain, not
# excess kurtosis, so a Gaussian gives 3) of each layer's attention output, FFN output and layer
# output.
#
# If they stay flat, the paper and its code point to what to change: train longer (the outliers "tend
# to become stronger in magnitude, the longer the network is trained", §3), a larger learning rate,
# no weight decay on LayerNorm γ (the paper's Table 5 shows weight decay on γ *reduces* outliers in
# OPT), more depth. Each attempt we made is a row of `pilot_attempts` — a label, the base model and
# the settings it changes — and is trained and tracked here beside the two pilots, so its curves are
# in the figure whatever they say. In the full profile the record reads, in the order we tried it:
# first both models at lr 1e-3, the decoder with the OPT script's weight decay on LayerNorm γ (the
# "first pilot" rows); then lr 3e-3 for both, which became the decoder's setting, while the encoder
# kept 1e-3 (compare its "lr 3e-3" loss curve below); and last the decoder at 3e-3 *with* weight decay
# on γ, which separates the two changes we made to it.

# %%
pilot = {"encoder vanilla": encoder, "decoder vanilla": decoder}
pilot_rows, pilot_hist = qx.run_models(pilot, seeds[:1], data, progress=progress, **ev)
for label, (base, changes) in pilot_attempts.items():  # trained and tracked, not evaluated
    cfg = replace(pilot[f"{base} vanilla"], seed=seeds[0], **changes)
    pilot_hist[(label, seeds[0])] = qx.train_with_tracking(cfg, tok, train, test, progress=progress)[1]
curves = pd.concat([pd.DataFrame(h["track"]).assign(model=label) for (label, _), h in pilot_hist.items()])
rec.add_rows(curves.assign(experiment="pilot_curves"))
curves_shown, curves_source = shown_rows("pilot_curves", curves)  # a quick build plots the full run's pilots
fig, axes = plt.subplots(3, 1, figsize=(6.4, 8), sharex=True)
fig.suptitle(curves_source, fontsize=9)
for label, g in curves_shown.groupby("model", sort=False):
    for ax, col in zip(axes, ["max_inf_norm", "avg_kurtosis", "max_kurtosis"]):
        ax.plot(g["step"], g[col], marker="o", ms=3, label=label)
        ax.set(ylabel=col.replace("_", " "))
axes[-1].set(xlabel="training step")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% tags=["nbval-check-output"]
growth = {label: {k: round(float(g[k].iloc[-1] / g[k].iloc[0]), 2) for k in ("max_inf_norm", "avg_kurtosis")}
          for label, g in curves.groupby("model", sort=False)}
rec.update({f"pilot/{m}/{k}_growth": v for m, d in growth.items() for k, v in d.items()})
print(dumps({"last / first tracked value": growth}))

# %% [markdown]
# The ratio of the last to the first tracked value is what the claim check at the end uses: above one
# means the statistic grew during training. The loss curves show how far the models got:

# %%
losses = pd.concat([pd.DataFrame({"step": range(1, len(h["loss"]) + 1), "loss": h["loss"]}).assign(model=label)
                    for (label, _), h in pilot_hist.items()])
losses_shown, losses_source = shown_rows("pilot_loss", losses)
fig, ax = plt.subplots(figsize=(6, 3))
for label, g in losses_shown.groupby("model", sort=False):
    loss = g.sort_values("step")["loss"].reset_index(drop=True)
    ax.plot(loss.rolling(max(len(loss) // 30, 1)).mean(), label=label)
ax.set(xlabel="training step", ylabel="training loss (smoothed)", title=losses_source)
rec.add_rows(losses.assign(experiment="pilot_loss"))
ax.legend()
plt.show()

# %% [markdown]
# ## Table 1: which part of the clipped softmax matters?
#
# The paper varies γ and ζ on BERT-base at $T = 128$: $\gamma \in \{0, -0.03\}$, $\zeta \in \{1, 1.03\}$. We keep
# the authors' parameterisation and scale γ with our T: $\gamma = -0.03$ at $T=128$ is $\alpha = 3.84$, so our
# $\gamma = -3.84/T$. **We run this table and Figures 6 and 7 on `sweep_model`**, the decoder: in the pilot
# it is the model whose outliers grow within our budget, and a sweep that asks "which setting removes
# the outliers" needs outliers to remove (the paper runs them on BERT). Every model is evaluated the same way: FP perplexity on WikiText-2 test blocks (MLM
# perplexity with a seeded 15 % masking), the outlier statistics, and W8A8 perplexity after PTQ with the
# core quantizers (symmetric per-tensor weights, asymmetric activations, the 2021 placement, the LM
# head in FP; ranges from random training batches, the best of running min-max and a 99.999th
# percentile, mean over PTQ seeds — as the paper reports the best range estimator).

# %%
def table1_label(g, z):
    return "vanilla" if (g, z) == (0.0, 1.0) else f"γ={g:g}·128/T, ζ={z:g}"


table1_cfgs = {table1_label(g, z): replace(sweep, variant=(AttentionVariant() if (g, z) == (0.0, 1.0) else
                                                             clipped(-g * 128, zeta=z)))
               for g, z in table1_settings}
t1_rows, t1_hist = qx.run_models(table1_cfgs, table1_seeds, data, progress=progress, **ev)
rec.add_rows(pd.DataFrame(t1_rows).assign(experiment="table1"))
table1 = qx.mean_std(t1_rows).set_index("label")

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table1[["ppl_fp", "max_inf_norm", "avg_kurtosis", "ppl_w8a8", "n_seeds"]].round(2).to_string())

# %% [markdown]
# The result, the paper's Table 1 (BERT-base, 1 M steps) beside ours (our rows at our T; in a quick build
# the stored full run, whose numbers are the chapter's results):

# %%
shown1, source1 = shown_table("table1", table1)
side1 = qx.beside_paper(shown1, compare.load_paper("quantizable", "Table 1"), qx.table1_setting)
side1.style.set_uuid("ch06_table1").format({c: "{:.2f}" for c in side1.columns if c[1] == "paper"}, na_rep="—").set_caption(
    f"Table 1: the paper (BERT-base) beside ours ({sweep_model}, mean and std over training seeds). Ours: {source1}")

# %% [markdown]
# ## Table 2: vanilla, clipped softmax and gated attention, encoder and decoder
#
# The paper's main comparison. Both models use Table 1's clipped softmax, $\gamma = -0.03$ at $T = 128$
# ($\alpha = 3.84$; the authors' OPT script uses $\alpha = 12$ at $T = 512$, and Figure 6 below sweeps α on
# the decoder). Encoder: gated attention with the MLP gate (the paper's BERT row).
# Decoder (pre-LN OPT style, no weight decay on LayerNorm γ — the default, and the paper's Table 5 rows
# with the larger outliers; see the pilot): Linear gates with $\pi_{init} = 0.25$ (the OPT-125m script).

# %%
table2_cfgs = {
    "encoder vanilla": encoder,
    "encoder clipped softmax": replace(encoder, variant=clipped(3.84)),
    "encoder gated attention": replace(encoder, variant=AttentionVariant(gate=encoder_gate)),
    "decoder vanilla": decoder,
    "decoder clipped softmax": replace(decoder, variant=clipped(decoder_alpha)),
    "decoder gated attention": replace(decoder, variant=AttentionVariant(gate="linear", pi_init=decoder_pi_init)),
}
t2_rows, t2_hist = qx.run_models(table2_cfgs, seeds, data, progress=progress, **ev)
rec.add_rows(pd.DataFrame(t2_rows).assign(experiment="table2"))
table2 = qx.mean_std(t2_rows).set_index("label")
rec.update({f"table2/{label}/{m}": float(table2.loc[label, m]) for label in table2.index for m in qx.METRICS})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table2[["ppl_fp", "ppl_fp_std", "max_inf_norm", "avg_kurtosis", "ppl_w8a8", "ppl_w8a8_std"]].round(2).to_string())

# %% [markdown]
# The result, the paper's Table 2 beside ours. In a quick build "ours" is the stored full run (2000
# steps, two training seeds); the numbers above are the smoke test. Read each fix against its own
# model's vanilla row: the absolute values are not comparable with models a hundred times larger.

# %%
shown2, source2 = shown_table("table2", table2)
paper2 = compare.load_paper("quantizable", "Table 2")
side2 = qx.beside_paper(shown2, paper2, qx.table2_setting)
side2.style.set_uuid("ch06_table2").format({c: "{:.2f}" for c in side2.columns if c[1] == "paper"},
                                           na_rep="—").set_caption(
    f"Table 2: the paper (BERT-base, OPT-125m) beside ours (encoder and decoder, mean and std over training "
    f"seeds). Ours: {source2}")

# %% [markdown]
# Did clipping leave attention alive? The share of attention rows with any non-zero probability on the
# probe batch during training (vanilla softmax and the gated models are always at 1), and its value at
# the end of training:

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for (label, s), h in t2_hist.items():
    if s == seeds[0] and "clipped" in label:
        tr = pd.DataFrame(h["track"])
        ax.plot(tr["step"], tr["live_rows"], marker="o", ms=3, label=label)
ax.axvline(gamma_ramp * steps, ls=":", color="grey")
ax.set(xlabel="training step (dotted: end of the γ ramp)", ylabel="live attention rows", ylim=(-0.05, 1.05))
ax.legend()
plt.show()

# %% tags=["nbval-check-output"]
print(dumps({label: round(h["track"][-1]["live_rows"], 3) for (label, s), h in t2_hist.items() if s == seeds[0]}))

# %% [markdown]
# ## Figure 6: one α across sequence lengths
#
# If $\gamma = -\alpha/T$ is the right parameterisation, one α should work across sequence lengths. The
# paper trains a 6-layer BERT at $T \in \{32, \dots, 256\}$ with $\alpha \in \{1/4, \dots, 8\}$ and finds
# $\alpha \in [2, 4]$ good everywhere. We train our `sweep_model` (the decoder) at each T in `alpha_seq_lens` for each α in
# `alphas`, plus a vanilla reference per T, and plot (a) the relative FP log-perplexity
# $\log \mathrm{ppl}_{vanilla} / \log \mathrm{ppl}$ (above 1: better than vanilla) and (b) the max infinity norm.

# %%
fig6_cfgs = {f"T={T} vanilla": replace(sweep, seq_len=T) for T in alpha_seq_lens}
fig6_cfgs.update({f"T={T} α={a:g}": replace(sweep, seq_len=T, variant=clipped(a, T=T))
                  for T in alpha_seq_lens for a in alphas})
f6_rows, _ = qx.run_models(fig6_cfgs, seeds[:1], data, progress=progress, **ev)
f6 = pd.DataFrame(f6_rows)
f6["alpha"] = (-f6["gamma"] * f6["seq_len"]).round(4).where(f6.softmax == "clipped")
ref = f6[f6.softmax == "vanilla"].set_index("seq_len")
f6["relative log-ppl"] = [qx.relative_log_ppl(r.ppl_fp, ref.loc[r.seq_len, "ppl_fp"]) for r in f6.itertuples()]
rec.add_rows(f6.assign(experiment="figure6"))

# %%
f6_shown, source6 = shown_rows("figure6", f6)  # a quick build plots the stored full run's models
ref_shown = f6_shown[f6_shown.softmax == "vanilla"].set_index("seq_len")
fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.2))
fig.suptitle(source6, fontsize=9)
for T, g in f6_shown[f6_shown.softmax == "clipped"].groupby("seq_len"):
    axes[0].plot(g["alpha"], g["relative log-ppl"], marker="o", label=f"T = {int(T)}")
    axes[1].plot(g["alpha"], g["max_inf_norm"], marker="o", label=f"T = {int(T)}")
    axes[1].axhline(ref_shown.loc[T, "max_inf_norm"], ls=":", color=axes[1].lines[-1].get_color())
axes[0].set(xscale="log", xlabel="α", ylabel="relative FP log-ppl (↑)", title="(a)")
axes[1].set(xscale="log", yscale="log", xlabel="α", ylabel="max inf-norm", title="(b) dotted: vanilla")
axes[0].legend()
plt.tight_layout()
plt.show()

# %% tags=["nbval-check-output"]
print(f6[["seq_len", "alpha", "ppl_fp", "relative log-ppl", "max_inf_norm", "avg_kurtosis"]].round(3).to_string(index=False))

# %% [markdown]
# ## Figure 7: the initial gate probability
#
# Linear gates with bias $b_{init} = \mathrm{logit}(\pi_{init})$, so every gate starts near $\pi_{init}$. The
# paper finds $\pi_{init} \in [0.25, 0.9]$ good for BERT-6L: very open gates behave like vanilla attention,
# very closed ones hurt perplexity. Ours are on the decoder (`sweep_model`), whose Table 2 gate is the
# $\pi_{init} = 0.25$ point.

# %%
fig7_cfgs = {f"π_init={p:g}": replace(sweep, variant=AttentionVariant(gate="linear", pi_init=p)) for p in pi_inits}
f7_rows, _ = qx.run_models(fig7_cfgs, seeds[:1], data, progress=progress, **ev)
f7 = pd.DataFrame(f7_rows)
rec.add_rows(f7.assign(experiment="figure7"))
f7_shown, source7 = shown_rows("figure7", f7)  # a quick build plots the stored full run's models
vanilla_ref = shown_table("table2", table2)[0].loc[f"{sweep_model} vanilla"]
fig, axes = plt.subplots(3, 1, figsize=(6.4, 7), sharex=True)
fig.suptitle(source7, fontsize=9)
for ax, col in zip(axes, ["ppl_fp", "max_inf_norm", "ppl_w8a8"]):
    ax.plot(f7_shown["pi_init"], f7_shown[col], marker="o")
    ax.axhline(vanilla_ref[col], ls=":", color="grey")
    ax.set(ylabel=col, title=f"{col} (dotted: vanilla)")
axes[-1].set(xlabel="π_init")
plt.tight_layout()
plt.show()

# %% tags=["nbval-check-output"]
print(f7[["pi_init", "ppl_fp", "max_inf_norm", "avg_kurtosis", "ppl_w8a8"]].round(3).to_string(index=False))

# %% [markdown]
# ## W8A8: which estimator, and how much is lost
#
# Every table above reports the better of two activation range estimators. The W8A8 perplexity of each
# Table 2 model under each estimator, and its increase over FP:

# %% tags=["nbval-check-output"]
est_cols = [c for c in pd.DataFrame(t2_rows).columns if c.startswith("ppl_w8a8/")]
w8 = pd.DataFrame(t2_rows).groupby("label", sort=False)[["ppl_fp", *est_cols]].mean()
for c in est_cols:
    w8[c.replace("ppl_w8a8/", "Δ ")] = w8[c] - w8["ppl_fp"]
print(w8.round(2).to_string())

# %% [markdown]
# ## Claim checks
#
# The rules are the {doc}`claims ledger's </book/claims>` (QT-3 … QT-7); where the ledger says "close to", we read it
# as "closer to vanilla than the fix is" on the log scale, for both outlier statistics. FP perplexity
# "within 5 %" is relative to vanilla's.
#
# The ledger's *outliers present* precondition (`outlierbook.outlier_precondition`) comes first: a fix is
# tested only against a vanilla model whose max inf-norm and average kurtosis both reach 20,
#
# $$\text{present} \iff \max_s \lVert x_s \rVert_\infty \ge 20 \ \wedge\ \overline{\operatorname{kurt}}(x) \ge 20,$$
#
# so a model that never grew outliers makes a claim "not testable here", not "does not hold". QT-5 names
# both models; under the precondition it is decided on those of the two that have outliers. Each check
# also records the verdict the rule gave before the precondition (*old rule*), as the ledger asks.

# %%
vanilla = {m: table2.loc[f"{m} vanilla"] for m in ("encoder", "decoder")}
outliers = {m: rules.statistics(r) for m, r in vanilla.items()}
print(dumps({m: outlier_precondition.describe(s, f"{m} vanilla") for m, s in outliers.items()}))
qt3 = rules.fixes(table2.loc["encoder clipped softmax"], vanilla["encoder"])
claims.check(rec, "QT-3", ours={f"{m} {v}": rules.summary(table2.loc[f"{m} {v}"])
                                for m in ("encoder", "decoder") for v in ("vanilla", "clipped softmax")},
             paper="BERT-base: inf-norm 735 → 21, kurtosis 3076 → 80, W8A8 ppl 1294 → 4.52 (Table 2)",
             holds=outlier_precondition.gated(qt3, {"encoder": outliers["encoder"]}), old_rule=qt3,
             note=f"the rule on the encoder (the paper's BERT row), γ = −3.84/T; {steps} steps, {len(seeds)} seed(s); "
                  + outlier_precondition.describe(outliers["encoder"], "encoder vanilla"))
v, z, c = (table1.loc[table1_label(0.0, 1.0)], table1.loc[table1_label(0.0, 1.03)],
           table1.loc[table1_label(-0.03, 1.0)])
qt4 = rules.closer_to_vanilla(z, c, v)
claims.check(rec, "QT-4", ours={"vanilla": rules.summary(v), "ζ>1 only": rules.summary(z), "γ<0": rules.summary(c)},
             paper="(0, 1.03): inf-norm 741, kurtosis 1707 vs vanilla 735 / 3076 (Table 1)",
             holds=outlier_precondition.gated(qt4, {sweep_model: rules.statistics(v)}), old_rule=qt4,
             note=f"{sweep_model}; (0, ζ>1) closer to vanilla than (γ<0, 1) in both statistics (log scale); "
                  + outlier_precondition.describe(rules.statistics(v), f"{sweep_model} vanilla (Table 1)"))
gated_fixes = {m: rules.fixes(table2.loc[f"{m} gated attention"], vanilla[m]) for m in vanilla}
testable = [m for m in vanilla if outlier_precondition.present(outliers[m])]
claims.check(rec, "QT-5", ours={f"{m} {v}": rules.summary(table2.loc[f"{m} {v}"])
                                for m in ("encoder", "decoder") for v in ("vanilla", "gated attention")},
             paper="BERT 735 → 39, OPT 340 → 8.7 max inf-norm; W8A8 4.65 / 16.02 (Table 2)",
             holds=all(gated_fixes[m] for m in testable) if testable else None, old_rule=all(gated_fixes.values()),
             note=f"the QT-3 rule on every model with outliers (tested on: {', '.join(testable) or 'none'}); "
                  + "; ".join(outlier_precondition.describe(outliers[m], f"{m} vanilla") for m in vanilla))
with_outliers = [int(T) for T, r in ref.iterrows() if outlier_precondition.present(r)]
lowered = rules.lowered_at(f6[f6.softmax == "clipped"].to_dict("records"), dict(ref.iterrows()))
claims.check(rec, "QT-6", ours={"T where α lowers the max inf-norm": lowered, "T with vanilla outliers": with_outliers},
             paper="α ∈ [2, 4] dampens outliers at T = 32 … 256 (Figure 6)",
             holds=bool(rules.one_alpha(lowered, with_outliers)) if len(with_outliers) >= 2 else None,
             old_rule=bool(rules.one_alpha(lowered)),
             note=f"{sweep_model}; one α lowers it at ≥ 2 of T ∈ {alpha_seq_lens} whose vanilla has outliers "
                  f"(testable with ≥ 2 such T); α ∈ {alphas}")
good = rules.robust_pi_inits(f7.to_dict("records"), vanilla[sweep_model])  # this run's vanilla, in a quick build too
_ = claims.check(rec, "QT-7", ours={"π_init with lower inf-norm and FP ppl within 5 %": good},
                 paper="π_init ∈ [0.25, 0.9] works for BERT-6L (Figure 7)",
                 holds=outlier_precondition.gated(len(good) >= 2, {sweep_model: outliers[sweep_model]}),
                 old_rule=len(good) >= 2, note=f"{sweep_model}, linear gates, π_init ∈ {pi_inits}; "
                 + outlier_precondition.describe(outliers[sweep_model], f"{sweep_model} vanilla"))

# %% tags=["nbval-check-output"]
print(dumps({c["id"]: c["holds"] for c in rec.claims}))

# %% [markdown]
# Read the verdicts together with the pilot's growth ratios and the live-row shares: a fix can only
# "lower the outliers versus vanilla" by a margin that matters if vanilla developed outliers in the
# first place, and a clipped model whose attention died measures a model without attention. If the
# ratios are near one — as they can be after the quick profile's few hundred steps of a 2-layer,
# 64-wide model — the verdicts test the code paths, not the paper.

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ## The full profile
#
# The full profile trains each model for 2000 steps at width 128 (about 25 trainings of ~8 minutes,
# plus the pilot attempts), two seeds for the Table 2 models, two PTQ seeds (8 calibration batches
# each). It takes several hours on this CPU, so it is not part of the book's default build; its
# results, curves and `run.json` go to `results/06_quantizable/full/` and regenerate with
#
# ```bash
# .venv/bin/python -m outlierbook run 06_quantizable --profile full
# ```
#
# Training is resumable: an interrupted run continues from the last checkpoint of each model
# (`.cache/pretrained/<config>/`), identical configurations are trained once, and each evaluation is
# stored beside its checkpoint (keyed by the settings, the evaluation blocks and the evaluation code).

# %% [markdown]
# ### The full profile's verdicts
#
# The full profile's results are stored with the book (`results/06_quantizable/full/`), so a quick
# build shows the verdicts of the real run here, beside the quick run's above:

# %% tags=["nbval-check-output"]
print(full_profile_verdicts("06_quantizable", profile))

# %% [markdown]
# The ledger's *outliers present* precondition (see the claim checks) read on the full run's vanilla models,
# and whether the stored verdicts were decided under it. A run stored before the precondition keeps the old
# rule's verdicts, which the {doc}`scorecard </book/scorecard>` lists as *re-run pending*:

# %% tags=["nbval-check-output"]
full_table2, full_source = shown_table("table2", table2)
full_claims = stored_full["claims"] if stored_full else rec.claims
print(full_source)
print(dumps({"verdicts decided under the precondition": any("holds_old_rule" in c for c in full_claims),
             **{m: outlier_precondition.describe(rules.statistics(full_table2.loc[f"{m} vanilla"]), f"{m} vanilla")
                for m in ("encoder", "decoder")}}))

# %% [markdown]
# And the full run's other tables, rebuilt from its stored rows (seed means; Tables 1 and 2 are shown
# beside the paper's in their sections above):

# %% tags=["nbval-check-output"]
FULL_COLUMNS = {"table1": ["ppl_fp", "max_inf_norm", "avg_kurtosis", "ppl_w8a8", "n_seeds"],
                "table2": ["ppl_fp", "ppl_fp_std", "max_inf_norm", "avg_kurtosis", "ppl_w8a8", "ppl_w8a8_std", "n_seeds"],
                "figure6": None, "figure7": None}
full_tables = stored_tables
for key, table in full_tables.items():
    if key in ("table1", "table2"):
        continue
    shown = table if FULL_COLUMNS[key] is None else table[FULL_COLUMNS[key]]
    print(f"{key} (full profile)\n{shown.round(2).to_string()}\n")
if not full_tables:
    print("this is the full-profile run: its tables are above" if profile == "full"
          else "the full profile has not been run yet")

# %% [markdown]
# ### What the full run says
#
# We wrote this section after reading the full run's verdicts and tables. The numbers are in the
# cells above; this section only says what they mean. In short, **at our scale the paper's two fixes
# do not remove the outliers our decoder grows, and those outliers are too small to hurt W8A8.**
#
# - **Only the decoder grew outliers.** The encoder trained at a learning rate it tolerates stays
#   near-Gaussian (kurtosis close to a Gaussian's 3, max inf-norm of a few units), so its Table 2
#   rows (QT-3 and the encoder half of QT-5) compare fixes on a model that has nothing to fix. The
#   decoder's max inf-norm more than doubled during training, which matches the pilot. That is real
#   outlier growth, but to tens: an order of magnitude or more below the paper's vanilla OPT-125m
#   and BERT-base.
# - **Clipped softmax on the decoder sits within the seed spread of vanilla,** lower in max inf-norm
#   and higher in kurtosis, so QT-3's rule is not met on either model. The paper reports that
#   clipped softmax failed on OPT and leaves the reason open (§5); our decoder agrees that it does
#   not help. Table 1's single-seed decoder rows pass QT-4 for an unflattering reason. "ζ > 1 alone"
#   stays close to vanilla, as the paper says, but γ < 0 moves the statistics *up*, not down.
# - **Gated attention made the decoder's outliers larger, not smaller** (Table 2, both seeds; QT-5).
#   It also raised the encoder's kurtosis. This contradicts the paper's strongest result (OPT with
#   gates: max inf-norm in single digits). Figure 7 agrees: no $\pi_{init}$ lowered the max inf-norm
#   below vanilla's two-seed mean (QT-7). More open gates gave better FP perplexity (the most open
#   one beat vanilla's) and statistics broadly closer to vanilla's, which fits "a gate near one is
#   vanilla attention".
# - **Figure 6: only the shortest sequences benefit.** At $T = 32$ the vanilla decoder has its
#   largest outliers, and every α we tried lowered them and also improved FP perplexity. At $T = 64$
#   and $T = 128$ no α did, so QT-6's "one α across sequence lengths" fails here. At $T = 128$ the
#   differences between α values are not much larger than the difference between vanilla's two
#   training seeds in Table 2, and Table 1 and Figures 6 and 7 use one seed. Read those rows as "no
#   effect resolved", not as a ranking.
# - **W8A8 does not separate the models.** For every decoder row the W8A8 perplexity is within the
#   training-seed spread of its FP perplexity: an 8-bit range over outliers of tens is still fine
#   enough. The paper's motivating failure, a vanilla model that W8A8 ruins, does not occur at our
#   scale. The W8A8 clause of the "fixes" rule is therefore decided by noise, and the outlier
#   statistics are the informative measurements. The exception is the encoder with clipped softmax.
#   Its W8A8 perplexity is much worse than its FP perplexity and varies strongly between seeds. We
#   did not trace which quantizer causes this (chapter 4's leave-one-out analysis would); it is a
#   lead, not a finding.
#
# What would change the picture is what we could not afford. The paper's models are about a hundred
# times larger, BERT-base saw thousands of times more training tokens than ours, and §3 reports that
# the outliers "tend to become stronger in magnitude, the longer the network is trained". Our
# verdicts test the mechanism on models whose outliers have only started to form. The same code runs
# the paper's setting: the model sizes, `steps`, and `seq_len` are parameters, and training runs on
# Accelerate.
# %% [markdown]
# ## Exercises
#
# 1. Compute the clipping threshold $-\gamma/(\zeta-\gamma)$ for the paper's BERT setting
#    ($\gamma = -0.025$, $\zeta = 1$, $T = 128$) and compare it with $1/T$. Why does BERT-base survive it at
#    initialisation and our narrow models (64 wide quick, 128 full) not?
# 2. Show that a gated model with every gate forced to 1 computes exactly the vanilla model, and
#    that a clipped softmax with $\gamma = 0$, $\zeta = 1$ is the softmax. Which unit tests of the book check
#    these, and what tolerance do they need?
# 3. The clipped softmax passes no gradient to clipped probabilities. Write the gradient of
#    $\hat p_i$ with respect to $z_j$ inside the unclipped region and explain why the remaining
#    tokens' scores still receive gradient.
#
# ```{admonition} Solution 1
# :class: dropdown
# $-\gamma/(\zeta-\gamma) = 0.025/1.025 \approx 0.0244 = 3.1/T$ at $T = 128$: a token must get about three
# times the uniform probability to survive. A random BERT-base layer (768 wide, 12 heads) has score
# spread large enough that a few rows keep a token above the threshold; at our widths the scores
# are nearly uniform and (almost) no row does (the live-row table above).
# Gradient flows only through live rows, so the wide model escapes and the narrow one cannot — hence
# our γ ramp.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# With $\pi = 1$ the context is multiplied by one; with $\gamma = 0$, $\zeta = 1$ the clip of
# $\mathrm{softmax}(x) \in (0, 1)$ is the identity. `tests/unit/test_attention_variants.py` checks both
# (`test_gates_forced_to_one_equal_the_vanilla_model`, `test_clipped_softmax_reduces_to_softmax_...`);
# gates are forced with a bias of 100 ($\sigma(100) = 1$ in float32) and outputs agree to 1e-5, the
# float32 rounding of a different summation order.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# Inside $(0, 1)$, $\hat p_i = (\zeta-\gamma)p_i + \gamma$, so
# $\partial\hat p_i/\partial z_j = (\zeta-\gamma)\,p_i(\delta_{ij} - p_j)$: the softmax Jacobian, scaled.
# The $p_j$ of a clipped token still appears in the denominator of every $p_i$, so a surviving token's
# probability depends on all scores; but no loss term pulls on the clipped $\hat p_j$ itself, so nothing
# pushes its score further down.
# ```
