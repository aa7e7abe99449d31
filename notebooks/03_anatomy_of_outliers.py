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
# # Anatomy of outliers
#
# All four papers start from the same observation: a pretrained transformer carries a few
# enormous activation values. This chapter makes them visible in the book's model before any fix
# is shown, and walks the argument the papers make, one measurement at a time:
#
# 1. there are outliers, and they sit in **a few hidden dimensions**;
# 2. **a few tokens** — delimiters and other frequent tokens — carry the largest;
# 3. LayerNorm's scale **γ amplifies** them;
# 4. attention heads use them to **do nothing**;
# 5. **most can be clipped, some cannot**.
#
# Model: all-MiniLM-L6-v2 with the SST-2 classification head fine-tuned in
# {doc}`00_how_to_run` (and, for comparison, the pretrained encoder alone). Text: sentences of
# the SST-2 dev split. Every statistic is computed by `src/outlierbook/analysis/`, with the papers'
# own definitions, as the authors' code computes them (see the module docstrings). The same code
# accepts a hub model id such as `bert-base-uncased` when the network is there.

# %% tags=["parameters"]
profile = "quick"
model = "all-MiniLM-L6-v2"
data_source = "local"
n_sentences = 64
eval_limit = 200
gelu_clips = [40.0, 20.0, 10.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1]
ln_clips = [-30.0, -25.0, -20.0, -15.0, -10.0, -8.0, -6.0, -4.0]
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from outlierbook import claims, compare
from outlierbook.analysis import attention as att
from outlierbook.analysis import outliers as ol
from outlierbook.analysis.capture import capture_activations
from outlierbook.analysis.clipping import clipping_impact
from outlierbook.data.glue import TaskData
from outlierbook.models import load
from outlierbook.models.anatomy import anatomy
from outlierbook.models.tasks import encode, subsample, task_setup
from outlierbook.headline import figure_data, figure_metrics, headline_metric
from outlierbook.results import Recorder, dumps, full_profile_verdicts, stored_full_run

rec = Recorder("03_anatomy_of_outliers", profile, params=dict(model=model, n_sentences=n_sentences, eval_limit=eval_limit,
                                                              gelu_clips=gelu_clips, ln_clips=ln_clips, seed=seed))
setup = task_setup("sst2", profile, model=model, eval_limit=eval_limit, data_source=data_source, seed=seed)
text = subsample(setup.eval_data, n_sentences, seed=seed)
batches = [encode(setup.tokenizer, text.text_a[i:i + 32], None, 128) for i in range(0, len(text), 32)]
tokens, lengths = ol.tokens_of(batches, setup.tokenizer)
acts = capture_activations(setup.model, batches)
cfg = setup.model.config
n_layers, d, head_size = cfg.num_hidden_layers, cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
print(f"{len(lengths)} sentences, {len(tokens)} tokens, {n_layers} layers, hidden {d}, {cfg.num_attention_heads} heads")

# %% [markdown]
# ## 1. A few hidden dimensions
#
# Following {cite:t}`bondarenko2021understanding`, an element is an **outlier** when it lies more than
# six standard deviations from the mean of its tensor. We count outliers per hidden dimension in
# the FFN output of every layer (the tensor the 2023 paper's Figure 1 counts).

# %%
rows, per_dim_all = [], {}
for i in range(n_layers):
    per_dim, per_tok = ol.outlier_counts(acts[f"layer{i}.ffn.output"])
    per_dim_all[i] = per_dim
    shares = ol.token_share(per_tok, tokens, {"delimiters": ("[SEP]", ".", ","), "delimiters + [CLS]": ol.DELIMITERS})
    rows.append({"layer": i, "outliers": int(per_dim.sum()), "dims holding 90 %": ol.dims_holding(per_dim, 0.9),
                 "top dims": ol.top_dims(per_dim.float(), 3), "share on [SEP] . ,": 100 * shares["delimiters"],
                 "share on [SEP] [CLS] . ,": 100 * shares["delimiters + [CLS]"],
                 "top tokens": ", ".join(t for t, _ in ol.top_tokens(per_tok, tokens, 5))})
dims_table = pd.DataFrame(rows)
rec.add_rows(dims_table.drop(columns=["top dims", "top tokens"]).melt(id_vars="layer", var_name="metric").assign(
    experiment="outliers_per_layer", setting="ffn.output"))

# %% tags=["nbval-check-output"]
print(dims_table.round(1).to_string(index=False))

# %% [markdown]
# The 2023 paper's number beside ours: the share of FFN-output outliers on `[SEP]`, "." and ","
# in the last two layers (BERT-base: layers 10 and 11; here: the last two of six). The paper gives
# a lower bound ("> 97 %"), so the verdict column is not meaningful; read the Δ.

# %%
last_two = range(n_layers - 2, n_layers)
tok_last = torch.cat([ol.outlier_counts(acts[f"layer{i}.ffn.output"])[1] for i in last_two])
share_last = 100 * ol.token_share(tok_last, tokens * 2, {"d": ("[SEP]", ".", ",")})["d"]
rec.metric("outlier_share_on_delimiters_last_two_layers", share_last)
shown_share, shown = headline_metric("03_anatomy_of_outliers", profile, "outlier_share_on_delimiters_last_two_layers",
                                     share_last)
ours_share = pd.DataFrame([{"setting": "BERT-base MNLI-m FFN output layers 10-11", "metric": "outlier share on delimiters (%)",
                            "value": shown_share}])
compare.styled(compare.compare(compare.load_paper("quantizable", "Figure 1"), ours_share, tol=5, profile=shown.profile),
               "ch03_fig1", digits=1, caption=shown.caption(
                   "Outliers on [SEP] . , — Bondarenko et al. 2023 (BERT-base) vs ours (MiniLM, last two layers)"))

# %% [markdown]
# Where the outliers sit, summed over all layers. In a quick build that has a stored full run, this
# figure and the γ figure below draw the full run's data (512 sentences); the tables printed above stay
# this build's smoke test.

# %%
total = torch.stack(list(per_dim_all.values())).sum(0)
per_position = torch.zeros(max(lengths))
for i in range(n_layers):
    _, per_tok = ol.outlier_counts(acts[f"layer{i}.ffn.output"])
    for seq in torch.split(per_tok, lengths):
        per_position[: len(seq)] += seq
by_dim = pd.DataFrame({"outliers": total.float().numpy()}, index=pd.RangeIndex(d, name="dimension"))
by_position = pd.DataFrame({"outliers": per_position.numpy()}, index=pd.RangeIndex(len(per_position), name="position"))
rec.update({**figure_metrics("fig_outliers_per_dim", by_dim), **figure_metrics("fig_outliers_per_position", by_position)})
dims_shown = figure_data("03_anatomy_of_outliers", profile, "fig_outliers_per_dim", by_dim)
positions_shown = figure_data("03_anatomy_of_outliers", profile, "fig_outliers_per_position", by_position)
fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.2))
fig.suptitle(dims_shown.source, fontsize=8)
axes[0].bar(dims_shown.table.index, dims_shown.table["outliers"], width=1.0)
axes[0].set(xlabel="hidden dimension", ylabel="outliers (all layers)", title="outliers per hidden dimension")
axes[1].bar(positions_shown.table.index, positions_shown.table["outliers"], width=1.0, color="C1")
axes[1].set(xlabel="token position", ylabel="outliers (all layers)", title="outliers per token position")
fig.tight_layout()
plt.show()

# %% [markdown]
# A handful of the 384 dimensions hold nearly all outliers, in every layer. The right panel shows
# why position matters: position 0 is always `[CLS]`, and the last position of every sentence is
# `[SEP]`.
#
# ## 2. A few tokens carry the largest values
#
# The 2023 paper finds more than 97 % of BERT-base's outliers on `[SEP]`, "." and ",". The table
# above reports our share for the same three tokens and for the same set plus `[CLS]`, and the five
# tokens with most outliers. The per-token **range** (max minus min over the hidden dimension,
# Figure 2a of the 2021 paper) shows the same from another angle: compare the FFN's input (the
# attention LayerNorm output) with its output.

# %%
range_rows = []
for i in range(n_layers):
    r_in, r_out = ol.token_ranges(acts[f"layer{i}.attention.ln"]), ol.token_ranges(acts[f"layer{i}.ffn.output"])
    range_rows.append({"layer": i, "max range FFN input": float(r_in.max()), "max range FFN output": float(r_out.max()),
                       "ratio output/input": float(r_out.max() / r_in.max()),
                       "median range FFN output": float(r_out.median())})
ranges = pd.DataFrame(range_rows)
rec.add_rows(ranges.melt(id_vars="layer", var_name="metric").assign(experiment="ffn_ranges"))

# %% tags=["nbval-check-output"]
print(ranges.round(2).to_string(index=False))

# %% [markdown]
# One sentence up close (the first of the sample; in a quick build, the stored full run's first sentence,
# like the head panel in section 4): the per-token min … max of the last layer's FFN input and output.

# %%
first = slice(0, lengths[0])
one_sentence = pd.DataFrame({"token_id": batches[0]["input_ids"][0, first].float().numpy()},
                            index=pd.RangeIndex(lengths[0], name="position"))
for kind, name in (("attention.ln", "input"), ("ffn.output", "output")):
    x = acts[f"layer{n_layers - 1}.{kind}"][first]
    one_sentence[f"{name} min"], one_sentence[f"{name} max"] = x.amin(1).numpy(), x.amax(1).numpy()
rec.update(figure_metrics("fig_one_sentence", one_sentence))
sentence_shown = figure_data("03_anatomy_of_outliers", profile, "fig_one_sentence", one_sentence)
fig, axes = plt.subplots(2, 1, figsize=(8.6, 4.2), sharex=True)
fig.suptitle(sentence_shown.source, fontsize=8)
for ax, name in zip(axes, ("input", "output")):
    t = sentence_shown.table
    ax.fill_between(t.index, t[f"{name} min"], t[f"{name} max"], alpha=0.6)
    ax.set(ylabel="min … max", title=f"layer {n_layers - 1}, FFN {name}")
axes[1].set_xticks(sentence_shown.table.index)
axes[1].set_xticklabels(setup.tokenizer.convert_ids_to_tokens(sentence_shown.table["token_id"].astype(int).tolist()),
                        rotation=90, fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. LayerNorm's γ amplifies them
#
# A LayerNorm computes $\tilde X = \gamma \odot \hat X + \beta$ with $\hat X = (X - \mu)/\sigma$, which is
# $\tilde X = \gamma \odot X'$ for the **non-scaling** output $X' = \hat X + \beta/\gamma$ (Outlier
# Suppression, Eq. 3). Their Figure 1 shows that the dimensions where $|\tilde X|$ is largest are the
# dimensions where $|\gamma|$ is largest: γ turns a milder $X'$ into a tensor with outliers. We
# recover $X' = \tilde X/\gamma$ from the attention LayerNorm ("MHA-LN") output and compare.

# %%
gamma_rows, gamma_curves = [], {}
for i, layer in enumerate(anatomy(setup.model).layers):
    ln = layer.attention_ln
    g = ol.gamma_overlap(acts[f"layer{i}.attention.ln"], ln.weight.detach(), ln.bias.detach(), k=10)
    gamma_curves[i] = (ln.weight.detach().abs(), g["max_abs_x_tilde"], g["max_abs_x_prime"])
    gamma_rows.append({"layer": i, "top-10 overlap |γ| vs max|X̃|": g["overlap"], "shared dims": g["shared_dims"],
                       "max/median of max|X̃|": g["ratio_x_tilde"], "max/median of max|X'|": g["ratio_x_prime"]})
gamma_table = pd.DataFrame(gamma_rows)
rec.add_rows(gamma_table.drop(columns=["shared dims"]).melt(id_vars="layer", var_name="metric").assign(experiment="gamma"))

# %% tags=["nbval-check-output"]
print(gamma_table.round(2).to_string(index=False))

# %%
layer_shown = int(gamma_table["top-10 overlap |γ| vs max|X̃|"].idxmax())
curves = pd.DataFrame(dict(zip(("gamma", "x_tilde", "x_prime"), (c.numpy() for c in gamma_curves[layer_shown]))),
                      index=pd.RangeIndex(d, name="dimension"))
rec.update({**figure_metrics("fig_gamma", curves), "fig_gamma_layer": layer_shown})
curves_shown = figure_data("03_anatomy_of_outliers", profile, "fig_gamma", curves)
if curves_shown.from_stored_run:
    layer_shown = int(stored_full_run("03_anatomy_of_outliers")["metrics"]["fig_gamma_layer"])
fig, axes = plt.subplots(3, 1, figsize=(8.6, 5), sharex=True)
for ax, column, label in zip(axes, curves.columns, ["|γ|", "max |X̃| (LN output)", "max |X'| (non-scaling)"]):
    ax.bar(curves_shown.table.index, curves_shown.table[column], width=1.0)
    ax.set_ylabel(label, fontsize=8)
axes[0].set_title(f"MHA-LN of layer {layer_shown}: the same dimensions stand out in γ and in the output\n"
                  f"{curves_shown.source}", fontsize=9)
axes[-1].set_xlabel("hidden dimension")
fig.tight_layout()
plt.show()

# %% [markdown]
# Dividing out γ flattens the output: the largest per-dimension maximum of $X'$ is a few times its
# median, against many times for $\tilde X$. Outlier Suppression's Gamma Migration exploits exactly this.
#
# ## 4. Attention heads that do nothing
#
# The 2023 paper explains *why* these dimensions grow. A head that should leave a token's
# representation unchanged puts its attention on tokens whose value vectors are small — delimiters —
# so that $\sum_k p_{qk} v_k \approx 0$. We map each outlier dimension $j$ of a layer's FFN output to the
# head owning that slice of features, $h = \lfloor j / d_{\text{head}} \rfloor$, as the paper does, and
# compare the attention mass these **outlier heads** put on delimiter tokens (`[SEP]`, `[CLS]`, `.`,
# `,`) with the other heads of the same layer.

# %%
ids_delim = set(setup.tokenizer.convert_tokens_to_ids(list(ol.DELIMITERS)))
head_rows = []
records = [att.attention_records(setup.model, b) for b in batches]
for i in range(n_layers):
    per_dim = per_dim_all[i]
    out_dims = ol.top_dims(per_dim.float(), ol.dims_holding(per_dim, 0.9)) if per_dim.sum() else []
    out_heads = sorted({att.head_of_dim(j, head_size) for j in out_dims})
    mass = torch.stack([att.delimiter_mass(r[i]["probs"], torch.isin(b["input_ids"], torch.tensor(sorted(ids_delim))),
                                           b["attention_mask"].bool()) for r, b in zip(records, batches)]).mean(0)
    others = [h for h in range(cfg.num_attention_heads) if h not in out_heads]
    head_rows.append({"layer": i, "outlier heads": out_heads,
                      "delimiter mass, outlier heads": float(mass[out_heads].mean()) if out_heads else float("nan"),
                      "delimiter mass, other heads": float(mass[others].mean())})
heads = pd.DataFrame(head_rows)
rec.add_rows(heads.drop(columns=["outlier heads"]).melt(id_vars="layer", var_name="metric").assign(experiment="noop_heads"))

# %% tags=["nbval-check-output"]
print(heads.round(3).to_string(index=False))

# %%
# One outlier head up close (Figure 2 of the 2023 paper): probabilities, value norms, their product.
show_layer = int(heads["delimiter mass, outlier heads"].fillna(-1).idxmax())
show_head = heads.loc[show_layer, "outlier heads"][0]
r, n0 = records[0][show_layer], lengths[0]
head_keys = pd.DataFrame({"token_id": batches[0]["input_ids"][0, :n0].float().numpy(),
                          "value norm": r["values"][0, show_head, :n0].norm(dim=-1).numpy(),
                          "layer": float(show_layer), "head": float(show_head)}, index=pd.RangeIndex(n0, name="key"))
# p(q→k) flattened row by row (pair = q·n + k): a stored run's sentence may have another length n
head_probs = pd.DataFrame({"p": r["probs"][0, show_head, :n0, :n0].reshape(-1).numpy()},
                          index=pd.RangeIndex(n0 * n0, name="pair"))
rec.update({**figure_metrics("fig_noop_head_keys", head_keys), **figure_metrics("fig_noop_head_probs", head_probs)})
keys_shown = figure_data("03_anatomy_of_outliers", profile, "fig_noop_head_keys", head_keys).table
probs_shown = figure_data("03_anatomy_of_outliers", profile, "fig_noop_head_probs", head_probs)
n_keys = len(keys_shown)
p = probs_shown.table["p"].to_numpy().reshape(n_keys, n_keys)
vnorm = keys_shown["value norm"].to_numpy()
key_tokens = setup.tokenizer.convert_ids_to_tokens(keys_shown["token_id"].astype(int).tolist())
fig, axes = plt.subplots(1, 3, figsize=(8.6, 3.8), gridspec_kw={"width_ratios": [1, 0.5, 1]})
fig.suptitle(probs_shown.source, fontsize=8)
axes[0].imshow(p, cmap="viridis")
axes[0].set(title=f"layer {int(keys_shown['layer'].iloc[0])}, head {int(keys_shown['head'].iloc[0])}: p(q→k)",
            xlabel="key", ylabel="query")
axes[1].barh(np.arange(n_keys), vnorm)
axes[1].invert_yaxis()
axes[1].set(title="‖v_k‖", yticks=np.arange(n_keys))
axes[1].set_yticklabels(key_tokens, fontsize=7)
axes[2].imshow(p * vnorm[None, :], cmap="viridis")
axes[2].set(title="p(q→k)·‖v_k‖", xlabel="key")
fig.tight_layout()
plt.show()

# %% [markdown]
# How to read the three panels: a bright column on the left means most queries attend to one key;
# if that key's bar in the middle is short, the product on the right is dark in that column — the
# head reads almost nothing and adds almost nothing to the residual. In this model the key that
# plays the delimiter's role is often `[CLS]`, which is why `[CLS]` is counted with the delimiters
# in the attention-mass comparison.
#
# ## 5. Most outliers can be clipped, some cannot
#
# Outlier Suppression's Figure 2 and Table 13 clip one activation kind in the **FP** model and
# watch the metric. Clipping the GELU outputs (from above) or the MHA-LN outputs (from below) at
# decreasing values first touches only the few tokens that carry the largest outliers — and the
# metric does not move — until an inflection point where the clip reaches ordinary tokens.
# The GELU grid goes on below 1.0 (to 0.1), because in this model a clip at 1.0 already touches
# almost every token in some layer while the metric has lost less than a point: the inflection point OS-5 is
# about lies further on, and the grid must reach it for the claim to be tested at all.

# %%
gelu_impact = clipping_impact(setup, "ffn.gelu", gelu_clips)
ln_impact = clipping_impact(setup, "attention.ln", ln_clips)
for name, table in (("ffn.gelu", gelu_impact), ("attention.ln", ln_impact)):
    table["max clipped tokens (%)"] = table.filter(like="layer").max(axis=1)
    rec.add_rows(table.assign(experiment=f"clipping_{name}").rename(columns={"metric": "value"}))

# %% tags=["nbval-check-output"]
print("GELU outputs clipped from above:")
print(gelu_impact.round(2).to_string(index=False))
print("MHA-LN outputs clipped from below:")
print(ln_impact.round(2).to_string(index=False))

# %% [markdown]
# The figure shows the stored full run's sweep (every dev example) in a quick build that has one; the
# printed tables above are this build's smoke test.

# %%
stored = None if profile == "full" else stored_full_run("03_anatomy_of_outliers")
if stored is not None and "experiment" in stored["table"]:
    rows_of = lambda kind: stored["table"][stored["table"]["experiment"] == f"clipping_{kind}"].drop(
        columns=["metric"]).rename(columns={"value": "metric"}).reset_index(drop=True)
    panels, source = (rows_of("ffn.gelu"), rows_of("attention.ln")), "full run"
else:
    panels, source = (gelu_impact, ln_impact), "this run"
fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.2))
fig.suptitle(source, fontsize=9)
for ax, (name, table) in zip(axes, zip(("GELU (clip from above)", "MHA-LN (clip from below)"), panels)):
    t = table.dropna(subset=["clip"])
    ax.plot(t["clip"].abs(), t["metric"], "o-", color="k", label="accuracy")
    ax.axhline(table["metric"].iloc[0], color="grey", ls="--", lw=0.8)
    ax2 = ax.twinx()
    ax2.plot(t["clip"].abs(), t["max clipped tokens (%)"], "s:", color="C3", label="max clipped tokens")
    ax.set(xscale="log", xlabel="|clipping value|", ylabel="accuracy", title=name)
    ax2.set_ylabel("clipped tokens (%)", color="C3")
fig.tight_layout()
plt.show()

# %% [markdown]
# For context, the paper's BERT-MRPC GELU column of Table 13 (accuracy, and the largest per-layer
# share of clipped tokens).

# %%
t13 = compare.load_paper("outlier_suppression", "Table 13")
t13.pivot(index="setting", columns="metric", values="value").style.set_uuid("ch03_t13").format(precision=2)

# %% [markdown]
# ## Claim checks
#
# Five claims of the ledger rest on these measurements (rules fixed in the {doc}`claims ledger </book/claims>`):
#
# - **QT-1**: ≤ 1 % of hidden dimensions hold ≥ 90 % of the outliers; the share on delimiters is reported.
#   We apply it to the FFN output of every layer.
# - **QT-2**: outlier heads put more attention mass on delimiters than other heads (on average over
#   the layers that have outlier heads).
# - **OS-1**: the top-10 dimensions of max|X̃| and of |γ| overlap in most MHA-LN layers. We read
#   "overlap" as sharing at least one dimension and "most" as more than half of the layers.
# - **OS-5**: clipping that touches ≤ 3 % of tokens keeps the FP metric within 0.5, and a sharp drop
#   exists further on. We take the most aggressive GELU clip whose per-layer clipped-token share stays
#   ≤ 3 % in every layer, and call a drop "sharp" when some stronger clip loses more than 1 point.
# - **PEG-3**: the FFN output/input range ratio exceeds 5 in the last layers (we take the last two)
#   and outlier dimensions are ≤ 1 %.

# %%
dims_frac = [r["dims holding 90 %"] / d for r in rows if r["outliers"]]
claims.check(rec, "QT-1", ours={"max share of dims holding 90% of outliers": max(dims_frac) * 100,
                                "mean share on [SEP] . , (%)": float(dims_table["share on [SEP] . ,"].mean()),
                                "mean share on [SEP] [CLS] . , (%)": float(dims_table["share on [SEP] [CLS] . ,"].mean())},
             paper={"outliers on [SEP] . , (%)": "> 97", "dims": "a few"},
             holds=max(dims_frac) <= 0.01, note="dims rule applied to every layer's FFN output; delimiter share reported")

with_heads = heads.dropna(subset=["delimiter mass, outlier heads"])
qt2 = {"outlier heads": float(with_heads["delimiter mass, outlier heads"].mean()),
       "other heads": float(with_heads["delimiter mass, other heads"].mean())}
claims.check(rec, "QT-2", ours=qt2, paper="outlier heads attend almost only to [SEP] . ,",
             holds=qt2["outlier heads"] > qt2["other heads"], note="mean over layers with outlier heads")

overlapping = int((gamma_table["top-10 overlap |γ| vs max|X̃|"] >= 1).sum())
claims.check(rec, "OS-1", ours={"layers with overlap": overlapping, "layers": n_layers,
                                "mean overlap of top-10": float(gamma_table["top-10 overlap |γ| vs max|X̃|"].mean())},
             paper="same outlier dims in γ and X̃ (Fig. 1, 11)", holds=overlapping > n_layers / 2,
             note="overlap = at least one shared dim among the top 10")

fp = float(gelu_impact["metric"].iloc[0])
clipped_rows = gelu_impact.dropna(subset=["clip"])
gentle = clipped_rows[clipped_rows["max clipped tokens (%)"] <= 3.0]
strongest_gentle = gentle.iloc[-1] if len(gentle) else None
within = clipped_rows[(clipped_rows["metric"] - fp).abs() <= 0.5]
os5 = {"fp": fp, "clip at ≤3% tokens": None if strongest_gentle is None else float(strongest_gentle["clip"]),
       "tokens clipped there (%)": None if strongest_gentle is None else float(strongest_gentle["max clipped tokens (%)"]),
       "metric there": None if strongest_gentle is None else float(strongest_gentle["metric"]),
       "strongest clip within 0.5": float(within["clip"].iloc[-1]) if len(within) else None,
       "tokens clipped at it (%)": float(within["max clipped tokens (%)"].iloc[-1]) if len(within) else None,
       "worst metric": float(clipped_rows["metric"].min())}
claims.check(rec, "OS-5", ours=os5, paper={"BERT-MRPC FP": 87.75, "clip 10 (≤ 4.8 % tokens)": 87.25, "clip 2": 84.07},
             holds=strongest_gentle is not None and abs(float(strongest_gentle["metric"]) - fp) <= 0.5
             and fp - os5["worst metric"] > 1.0,
             note=f"GELU clipping on SST-2 dev ({len(setup.eval_data)} examples)")

last = ranges.tail(2)
_ = claims.check(rec, "PEG-3", ours={"ratio last two layers": [round(v, 2) for v in last["ratio output/input"]],
                                     "ratio all layers": [round(v, 2) for v in ranges["ratio output/input"]],
                                     "max dims share (%)": max(dims_frac) * 100},
                 paper="FFN output range ≫ input range in layer 11 (Fig. 2a); few outlier dims (Fig. 2b)",
                 holds=bool((last["ratio output/input"] > 5).all()) and max(dims_frac) <= 0.01,
                 note="ratio of the largest per-token ranges, FFN output over FFN input")

# %% tags=["nbval-check-output"]
print(dumps({c["id"]: c["holds"] for c in rec.claims}))

# %% [markdown]
# **Reading the verdicts.** The printed lines are authoritative; this paragraph explains the ones
# that did not hold when the chapter was written (quick and full profiles), and OS-5, which holds by
# its rule for a reason the rule does not show.
#
# - *QT-1*: the outliers do concentrate in a few dimensions, but in at least one layer more than
#   three dimensions are needed to cover 90 % of them (the `dims holding 90 %` column), and three is
#   what the ledger's 1 % allows in a 384-wide model. And the tokens differ from BERT's: in the first
#   layers the outliers sit on `[CLS]`, in the last ones largely on frequent words ("," "and" "of") —
#   Outlier Suppression's Appendix C reports the same mix of delimiters and high-frequency tokens.
# - *QT-2*: with the paper's slice mapping (dimension $j$ → head $\lfloor j/d_{\text{head}}\rfloor$) the
#   "outlier heads" of this model do not attend to delimiters more than the others, although the
#   figure above shows textbook no-op heads. Either the slice mapping is the wrong lens for MiniLM
#   (its output projection mixes heads; exercise 2), or many of its heads, not only the outlier
#   ones, park their attention on `[CLS]`.
# - *PEG-3*: the FFN output range exceeds its input range by large factors in several layers, the
#   first ones included (the `ratio output/input` column); the rule asks for more than 5 in *both*
#   of the last two layers, which this model misses narrowly or clearly depending on the sentences.
# - *OS-5*: the first tokens to be clipped are the `[CLS]` tokens — one per sentence, already more
#   than 3 % of a short SST-2 sentence's tokens — so the strongest clip under the 3 % threshold
#   touches no token at all: the rule's first half is met only in that empty way. Its second half
#   needs the grid below 1.0: with it, the stored full run's one-epoch head keeps its accuracy within
#   half a point until the clip touches almost every token of some layer, and loses more than a
#   point only at the strongest clips (the figure above). So the verdict is *holds*, but the shape
#   differs from the paper's: there the drop follows clipping a few per cent of the tokens; here the
#   accuracy falls gradually, and only once every token is clipped — MiniLM's large GELU outputs are
#   not confined to a few tokens.
#
# ## Pretrained versus fine-tuned
#
# Are the outliers a product of fine-tuning? The 2023 paper's metrics — kurtosis (the plain fourth
# standardised moment: 3 for a Gaussian) and the infinity norm, per sequence and averaged — for the
# pretrained encoder and for the fine-tuned classifier, on the same sentences.

# %%
encoder = load.load_encoder(model)
acts_pre = capture_activations(encoder, batches)
both = pd.concat([ol.layer_summary(acts_pre, lengths, n_layers).assign(model="pretrained"),
                  ol.layer_summary(acts, lengths, n_layers).assign(model="SST-2 fine-tuned")])
stats = both.pivot_table(index=["layer", "kind"], columns="model", values=["kurtosis", "inf_norm"])
rec.add_rows(both.melt(id_vars=["layer", "kind", "model"], var_name="metric").assign(experiment="kurtosis_infnorm"))

# %% tags=["nbval-check-output"]
print(stats.round(1).to_string())

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ### The full profile's verdicts
#
# The claims of this chapter as the full run (512 sentences, every dev example) decided them, from its
# stored results:

# %% tags=["nbval-check-output"]
print(full_profile_verdicts("03_anatomy_of_outliers", profile))

# %% [markdown]
# The outliers are there before fine-tuning: they are a property of the pretrained model. The
# next chapters take them on — by quantizing around them ({cite:t}`bondarenko2021understanding`),
# by moving their amplifier and clipping the tokens that carry them ({cite:t}`wei2022outlier`), or
# by training models that never grow them ({cite:t}`bondarenko2023quantizable`).
#
# ## Exercises
#
# 1. Replace the six-sigma rule by a fixed threshold (say |x| > 20). Which layers lose their
#    outliers, and what does that say about comparing outlier counts across layers?
# 2. Map the outlier dimensions to heads through the output projection instead of by slice
#    (`att.head_contributions(anatomy(setup.model).layers[i], records[0][i]["context"], dim)`). Do the two mappings agree?
#
# ```{admonition} Solution 1
# :class: dropdown
# A fixed threshold ignores that layers live on different scales: the late layers' FFN outputs
# are an order of magnitude smaller, so they lose their outliers under |x| > 20 although their
# structure (a few dimensions, a few tokens) is unchanged. The six-sigma rule is relative to each
# tensor's spread, which is what matters for a per-tensor quantizer.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# Not necessarily. The slice mapping assumes head $h$'s features stay in its slice, but the output
# projection $W_O$ mixes all heads into every hidden dimension. The paper's mapping is a convention
# that works when $W_O$ is close to block-structured for the outlier dimension; the contribution
# view measures which head actually writes there.
# ```
