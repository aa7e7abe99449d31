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
# # Understanding and overcoming: mixed precision, per-embedding groups, QAT
#
# Bondarenko et al. {cite:p}`bondarenko2021understanding` diagnose BERT's 8-bit failure —
# activations, not weights; the residual sum after the FFN; a few outlier dimensions — and answer
# it three ways, each with its own trade-off: keep the few problematic tensors at 16 bits
# (**mixed-precision PTQ**), give each group of embedding dimensions its own range
# (**per-embedding-group PTQ**, PEG), or learn the ranges while fine-tuning (**QAT**). This chapter
# reruns each experiment type of the paper on the book's embedded model.
#
# **Setup (the paper's §5).** Quantizers at every Linear output, both residual sums, every
# LayerNorm output, the softmax input and output, the embedding sum, the pooler and the logits;
# weights symmetric **per tensor**, activations asymmetric per tensor, static ranges. Unless a table
# says otherwise, activation ranges are the min and max of **one training sequence** (current
# min-max, batch size 1), and a number is the median over calibration seeds (which sequence).
#
# **What differs, and why.** The model is all-MiniLM-L6-v2 (6 layers, d = 384) instead of BERT-base
# (12 layers, d = 768), so "the last two layers" are layers 4 and 5 and "per-embedding" means 384
# groups. STS-B is evaluated zero-shot (cosine of mean-pooled embeddings) in the PTQ tables and with
# a fine-tuned regression head for QAT; SST-2, MRPC and RTE with heads fine-tuned on this CPU. The
# paper's problematic tasks MNLI and QNLI (and CoLA, QQP) are not available offline; its remaining
# problematic tasks, STS-B and RTE, are. Calibration applies each quantizer's range to FP
# activations (the authors' code calibrates with the upstream quantizers switched on); the 2-D MSE
# grid is a 1-D search of a shrink factor (chapter 1). AdaRound is not implemented. The quick profile
# uses one seed, 100 evaluation examples per task, STS-B alone for Tables 2, 4 and 5, and 10 QAT
# steps: its numbers are not comparable with the paper's.

# %% tags=["parameters"]
profile = "quick"
model = "all-MiniLM-L6-v2"
data_source = "local"
tasks = ["stsb", "sst2", "mrpc", "rte"]
problem_tasks = ["stsb"]
eval_limit = 100
seeds = [0]
weight_estimators = ["current_minmax", "mse"]
act_settings = [["current_minmax", 1, 1]]
perm_examples = 64
qat_tasks = ["sst2", "stsb"]
lowbit_tasks = ["sst2"]
qat_steps = 10
qat_batch_size = 16
qat_lr = 2e-5
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

from functools import partial

import matplotlib.pyplot as plt
import pandas as pd

from outlierbook import claims, compare, competence
from outlierbook.experiments import peg_rules as rules
from outlierbook.experiments import understanding as ux
from outlierbook.models.tasks import task_setup
from outlierbook.quant.calibrate import calibration_batches
from outlierbook.headline import headline_table, run_label
from outlierbook.memo import Memo
from outlierbook.results import Recorder, dumps, full_profile_verdicts



def paper_table(table: str, order=None):
    """One of the paper's tables (STS-B, MNLI, QNLI, RTE), rows in the paper's order, for display beside ours."""
    p = compare.load_paper("understanding", table)
    wide = p.pivot(index="setting", columns="metric", values="value").loc[list(dict.fromkeys(p.setting))]
    return wide.style.set_uuid(f"ch04_paper_{table.replace(' ', '')}").format("{:.2f}").set_caption(
        f"{table} of the paper (BERT-base), for context")


def result(prefix: str, current: pd.DataFrame):
    """This section's result: the stored full run's table in a quick build, else this run's (see chapter 0)."""
    return headline_table("04_understanding", profile, prefix, current, column_order=list(PAPER_NAME))


def show(prefix: str, current: pd.DataFrame, caption: str):
    return result(prefix, current).styled(f"ch04_{prefix}", caption)


rec = Recorder("04_understanding", profile, params=dict(
    model=model, tasks=tasks, problem_tasks=problem_tasks, eval_limit=eval_limit, seeds=seeds,
    weight_estimators=weight_estimators, act_settings=act_settings, perm_examples=perm_examples, qat_tasks=qat_tasks,
    lowbit_tasks=lowbit_tasks, qat_steps=qat_steps, qat_batch_size=qat_batch_size, qat_lr=qat_lr, seed=seed))
PAPER_NAME = {"stsb": "STS-B", "sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE"}
setups = {t: task_setup(t, profile, model=model, eval_limit=eval_limit, data_source=data_source, seed=seed)
          for t in tasks}
fp = {t: s.score() for t, s in setups.items()}
rec.update({f"fp32/{t}": v for t, v in fp.items()})
# a full run keeps each finished experiment (one setting and seed, one QAT run) on disk, so a stopped
# run resumes; nbval re-runs the quick one
memo = Memo("04_understanding", profile, enabled=profile == "full",
            context=dict(model=model, data_source=data_source, seed=seed))

# %% [markdown]
# ## Table 1: weights or activations, with the range setting chosen per task
#
# The paper picks, per task, the best range estimators from a search space (its Appendix B.2):
# weights {min-max, MSE}; activations {current min-max, running min-max (momentum 0.9), MSE} with
# batch size and number of calibration batches from {1, 4, 16}; the best median W8A8 over five seeds
# wins. Our grid is a parameter of this chapter (the quick profile searches only the weight
# estimator). For the winning setting we read W8A8, activation-only W32A8 and weight-only W8A32
# off the same calibrated wrapper.

# %%
grid = ux.range_grid(weights=weight_estimators, acts=[tuple(a) for a in act_settings])
search = pd.concat([ux.range_search(setups[t], grid, seeds, memo=memo) for t in tasks], ignore_index=True)
rec.add_rows(search.assign(experiment="range_search"))
best = ux.best_setting(search).set_index("task")
table1 = best[["W8A8", "W32A8", "W8A32"]].T[tasks]
table1.loc["FP32"] = pd.Series(fp)
table1 = table1.loc[["FP32", "W8A8", "W32A8", "W8A32"]]
table1["average"] = table1.mean(axis=1)
rec.update({f"table1/{m}/{t}": v for m, row in table1.iterrows() for t, v in row.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table1.round(2).to_string())
print(best["setting"].to_string())

# %% [markdown]
# The result: the paper's Table 1 beside ours. In a quick build "ours" is the stored full run (all four
# tasks, every dev example, five seeds); the numbers printed above are this build's smoke test.

# %%
paper1 = compare.load_paper("understanding", "Table 1")
shown1 = result("table1", table1)
ours1 = shown1.table.drop(columns="average").reset_index(names="setting").melt(id_vars="setting", var_name="task")
ours1 = ours1.assign(metric=ours1.task.map(PAPER_NAME))
compare.styled(compare.compare(paper1[paper1.metric.isin(ours1.metric)], ours1, tol=2.0, profile=shown1.profile),
               "ch04_table1", caption=shown1.caption("Table 1: BERT-base (paper) beside MiniLM (ours)"))

# %% [markdown]
# Compare the W8A32 and W32A8 rows with FP32: the claim check below tests whether, as in chapter 2
# and in the paper, weights are cheap to quantize and activations are not. The setting the search
# picks may differ between tasks; the paper's choices are in its Table 9.
#
# ## Table 2: leave one activation kind out
#
# All weights FP32, activations 8-bit with current min-max on one sequence; one kind of activation
# quantizer at a time stays FP32. The kind whose exemption recovers the most is the culprit.

# %%
loo = pd.concat([ux.leave_one_out(setups[t], seeds, memo=memo) for t in problem_tasks], ignore_index=True)
rec.add_rows(loo.assign(experiment="leave_one_out"))
table2 = loo.pivot(index="quantized activations", columns="task", values="value")
table2 = table2.loc[list(dict.fromkeys(loo["quantized activations"]))][problem_tasks]
table2.loc["none (FP32 model)"] = pd.Series({t: fp[t] for t in problem_tasks})
rec.update({f"table2/{k}/{t}": v for k, row in table2.iterrows() for t, v in row.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table2.round(2).to_string())

# %%
shown2 = result("table2", table2)
shown_recovery = (shown2.table.drop(index=["none (FP32 model)", "all"]) - shown2.table.loc["all"]).mean(axis=1)
fig, ax = plt.subplots(figsize=(7, 3))
shown_recovery.sort_values().plot.barh(ax=ax, color="C0")
ax.set(xlabel="recovery over 'all quantized' (points, mean over tasks)", ylabel="",
       title=f"Leave-one-out, W32A8 (Table 2 analogue; {'full run' if shown2.profile == 'full' else 'smoke test'})")
plt.show()

# %%
display(shown2.styled("ch04_table2", "Table 2 (ours): leave one activation kind out, W32A8"))
paper_table("Table 2")

# %% [markdown]
# ## Mixed-precision PTQ (Table 4)
#
# Keep the culprits at 16 bits, everything else at W8A8: the residual sum after the FFN (*), then
# also the FFN's input and output (†), then the model's final output (‡: the pooler and logits of a
# classifier; for zero-shot STS-B the last LayerNorm, whose mean is the sentence embedding). The
# paper used an MSE range for the output in ‡; we keep min-max. The last columns count the
# activation quantizers that are 16-bit — the paper keeps 36 of BERT-base's 161 (22 %).

# %%
mp = pd.concat([ux.mixed_precision(setups[t], seeds, memo=memo) for t in problem_tasks], ignore_index=True)
rec.add_rows(mp.assign(experiment="mixed_precision"))
table4 = mp.pivot(index="config", columns="task", values="value").loc[list(dict.fromkeys(mp.config))][problem_tasks]
table4.loc["FP32"] = pd.Series({t: fp[t] for t in problem_tasks})
share = mp.groupby("config", sort=False)[["16-bit quantizers", "activation quantizers"]].first()
table4 = table4.join(share.astype("Int64"))
rec.update({f"table4/{k}/{t}": float(v) for k, row in table4.iterrows() for t, v in row.items() if pd.notna(v)})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table4.round(2).to_string())

# %%
display(show("table4", table4, "Table 4 (ours): mixed precision"))
paper_table("Table 4")

# %% [markdown]
# ## Per-embedding-group PTQ (Table 5)
#
# Instead of one range per tensor, split the $d$ embedding dimensions into $K$ groups, each with its
# own scale $s_k$ and zero point $z_k$. For a Linear layer reading a PEG-quantized input
# $\hat x = \sum_k P_k^\top \hat x_{G_k}$ (groups $G_k$ of the dimensions),
#
# $$W\hat x = \sum_{k=1}^K W_{:,G_k}\,\hat x_{G_k} = \sum_{k=1}^K s_k\, W_{:,G_k}\,\big(x^{\mathbb Z}_{G_k} - z_k\big),$$
#
# so the layer becomes $K$ smaller matrix products whose inputs are each quantized **per tensor**,
# followed by a sum — the paper's argument that PEG runs on hardware with only per-tensor support.
# `methods.peg.grouped_linear_forward` is that rewrite; a unit test checks it equals the grouped
# quantizer followed by the original Linear. With $K = d$ the groups are single dimensions
# (per-embedding). Because the outliers sit in a few dimensions, which group they land in matters:
# the **range-based permutation** sorts dimensions by their range on FP calibration data (here
# `perm_examples` training examples) before grouping, so the outlier dimensions share a group and
# the others get tight ranges. The permutation is computed once per quantizer and applied inside the
# quantizer, $x \mapsto P^\top Q(Px)$. As in the paper, "only FFN" means the FFN's input, output and
# residual sum.

# %%
peg = []
for t in problem_tasks:
    s = setups[t]
    perm_batches = calibration_batches(s.calibration, s.tokenizer, n=perm_examples, batch_size=32, seed=seed)
    peg.append(ux.peg_table(s, seeds, perm_batches, memo=memo))
peg = pd.concat(peg, ignore_index=True)
rec.add_rows(peg.assign(experiment="peg"))
table5 = peg.pivot(index="config", columns="task", values="value").loc[list(dict.fromkeys(peg.config))][problem_tasks]
table5.loc["FP32"] = pd.Series({t: fp[t] for t in problem_tasks})
rec.update({f"table5/{k}/{t}": v for k, row in table5.iterrows() for t, v in row.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table5.round(2).to_string())

# %%
display(show("table5", table5, "Table 5 (ours): per-embedding-group PTQ"))
paper_table("Table 5")

# %% [markdown]
# ## Quantization-aware training (Table 6)
#
# W8A8 QAT: initialise every range by PTQ (current min-max on one batch of 16 training examples,
# as the authors' QAT recipe), make scales and zero points learnable, and fine-tune weights and
# ranges together through the straight-through estimator with the book's training loop
# (Accelerate, AdamW, linear warm-up over 10 % of the steps then linear decay). STS-B uses a
# regression head fine-tuned on its training pairs, so its FP32 reference is that head's score,
# printed beside it. The paper searches learning rate, batch size, epochs and dropout per task; we
# use one setting.

# %%
qat_setups = {t: (task_setup("stsb", profile, model=model, eval_limit=eval_limit, data_source=data_source, seed=seed,
                             stsb_head=True) if t == "stsb" else setups[t]) for t in set(qat_tasks) | set(lowbit_tasks)}
qat_fp = {t: s.score() for t, s in qat_setups.items()}
qat8 = pd.DataFrame([ux.qat_run(qat_setups[t], 8, 8, steps=qat_steps, batch_size=qat_batch_size, lr=qat_lr, seed=seed,
                             memo=memo) for t in qat_tasks]).assign(fp32=lambda d: d.task.map(qat_fp))
rec.add_rows(qat8.assign(experiment="qat_w8a8"))
rec.update({f"qat_w8a8/{r.task}/{k}": getattr(r, k) for r in qat8.itertuples() for k in ("fp32", "ptq", "value")})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(qat8[["task", "fp32", "ptq", "value"]].round(2).to_string(index=False))

# %%
qat8_table = qat8.set_index("task")[["fp32", "ptq", "value"]]
show("qat_w8a8", qat8_table, "W8A8 QAT (ours): FP32, the PTQ start, after QAT")

# %% [markdown]
# ## Low-bit weights and token embeddings (Table 7)
#
# Below 8 bits the paper always uses the MSE range for weights. W6A32 and W4A32 PTQ quantize the
# weights only; QAT then trains W4A32, W4A8 and W4A8 with **2-bit word embeddings**. The memory
# reduction is computed from this model's parameter counts, two ways: over the quantized tensors
# only (the paper's definition, which makes 4-bit exactly ×8) and over the whole model with biases
# and LayerNorm parameters kept in FP32. How much 2-bit embeddings add depends on the word-embedding
# table's share of the parameters, which the cell after the table computes for MiniLM and for
# BERT-base (from its configuration; no weights needed).

# %%
LOWBIT = {"W6A32 PTQ": (6, None, None), "W4A32 PTQ": (4, None, None), "W4A32 QAT": (4, None, None),
          "W4A8 QAT": (4, 8, None), "W4A8, 2-bit embd. QAT": (4, 8, 2)}
rows7 = []
for t in lowbit_tasks:
    s = qat_setups[t]
    rows7.append({"task": t, "method": "FP32", "value": qat_fp[t]})
    for label, (wb, ab, eb) in LOWBIT.items():
        if label.endswith("PTQ"):
            value = ux.weight_ptq(s, wb, seeds, memo=memo)
        else:
            value = ux.qat_run(s, wb, ab, config=ux.low_bit_config(eb), steps=qat_steps, batch_size=qat_batch_size,
                               lr=qat_lr, seed=seed, memo=memo)["value"]
        rows7.append({"task": t, "method": label, "value": value})
table7 = pd.DataFrame(rows7).pivot(index="method", columns="task", values="value").loc[["FP32", *LOWBIT]][lowbit_tasks]
memory = {label: ux.memory_reduction(setups["sst2"].model, wb or 32, eb) for label, (wb, ab, eb) in
          {"FP32": (32, None, None), **LOWBIT}.items()}
table7["memory ×(weights only)"] = [memory[m]["weights only"] for m in table7.index]
table7["memory ×(whole model)"] = [memory[m]["whole model"] for m in table7.index]
rec.update({f"table7/{k}/{c}": v for k, row in table7.iterrows() for c, v in row.items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(table7.round(2).to_string())

# %%
show("table7", table7, "Table 7 (ours): low-bit weights and embeddings, and the memory they save")

# %% tags=["nbval-check-output"]
print(dumps({"word-embedding share of all parameters": {
    "MiniLM (ours)": round(ux.word_embedding_share(setups["sst2"].model), 3),
    "BERT-base (paper)": round(ux.word_embedding_share(ux.bert_base_skeleton()), 3)}}))

# %%
paper7 = compare.load_paper("understanding", "Table 7")
paper7[["setting", "metric", "value", "note"]].style.set_uuid("ch04_paper7").hide(axis="index").format(
    {"value": "{:.2f}"}).set_caption("Table 7 of the paper (BERT-base, GLUE average), for context")

# %% [markdown]
# ## The headline comparison (Table 6)
#
# FP32 | W8A8 PTQ | MP-PTQ (the ‡ setting) | PEG-PTQ (K = 6 with permutation, FFN only) | QAT, per task
# where we ran it, ours beside the paper's.

# %%
t1, t4, t5, q8 = (result(k, c).table for k, c in [("table1", table1), ("table4", table4), ("table5", table5),
                                                  ("qat_w8a8", qat8_table)])
head = pd.DataFrame({"FP32": t1.loc["FP32"].drop("average", errors="ignore")})
head["W8A8 PTQ"] = t1.loc["W8A8"]
head["MP-PTQ"] = t4.loc["MP-PTQ*†‡"] if "MP-PTQ*†‡" in t4.index else None
head["PEG-PTQ"] = t5.loc["6 + P (only FFN)"] if "6 + P (only FFN)" in t5.index else None
head["QAT"] = q8["value"]
head = head.rename(index=PAPER_NAME)
paper6 = compare.load_paper("understanding", "Table 6")
paper6 = paper6[paper6.metric.isin(head.index)].pivot(index="metric", columns="setting", values="value")
paper6 = paper6[[c for c in head.columns if c in paper6.columns]]  # the same column order on both sides
side = pd.concat({"paper (BERT-base)": paper6.reindex(head.index), "ours (MiniLM)": head}, axis=1)
side.style.set_uuid("ch04_table6").format("{:.2f}", na_rep="—").set_caption(result("table1", table1).caption(
    "Table 6, paper beside ours (our STS-B QAT uses the regression head; its FP32 is in the QAT table)"))

# %% [markdown]
# ## How far apart are the seeds?
#
# Each number in Tables 2, 4 and 5 is the median over calibration seeds, as in the paper. A difference
# between two rows is a finding only if it is larger than the spread over seeds, so here is that
# spread: per table and task, the largest standard deviation over seeds of any row (a run with one
# seed, like the quick profile, has none to show).

# %% tags=["nbval-check-output"]
seed_spread = pd.DataFrame({name: frame.groupby("task", sort=False)["std"].max()
                            for name, frame in {"Table 2": loo, "Table 4": mp, "Table 5": peg}.items()}).T
rec.update({f"seed_std_max/{k}/{t}": v for k, row in seed_spread.iterrows() for t, v in row.items() if pd.notna(v)})
print(f"{len(seeds)} calibration seed(s); largest std over seeds (points):")
print(seed_spread.round(2).to_string())

# %% [markdown]
# ## Claim checks
#
# Rules from the {doc}`claims ledger </book/claims>`; "average" is over the tasks each table ran.

# %%
state = competence.status(fp, {t: setups[t].eval_data.labels for t in tasks})


averaged = partial(competence.averages, state=state)
a1 = averaged(table1[tasks])
new, old = a1.verdicts(rules.peg1)
claims.check(rec, "PEG-1", ours=a1.shown(["FP32", "W8A8", "W32A8", "W8A32"]),
             paper={"GLUE FP32": 83.06, "W8A8": 71.03, "W32A8": 70.25, "W8A32": 83.23}, holds=new, old_rule=old,
             note=f"best range setting per task; median of {len(seeds)} seed(s); average over {', '.join(a1.tasks)}; "
                  f"{competence.note(state, a1)}")

a2 = averaged(table2[problem_tasks])
recovery = rules.recoveries(a2.new if a2.new is not None else a2.old)
new, old = a2.verdicts(rules.peg2)
claims.check(rec, "PEG-2", ours={"largest recovery": recovery.idxmax(), "points": round(float(recovery.max()), 2)},
             paper="all except residual after FFN: STS-B 62.64 → 81.57, RTE 48.74 → 67.15", holds=new, old_rule=old,
             note=f"mean over {', '.join(a2.tasks)}; {competence.note(state, a2)}")

a4 = averaged(table4.loc[["FP32", rules.MIXED_PRECISION], problem_tasks])
new, old = a4.verdicts(rules.peg4)
claims.check(rec, "PEG-4", ours=a4.shown(["FP32", rules.MIXED_PRECISION]),
             paper="STS-B 88.00 vs 89.09; RTE 68.95 vs 70.40", holds=new, old_rule=old,
             note=f"mean over {', '.join(a4.tasks)}; {competence.note(state, a4)}")

# PEG-5 changed on 2026-11-29: the reference is per-embedding PTQ with ranges from 16 sequences; the old
# rule (K=6+P recovers >= 90 % of the W8A8 gap) is evaluated beside it on the same numbers.
reference = ux.per_embedding_reference(setups[problem_tasks[0]].model.config.hidden_size)
a5 = averaged(table5[problem_tasks])
claims.check(rec, "PEG-5", ours=a5.shown([rules.PEG6_K, reference, reference.split(",")[0] + ")",
                                          rules.PER_TENSOR, rules.PEG3_K, rules.PEG3_BARE]),
             paper="K=6+P ≈ per-embedding (STS-B 87.92 vs 88.26); K=3+P 87.92 > K=3 85.96",
             holds=None if a5.new is None else rules.peg5(a5.new, reference), old_rule=rules.peg5_old(a5.old),
             note=f"mean over {', '.join(a5.tasks)}; {competence.note(state, a5)}")

sst2_qat = qat8.set_index("task").loc["sst2"] if "sst2" in qat_tasks else None
sst2_ok = "sst2" in state and state["sst2"]["competent"]
claims.check(rec, "PEG-6", ours=None if sst2_qat is None else {"FP32": sst2_qat.fp32, "QAT W8A8": sst2_qat.value},
             paper="SST-2 93.00 vs FP32 93.12",
             holds=(None if sst2_qat is None or not sst2_ok else bool(sst2_qat.fp32 - sst2_qat.value <= 1.0)),
             note=f"{qat_steps if sst2_qat is None else int(sst2_qat.steps)} QAT steps of {qat_batch_size}"
                  + ("" if sst2_ok else "; SST-2's FP model not competent"))

a7 = averaged(table7[lowbit_tasks])
new, old = a7.verdicts(rules.peg7)
_ = claims.check(rec, "PEG-7", ours=a7.shown(["FP32", "W4A8 QAT", "W4A8, 2-bit embd. QAT"]),
                 paper="GLUE: W4A8 QAT 82.64, 2-bit embd. 82.29, FP32 83.06", holds=new, old_rule=old,
                 note=f"mean over {', '.join(a7.tasks)}; {competence.note(state, a7)}; reference for the 2-bit embeddings: W4A8 QAT, "
                      "whose embeddings are 4-bit like all its weights")

# %% tags=["nbval-check-output"]
print(dumps({c["id"]: c["holds"] for c in rec.claims}))

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ## Reading the results
#
# The claim table says which of the paper's findings carry over to a 6-layer sentence encoder.
# Two differences of scale matter when one does not. MiniLM's FFN residual sums carry outliers,
# but they are milder than BERT-base's (chapter 3), so per-tensor W8A8 loses less and there is less
# for mixed precision or PEG to recover — with a small gap, one evaluation example moves the
# "share recovered" a lot. And the QAT budget is small: the stored full run trained 300 steps of 32
# (a seventh of an SST-2 epoch); the full profile now trains one epoch of each task's training data, still
# one setting rather than the paper's 3–6 epochs with a hyper-parameter search, and PEG-6/7 change when it
# is run again. The full profile (all four tasks in every table, five seeds, a larger range-setting grid,
# all dev examples, one QAT epoch at batch 32) regenerates with
#
# ```bash
# .venv/bin/python -m outlierbook run 04_understanding --profile full
# ```

# %% [markdown]
# ### The full profile's verdicts
#
# Each section above shows the full run's table (stored in `results/04_understanding/full/`) as its
# result, after this build's smoke-test numbers.

# %% [markdown]
# One thing to look for in Table 5: the per-embedding rows ($K = d$). The activation ranges come from
# **one unpadded sequence**, as in the paper and its code, so per-embedding quantization gives each of
# the $d$ dimensions a range from that sequence's few tokens alone, while a group of $d/K$ dimensions
# pools $d/K$ times more values. Where a per-embedding row falls below per-tensor, the likely reason is
# that evaluation tokens fall outside those narrow per-dimension ranges and are clipped. The row
# "$d$ (=per-embd., 16 seq.)" tests it: the same quantizers with ranges from one batch of 16 sequences.
# It is also PEG-5's reference since the ledger change of 2026-11-29 ("K = 6 with permutation is close
# to per-embedding quantization" needs a per-embedding row whose every dimension has a range); the old
# rule's verdict is recorded beside the new one. A full run stored before that change lacks the row,
# and the scorecard shows its PEG-5 verdict as "re-run pending". The claims, checked on the full run:

# %% tags=["nbval-check-output"]
print(full_profile_verdicts("04_understanding", profile))

# %% [markdown]
# ## Exercises
#
# 1. PEG with $K=3$ and no permutation: which group holds each of chapter 3's outlier dimensions,
#    and why does that make the permutation matter at small $K$ but not at $K=d$?
# 2. Write the mixed-precision config that keeps only the FFN residual sums of the **last two**
#    layers at 16 bits. What share of the quantizers is that, and how does it compare with Table 2's
#    last row?
# 3. Verify the memory column by hand: count the Linear and embedding parameters of MiniLM and
#    compute the ratio for 4-bit weights and 2-bit word embeddings.
#
# ```{admonition} Solution 1
# :class: dropdown
# Contiguous groups of 128 dimensions: dimension $j$ lands in group $\lfloor j/128\rfloor$. The outlier
# dimensions are spread over the groups, so *every* group's range is stretched by one of them and
# the permutation, which gathers them into the last group, frees the other two. At $K=d$ every
# dimension has its own range already, so a permutation changes nothing.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# `{"layer4.ffn.residual": 16, "layer5.ffn.residual": 16}` — pass it as `config` to the chapter's recipe,
# `quantize(setup.model, ux.recipe(config=cfg), batches)` (or run
# `ux.configured_ptq(setup, seeds, {"last two": cfg})`). It is 2 of the model's activation
# quantizers (compare with the counts in Table 4). Table 2's last row keeps the same two nodes in
# FP32 rather than 16 bits; at 16 bits the difference is negligible.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# `sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding)))` gives
# the quantized count $N$ and the word-embedding table $N_e$ of it; the ratio is
# $32N / (4(N-N_e) + 2N_e)$, which `ux.memory_reduction(model, 4, 2)` returns as "weights only".
# ```
