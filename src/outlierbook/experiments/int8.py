"""The "From simulation to silicon" chapter: the book's recipes as integer models, against the toolkits' own.

:func:`recipes` are the exported recipes (W8A8, the FasterTransformer placement, per-channel weights,
average min-max ranges, per tensor except PEG's per-group LayerNorm outputs); :func:`variants_for` builds every deployable variant of
one task's FP model; :func:`metric_table` scores them; :func:`signed_weights_damage` measures what the
saturating u8·s8 kernels of this CPU would cost.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..deploy.runtime import Variant, baselines, recipe_variant
from ..methods.peg import peg_config
from ..quant.granularity import group_counts
from ..recipe import GammaMigration, PegPermutation, Ranges, Recipe, TokenWiseClipping, quantize

BASE = dict(bits="W8A8", placement="os", act_estimator="avg_minmax")
PEG_KINDS = ("attention.ln", "ffn.ln")  # the two LayerNorm outputs: the inputs of the FFN and of the next attention


def recipes(width: int, twc_max_candidates: int | None = None) -> dict[str, Recipe]:
    """The exported recipes for a model of hidden width ``width`` (PEG's K is the divisor of it nearest 6)."""
    twc = TokenWiseClipping(max_candidates=twc_max_candidates)
    k = group_counts(width, (6,))[0]
    return {
        "book MinMax": Recipe(**BASE),
        "book GM": Recipe(**BASE, transforms=(GammaMigration(),)),
        "book GM + TWC": Recipe(**BASE, transforms=(GammaMigration(),), calibrators=(Ranges(), twc)),
        f"book PEG (K={k}+P)": Recipe(**BASE, overrides=peg_config(k, PEG_KINDS),
                                      calibrators=(PegPermutation(PEG_KINDS), Ranges())),
    }


def variants_for(setup, batches, folder, twc_max_candidates=None, threads: int = 1) -> tuple[dict, dict]:
    """``(variants, simulated)``: every deployable variant of the task's FP model, and the calibrated simulated
    model of each book recipe (the integer model's reference)."""
    folder = Path(folder) / setup.task
    variants = baselines(setup.model, batches, folder, threads)
    simulated = {}
    for name, recipe in recipes(setup.model.config.hidden_size, twc_max_candidates).items():
        simulated[name] = quantize(setup.model, recipe, batches)
        variants[name] = recipe_variant(simulated[name], batches[0], folder, name, threads)
    return variants, simulated


def metric_table(setup, variants: dict[str, Variant], simulated: dict) -> pd.DataFrame:
    """Task metric of every variant (and of each recipe's simulation), size against FP32 ONNX, integer products."""
    reference = variants["ORT FP32"].bytes
    rows = [{"variant": name, "metric": setup.score(v.model), "size vs FP32": v.bytes / reference,
             "integer products": v.integer_products} for name, v in variants.items()]
    rows += [{"variant": f"{name} (simulated)", "metric": setup.score(qm), "size vs FP32": None,
              "integer products": None} for name, qm in simulated.items()]
    return pd.DataFrame(rows).set_index("variant")


def signed_weights_damage(setup, qm, batch, probe, folder, threads: int = 1) -> pd.DataFrame:
    """The same recipe exported with signed (int8) weights, which this CPU multiplies by saturating 16-bit
    pair sums when it lacks VNNI, against the unsigned file: task metric, and on ``probe`` the largest share
    of integer codes that differ from the simulation at any node and the largest difference in steps."""
    from ..deploy import export
    from ..deploy.agreement import node_agreement
    from ..deploy.onnx_export import session
    from ..deploy.runtime import RuntimeModel, _output_name

    rows = {}
    for label, unsigned in (("uint8 weights", True), ("int8 weights", False)):
        path = export(qm, batch, Path(folder) / f"{setup.task}_{'u' if unsigned else 's'}8.onnx",
                      unsigned_weights=unsigned)
        agreement = node_agreement(qm, path, probe, threads)
        rows[label] = {"metric": setup.score(RuntimeModel(session(path, threads), qm.config, _output_name(qm))),
                       "first layer: codes differing": agreement.loc[[n for n in agreement.index
                                                                      if n.startswith("layer0.")], "differing"].max(),
                       "max steps, any node": int(agreement["max steps"].max())}
    return pd.DataFrame(rows).T


def goals(table: pd.DataFrame, sizes: pd.DataFrame, state: dict, tasks) -> dict:
    """The chapter's first two goals on a metric table (variants × tasks): the best book recipe (by the average
    over ``tasks``, the issue's rule) at least ONNX Runtime's static and dynamic INT8, and its file at most
    0.3× FP32. The same comparison over the competent tasks only (the ledger's precondition,
    :mod:`outlierbook.competence`) is given beside it, with the tasks it excluded."""
    from .. import competence

    book = [v for v in table.index if v.startswith("book") and not v.endswith("(simulated)")]
    a = competence.averages(table[list(tasks)], state)

    def against(average: pd.Series) -> dict:
        best = max(book, key=lambda v: average[v])
        return {"best_recipe": best,
                "best_recipe_at_least_ort_static": bool(average[best] >= average["ORT static INT8 (its MinMax)"]),
                "best_recipe_at_least_ort_dynamic": bool(average[best] >= average["ORT dynamic INT8"])}

    out = {"average_over": list(tasks), **against(a.old)}
    out["file_at_most_0.3_of_fp32"] = bool(sizes.loc[out["best_recipe"], "size vs FP32"] <= 0.3)
    out["competent_tasks"] = list(a.tasks)
    out["over_competent_tasks"] = against(a.new) if a.new is not None else "not testable here"
    out["precondition"] = competence.describe(state, tasks)
    return out
