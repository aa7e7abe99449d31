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
# # From simulation to silicon
#
# Every number so far was *simulated*: FP32 tensors rounded onto an integer grid and multiplied in
# floating point. A reader who wants to deploy asks what the papers leave open on a CPU: do the ranges
# that the book's recipes find survive real integer kernels, and what do they buy in size and speed?
# This chapter exports calibrated recipes to ONNX Runtime, checks node by node that the integer model
# computes what the book simulated, and sets them beside the toolkits' own INT8: PyTorch's and ONNX
# Runtime's dynamic quantization, and ONNX Runtime's static quantization with its own calibration.

# %% tags=["parameters"]
profile = "quick"
model = "all-MiniLM-L6-v2"
data_source = "local"
tasks = ["stsb", "sst2"]
eval_limit = 100
n_calib = 64
twc_max_candidates = 4
latency_rounds = 3
latency_threads = [2]
seed = 0

# %%
from outlierbook.nbsetup import setup_notebook

settings = setup_notebook(seed=seed)

import tempfile

import matplotlib.pyplot as plt
import pandas as pd

from outlierbook import competence, deploy
from outlierbook.benchmarks.int8 import REFERENCE, inputs_of, latency_ratios, peak_memory_mb
from outlierbook.data.glue import load_task
from outlierbook.deploy.agreement import node_agreement, output_agreement, precision_agreement
from outlierbook.deploy.runtime import at_threads
from outlierbook.errors import ConfigError
from outlierbook.experiments import int8 as ix
from outlierbook.headline import Headline, headline_table, run_label
from outlierbook.models.tasks import task_setup
from outlierbook.quant.calibrate import calibration_batches
from outlierbook.recipe import Recipe, quantize
from outlierbook.results import Recorder, dumps

rec = Recorder("09_int8", profile, params=dict(model=model, tasks=tasks, eval_limit=eval_limit, n_calib=n_calib,
                                             twc_max_candidates=twc_max_candidates, latency_rounds=latency_rounds,
                                             latency_threads=latency_threads, seed=seed))
setups = {t: task_setup(t, profile, model=model, eval_limit=eval_limit, data_source=data_source, seed=seed)
          for t in tasks}
batches = {t: calibration_batches(s.calibration, s.tokenizer, n=n_calib, batch_size=32, seed=seed)
           for t, s in setups.items()}
folder = tempfile.mkdtemp(prefix="outlierbook-int8-")

# %% [markdown]
# ## What an integer kernel computes
#
# A Linear layer reads a quantized activation row $\hat x = s_x (q_x - z_x)$ (one scale $s_x$ and zero
# point $z_x$ for the whole tensor) and a weight quantized per output channel, $\hat W_{j\cdot} = s_{W,j}\, q_{W,j\cdot}$.
# Its output factorises into one integer sum and one rescaling:
#
# $$y_j = \sum_k \hat x_k \hat W_{jk} = s_x\, s_{W,j} \Big(\underbrace{\sum_k q_{x,k}\, q_{W,jk}}_{\text{int32}}
# \;-\; z_x \underbrace{\sum_k q_{W,jk}}_{\text{per channel, once}}\Big).$$
#
# The sum runs in 8-bit multiplies and exact 32-bit accumulation; only the final product with
# $s_x s_{W,j}$ is floating point. The factorisation needs $s_x$ to be the same for every $k$: one
# activation scale per row. Where each method fits:
#
# - **Gamma Migration** and **SmoothQuant** are transforms of the FP model: the exported graph is the
#   migrated model, with nothing new to run.
# - **Token-Wise Clipping**, percentiles, MSE: they only choose $s_x$ and $z_x$, the constants of
#   the QuantizeLinear nodes.
# - **PEG** gives the columns of one row $K$ different scales $s_g$ (one per group $G_g$), so the sum
#   splits into $K$ integer sums, each rescaled:
#   $y_j = b_j + \sum_{g=1}^{K} s_g\, s_{W,j} \sum_{k \in G_g} (q_{x,k} - z_g)\, q_{W,jk}$.
#   A Linear that reads a PEG node becomes $K$ integer kernels on column slices (below).
# - **Softmax, GELU, LayerNorm** have no integer kernel here: the runtime dequantizes, computes in FP32
#   and quantizes again at the next node.

# %% [markdown]
# ## Exporting a recipe
#
# `deploy.export(qm, batch, path)` traces the calibrated model with every quantizer replaced by a frozen
# quantize-dequantize pair carrying *its* scale and zero point (`deploy/qdq.py`), writes ONNX, and stores
# each weight as its 8-bit integers. ONNX Runtime's graph optimiser then fuses each
# dequantize–multiply pattern into an integer kernel. We count what it fused, and what the file holds.

# %%
t0 = "sst2" if "sst2" in tasks else tasks[-1]  # the task the export, agreement and timing sections use
s0 = setups[t0]
width = s0.model.config.hidden_size
qm = quantize(s0.model, ix.recipes(width, twc_max_candidates)["book MinMax"], batches[t0])
path = deploy.export(qm, batches[t0][0], f"{folder}/{t0}_minmax.onnx")
kernels = deploy.integer_kernels(path)
products = {k: kernels[k] for k in deploy.onnx_export.INTEGER_OPS if kernels[k]}
float_products = {k: kernels[k] for k in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm") if kernels[k]}
stored = deploy.initializer_bytes(path)
anat_layers = len(qm.parts.layers)
export_facts = {"integer_products": products, "float_products": float_products,
                "expected_integer_products": 8 * anat_layers,
                "stored_MB": {k: v / 1e6 for k, v in stored.items()}}
rec.update({"export/integer_products": sum(products.values()), "export/expected": 8 * anat_layers})

# %% tags=["nbval-check-output"]
print(dumps(export_facts))

# %% [markdown]
# Eight products per layer run in integers (query, key, value, attention output, both FFN Linears, and
# the two attention products $QK^\top$ and $PV$); the float products left belong to the pooler and the
# classifier head, which the FasterTransformer placement does not quantize. The file holds the weights as one byte
# each (`UINT8`); FP32 remains only for biases, LayerNorm parameters and the head.
#
# Integer kernels refuse what they cannot run, before any export work: a 6-bit recipe, and weights with
# ranges per group of input columns (no integer kernel rescales a weight row piece by piece):

# %%
refusals = {}
for label, recipe in {"W6A6": Recipe(**{**ix.BASE, "bits": "W6A6"}),
                      "weights per input group": Recipe(**ix.BASE, overrides={"weight:*": {"axis": 1, "groups": 4}})
                      }.items():
    try:
        deploy.export(quantize(s0.model, recipe, batches[t0][:1]), batches[t0][0], f"{folder}/refused.onnx")
        refusals[label] = None
    except ConfigError as err:
        refusals[label] = str(err)
rec.update({f"export/refused/{k}": v is not None for k, v in refusals.items()})

# %% tags=["nbval-check-output"]
for label, message in refusals.items():
    print(f"{label}: {message}")

# %% [markdown]
# ### PEG as grouped integer products
#
# A PEG node's $K$ scales cannot share one kernel, but each group can have its own. The export writes the
# PEG node as a per-channel quantize–dequantize pair (each channel carries its group's scale and zero
# point, the grouped quantizer itself, which the residual addition and the LayerNorm read in floating
# point) and replaces each Linear that reads it, for the export only, by `deploy.grouped.GroupedLinear`:
# gather the columns of group $G_g$, quantize them per tensor with $(s_g, z_g)$ (values already on that
# grid come back unchanged), multiply by the same columns of the integer weight, and add the $K$ results.
# With PEG on both LayerNorm outputs (the FFN's input and the next layer's query, key and value), a layer
# has $4K + 4$ integer products instead of 8 (the first layer's query, key and value read the embedding
# LayerNorm, which stays per tensor).

# %%
probe = batches[t0][1]
peg_name = next(n for n in ix.recipes(width) if n.startswith("book PEG"))
qm_peg = quantize(s0.model, ix.recipes(width, twc_max_candidates)[peg_name], batches[t0])
peg_path = deploy.export(qm_peg, batches[t0][0], f"{folder}/{t0}_peg.onnx")
peg_kernels = deploy.integer_kernels(peg_path)
k_groups = qm_peg.node("layer0.attention.ln").quantizer.granularity.groups
peg_facts = {"recipe": peg_name,
             "integer_products": sum(peg_kernels[k] for k in deploy.onnx_export.INTEGER_OPS),
             "expected": (3 + 1 + k_groups + 1 + 2) + (anat_layers - 1) * (3 * k_groups + 1 + k_groups + 1 + 2),
             "float_products": sum(peg_kernels[k] for k in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm"))}
peg_agreement = node_agreement(qm_peg, peg_path, probe)
peg_facts["max_steps_any_node"] = int(peg_agreement["max steps"].max())
peg_facts["codes_differing_layer0"] = round(float(peg_agreement.loc[[n for n in peg_agreement.index
                                                                     if n.startswith("layer0.")], "differing"].max()), 4)
rec.update({f"export_peg/{k}": v for k, v in peg_facts.items() if k != "recipe"})

# %% tags=["nbval-check-output"]
print(dumps(peg_facts))

# %% [markdown]
# The count of integer products is the one derived above, and the float products left are the pooler and
# the classifier, as for MinMax. The rewrite itself is exact (a unit test finds every code of a small PEG
# model equal to its simulation); in the first layer here, codes differ only where a value lies within float
# rounding of a grid boundary, now also because $K$ partial products are added in floating point. What
# differs deeper is the rounding-order effect of the next section. The split is not free: each group pays a
# gather and a kernel of its own, which the latency table below shows.

# %% [markdown]
# ## Does the integer model compute what we simulated?
#
# Each quantized node has an integer code in both worlds: the runtime's QuantizeLinear output and
# the simulated $q = \hat x/s + z$. We compare them node by node on one batch (real tokens only).
# Integer accumulation is exact where FP32 sums round, so a value within rounding of a grid boundary
# can land one step away; every later node inherits the difference. To read the numbers, we also
# compare the simulated model with *itself* computed in float64: the same ranges and grid, only another
# arithmetic.

# %%
vs_integer = node_agreement(qm, path, probe)
vs_float64 = precision_agreement(qm, probe)
by_layer = pd.DataFrame({
    "integer vs simulated: codes differing": vs_integer["differing"],
    "float64 vs float32 simulation": vs_float64["differing"],
    "integer: max steps": vs_integer["max steps"],
}).loc[[n for n in vs_integer.index if n.endswith(("ffn.ln", "embeddings.ln")) or n.startswith("layer0.")]]
rec.update({f"agreement/{n}": v for n, v in vs_integer["differing"].items()})
rec.update({f"agreement_steps/{n}": v for n, v in vs_integer["max steps"].items()})
rec.update({f"agreement_float64/{n}": v for n, v in vs_float64["differing"].items()})
first = next((n for n, v in vs_integer["differing"].items() if v > 0), None)
outputs = output_agreement(qm, path, probe)
rec.update({f"output_agreement/{k}": v for k, v in outputs.items()})

# %% tags=["nbval-check-output"]
print(by_layer.to_string(float_format=lambda v: f"{v:.2e}"))
print("first node that differs:", first)
print("model output (logits), integer vs simulated:", dumps({k: float(f"{v:.3g}") for k, v in outputs.items()}))

# %% [markdown]
# The first layer agrees almost code for code. Differences then grow with depth, but the float64
# column grows faster: the integer model is *closer* to the FP32 simulation than the simulation
# is to itself in another precision. Agreement code by code is therefore not the test of a correct
# export; the task metric is. A wrong scale, by contrast, shows at its own node at once (a unit test
# checks that). The last line compares what a user sees, the logits: their largest and mean difference,
# their scale, and the share of examples the two models give the same class.
#
# ### A trap on this CPU
#
# This machine's CPU has AVX2 but no VNNI. Its kernels for unsigned activations times *signed* weights
# add pairs of 8-bit products in saturating 16-bit arithmetic: $255\cdot 127 + 255\cdot 127 > 2^{15}-1$.
# The book stores signed weights as `uint8` with zero point 128 — the same values, $(q+128)-128 = q$ —
# which keeps the runtime on its exact unsigned kernels. The same recipe exported both ways, against
# its simulation (metric of the simulation: printed first); the first layer is where no inherited
# difference can hide a kernel's own:

# %%
damage = ix.signed_weights_damage(s0, qm, batches[t0][0], probe, folder)
simulated_metric = s0.score(qm)
rec.update({f"signed_weights/{w}/{k}": v for w, row in damage.iterrows() for k, v in row.items()})

# %% tags=["nbval-check-output"]
print(f"simulated {s0.metric}: {simulated_metric:.2f}")
print(damage.to_string(float_format=lambda v: f"{v:.3g}"))

# %% [markdown]
# Saturation needs an activation near the top of its range to meet a *pair* of large weights, so how
# much the task metric moves depends on the model; the first layer's codes show the kernel's error
# where nothing upstream can explain it.

# %% [markdown]
# ## The book's recipes against the toolkits' INT8
#
# For each task: FP32 in PyTorch and in ONNX Runtime; PyTorch's dynamic INT8 (int8 Linear weights,
# activation ranges measured per batch at run time; the embedding table stays FP32); ONNX Runtime's
# dynamic INT8; its static INT8 with its own MinMax calibration on the same calibration batches; and
# four book recipes (MinMax, Gamma Migration, Gamma Migration + Token-Wise Clipping, and PEG with
# $K = 6$ groups and its permutation), each beside its own simulation. The toolkits' quantizers are limited
# to the inputs of matrix products, the placement the book uses (left at its default, ONNX Runtime also
# quantizes the addition that applies the attention mask, and the model falls to chance). The table the
# chapter reads is the full run's (all four tasks, every dev example, 256 calibration examples, Token-Wise
# Clipping's whole grid); the quick build prints its own two-task sample first, as a smoke test.

# %%
tables, variants = {}, {}
for t, s in setups.items():
    variants[t], simulated = ix.variants_for(s, batches[t], folder, twc_max_candidates)
    tables[t] = ix.metric_table(s, variants[t], simulated)
metric = pd.DataFrame({t: tab["metric"] for t, tab in tables.items()})
if len(tasks) > 1:
    metric["average"] = metric.mean(axis=1)
sizes = tables[tasks[0]][["size vs FP32", "integer products"]]
rec.update({f"metric/{v}/{c}": x for v, row in metric.iterrows() for c, x in row.items()})
rec.update({f"size/{v}": x for v, x in sizes["size vs FP32"].dropna().items()})

# %% tags=["nbval-check-output"]
print(run_label(profile))
print(metric.round(2).to_string())
print()
print(sizes.dropna().round(3).to_string())

# %%
shown = headline_table("09_int8", profile, "metric", metric)
display(shown.styled("ch09_metric", "Task metric of each deployable variant and of each recipe's simulation"))

# %% [markdown]
# ## Latency, measured side by side
#
# Every variant runs the same batch in interleaved rounds and each median is divided by the median of
# FP32 ONNX Runtime from the same rounds (`benchmarks/int8.py`; `python -m outlierbook.benchmarks.int8`
# runs it alone with more rounds). Timings depend on the machine and its load, so they are printed
# here but never checked.

# %%
shapes = [(1, 128), (32, 128)]
latency = {}
for threads in latency_threads:
    running = at_threads(variants[t0], threads)
    for b, n in shapes:
        latency[(threads, f"{b}x{n}")] = latency_ratios(running, inputs_of(s0.tokenizer, b, n), latency_rounds)
latency = pd.DataFrame(latency)
latency.columns = [f"{th} thread(s), {shape}" for th, shape in latency.columns]
rec.update({f"latency/{c}/{v}": x for c in latency.columns for v, x in latency[c].items()})
print(f"latency relative to {REFERENCE} (median of {latency_rounds} rounds):")
print(latency.round(2).to_string())

# %% [markdown]
# Memory is measured the same way, side by side: each variant is loaded into a fresh process that runs one
# batch of 32 × 128 tokens, and we read how far its peak resident set grew over the same process after its
# imports (`benchmarks.int8.peak_memory_mb`). Like the timings, these depend on the machine and are printed,
# not checked.

# %%
peaks = pd.Series({v: peak_memory_mb(variants[t0][v], folder, latency_threads[-1], 32, 128) for v in variants[t0]})
memory = pd.DataFrame({"peak memory (MiB)": peaks, "peak memory vs FP32": peaks / peaks[REFERENCE],
                       "size vs FP32": sizes["size vs FP32"].reindex(peaks.index)})
rec.update({f"peak_memory/{v}": x for v, x in memory["peak memory vs FP32"].items()})
print(memory.round(2).to_string())

# %% [markdown]
# The full run's latencies (in a quick build that has one), and a scatter plot of each variant's latency
# at the largest shape against its metric on the same task, both from that run.

# %%
timed = headline_table("09_int8", profile, "latency", latency.T)
if timed.from_stored_run:
    display(Headline(timed.table.T, timed.profile, timed.source).styled(
        "ch09_latency", f"Latency relative to {REFERENCE}, median of interleaved rounds"))
last = max((c for c in timed.table.index if c.endswith("32x128")), key=lambda c: int(c.split()[0]))
fig, ax = plt.subplots(figsize=(7.5, 4.6))
for v in timed.table.columns:
    x, y = timed.table.loc[last, v], shown.table.loc[v, t0]
    ax.scatter(x, y, s=30)
    ax.annotate(v, (x, y), fontsize=9, xytext=(4, 3), textcoords="offset points")
ax.set(xlabel=f"latency / {REFERENCE} ({last})", ylabel=f"{t0} {s0.metric}",
       title=f"accuracy against latency\n({timed.source})")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The goals, as measured
#
# The issue that asked for this chapter set three goals; they are checked here, not tuned:
#
# 1. the best book recipe at least as good as ONNX Runtime's static and dynamic INT8 on the average of the
#    tasks (read from the table above: the full run's, in a quick build that has it). The issue averages
#    every task; the ledger's precondition would drop a task whose FP model is not competent (RTE on this
#    CPU's budget), so that average is given beside it;
# 2. a file at most 0.3× the FP32 file, and latency at most 0.6× FP32 ONNX Runtime at batch 32 × 128 on two
#    threads (printed below the checked cell, since it is a timing);
# 3. the integer model's output within one quantization step of the simulated one at the last quantized
#    node (from the node-by-node comparison of the MinMax export above, beside the same count for the
#    simulation against itself in float64).

# %%
table = shown.table
task_columns = [c for c in table.columns if c != "average"]
labels = {t: (load_task(t, "dev", source=data_source) if shown.from_stored_run else setups[t].eval_data).labels
          for t in task_columns}
state = competence.status({t: table.loc["PyTorch FP32", t] for t in task_columns}, labels)
goals = {"tables_from": "full run" if shown.from_stored_run or profile == "full" else "this run (quick)",
         **ix.goals(table, sizes, state, task_columns)}
last_node = vs_integer.index[-1]
goals.update({
    "last_node": last_node,
    "last_node_max_steps_integer_vs_simulated": int(vs_integer.loc[last_node, "max steps"]),
    "last_node_max_steps_float64_vs_float32": int(vs_float64.loc[last_node, "max steps"]),
    "integer_output_within_one_step": bool(vs_integer.loc[last_node, "max steps"] <= 1),
})
best = goals["best_recipe"]
rec.update({f"goal/{k}": v for k, v in goals.items() if isinstance(v, bool)})

# %% tags=["nbval-check-output"]
print(dumps(goals))

# %%
column = next((c for c in timed.table.index if c.endswith("32x128") and c.startswith("2 ")), None)
print("latency goal (<= 0.6 x FP32 ONNX Runtime at 32 x 128, 2 threads),", timed.source + ":",
      "not measured" if column is None else f"{timed.table.loc[column, best]:.2f} x for {best}")

# %%
rec.save(extra_run_info={"settings": settings})
print("results written for", rec.chapter, rec.profile)

# %% [markdown]
# ## What held, what did not
#
# Read against the full run (the checked cell says which run the tables come from):
#
# - **Accuracy (goal 1) holds as measured**, on the four-task average and on the competent tasks alone:
#   the best book recipe is not below ONNX Runtime's static INT8 with its own calibration, nor its dynamic
#   INT8. The margins between the 8-bit variants are fractions of a point, a few examples of MRPC or RTE,
#   and this chapter calibrates with one seed; chapter 2's mean ± std over calibration subsets shows that
#   W8A8 moves by that much from one subset to the next. So the *ordering* of the INT8 variants is not a
#   finding; that every one of them stays close to FP32 on the competent tasks is.
# - **Size (goal 2, first half) holds**: one byte per weight, the embedding table included, where the
#   toolkits keep the embedding table in FP32.
# - **Latency (goal 2, second half) does not hold**: at batch 32 × 128 on two threads the book's recipes
#   run above 0.6× FP32 ONNX Runtime (the line above; one thread brings them closer). Every non-integer
#   operation (LayerNorm, GELU, softmax, the residual additions) still dequantizes, runs in FP32 and
#   quantizes again. PEG is the slowest variant: its $K$ products per Linear and their gathers cost more
#   than the integer arithmetic saves.
# - **Agreement (goal 3) does not hold** in the sense the issue set: at the last node the integer codes
#   are several steps away from the simulated ones. The simulation computed in float64 is at least as far
#   from the float32 one (same checked cell), so the distance is the order of arithmetic amplified
#   through six layers, not a wrong scale; the first layer, where nothing is inherited, agrees almost code
#   for code, and each recipe's integer metric sits beside its simulation's in the table.
#
# ## What this chapter shows, and what it does not
#
# The export carries the recipe's own ranges into integer kernels, PEG's per-group ranges included,
# through one integer product per group. The integer model computes the simulated function up to
# rounding-order differences no larger than those of any other change of arithmetic. The quick profile
# scores a sample of two tasks; the full profile runs all four on the complete dev sets, times 1 and 2
# threads with 20 rounds and measures peak memory in a fresh process per variant. Not measured here:
# other CPUs (in particular ones with VNNI, whose signed kernels do not saturate), larger batches, and a
# second calibration seed for the INT8 table.
#
# ## Exercises
#
# 1. Export your own recipe: Gamma Migration with SmoothQuant's smoothing on top at W8A8. Does the
#    integer model keep the simulated metric?
# 2. Leave one node kind in FP32 (e.g. `overrides={"ffn.gelu": "fp32"}`) and export. How many integer
#    products remain, and what does the node cost in latency and buy in accuracy?
# 3. Why can the probabilities of softmax be multiplied with $V$ in integers at all, when softmax itself
#    has no integer kernel here?
#
# ```{admonition} Solution 1
# :class: dropdown
# `r = ix.recipes(width)["book GM"].replace(transforms=(GammaMigration(), SmoothQuant()))`, then
# `qm = quantize(s0.model, r, batches[t0])`, `p = deploy.export(qm, batches[t0][0], f"{folder}/mine.onnx")` and
# `s0.score(deploy.runtime.RuntimeModel(deploy.session(p), qm.config, "logits"))` beside `s0.score(qm)`.
# Both transforms are edits of the FP weights, so the export has nothing new to run.
# ```
#
# ```{admonition} Solution 2
# :class: dropdown
# With `ffn.gelu` in FP32, the second FFN Linear reads a float input and the runtime keeps it as a float
# product (`deploy.integer_kernels(p)` counts one fewer integer product per layer). Time it with
# `latency_ratios` as above and compare the metric: the GELU output is the node the papers single out,
# so this is where an FP32 fallback buys the most accuracy.
# ```
#
# ```{admonition} Solution 3
# :class: dropdown
# The probabilities node quantizes softmax's *output* onto an unsigned grid on $[0, 1]$; the product
# $PV$ then reads two quantized tensors, exactly the pattern an integer kernel fuses (`QLinearMatMul`).
# Softmax itself runs in FP32 between a dequantize and that quantize.
# ```
