r"""The "Composing the methods" chapter: every method of the four papers alone and together, as recipes.

All recipes share the FasterTransformer placement (``"os"``: the inputs of every matrix product),
symmetric per-channel weights, asymmetric per-tensor activations with average min-max ranges, and
embedding tables at the weight bit-width; they differ only in their transforms and calibrators:

==========================  ==================================================================
MinMax                      :class:`~outlierbook.recipe.Ranges` only
GM                          Gamma Migration, then ranges
SmoothQuant                 SmoothQuant's smoothing (α = 0.5, shortcut rescaled), then ranges
TWC                         ranges, then Token-Wise Clipping's coarse search
GM + TWC                    Outlier Suppression's framework
PEG                         K per-embedding groups with the range-based permutation on the LN outputs
GM + PEG                    PEG's permutation computed on the migrated tensors
GM + TWC + PEG              all three (TWC leaves PEG's per-group nodes alone)
clipped softmax             clipped softmax installed on the pretrained model (no retraining)
==========================  ==================================================================

K is the divisor of the width nearest to 6 (6 for the embedded model). NAQ is not a recipe but a way
of executing one: :func:`naq_on_top` runs it on the W8A8 MinMax model.
"""

from __future__ import annotations

import statistics

import pandas as pd
import torch
from tqdm import tqdm

from ..memo import Memo, kept
from ..methods.peg import peg_config
from ..models.attention_variants import AttentionVariant
from ..naq.wrapper import naq_executing
from ..nbsetup import progress_enabled
from ..quant.granularity import group_counts
from ..recipe import (AttentionVariantTransform, Bits, GammaMigration, PegPermutation, Ranges, Recipe, SmoothQuant,
                      TokenWiseClipping, quantize)
from ..recipe.quantize import transformed

LN_KINDS = ("embeddings.ln", "attention.ln", "ffn.ln")
CLIPPED_GAMMA = -0.01


def recipes(bits, width: int, twc_max_candidates: int | None = None) -> dict[str, Recipe]:
    """The chapter's recipes at ``bits`` for a model of hidden width ``width`` (see the module docstring)."""
    bits = Bits.parse(bits)
    k = group_counts(width, (6,))[0]
    base = dict(bits=bits, placement="os", act_estimator="avg_minmax")
    twc = TokenWiseClipping(max_candidates=twc_max_candidates)
    twc_beside_peg = TokenWiseClipping(max_candidates=twc_max_candidates, exempt_kinds=("attention.probs",) + LN_KINDS)
    peg = dict(overrides=peg_config(k, LN_KINDS))
    gm = (GammaMigration(),)
    return {
        "MinMax": Recipe(**base),
        "GM": Recipe(**base, transforms=gm),
        "SmoothQuant": Recipe(**base, transforms=(SmoothQuant(),)),
        "TWC": Recipe(**base, calibrators=(Ranges(), twc)),
        "GM + TWC": Recipe(**base, transforms=gm, calibrators=(Ranges(), twc)),
        f"PEG (K={k}+P)": Recipe(**base, **peg, calibrators=(PegPermutation(LN_KINDS), Ranges())),
        f"GM + PEG (K={k}+P)": Recipe(**base, **peg, transforms=gm, calibrators=(PegPermutation(LN_KINDS), Ranges())),
        f"GM + TWC + PEG (K={k}+P)": Recipe(**base, **peg, transforms=gm,
                                             calibrators=(PegPermutation(LN_KINDS), Ranges(), twc_beside_peg)),
        "clipped softmax": Recipe(**base, transforms=(AttentionVariantTransform(
            AttentionVariant(softmax="clipped", gamma=CLIPPED_GAMMA)),)),
    }


def score_recipes(setup, bits_list, batches_for_seed, seeds, memo: Memo, twc_max_candidates=None,
                  names=None) -> pd.DataFrame:
    """Metric of every recipe at every bit-width and calibration seed (one row each), memoised per experiment."""
    width = setup.model.config.hidden_size
    jobs = [(b, name, seed) for b in bits_list for name in (names or recipes(b, width)) for seed in seeds]
    rows = []
    for b, name, seed in tqdm(jobs, desc=f"recipes {setup.task}", disable=not progress_enabled()):
        recipe = recipes(b, width, twc_max_candidates)[name]

        def run():
            qm = quantize(setup.model, recipe, batches_for_seed(seed))
            return {"value": setup.score(qm), "seconds": qm.info["seconds"]}

        key = {"bits": Bits.parse(b).name, "recipe": name, "seed": seed, "twc_max_candidates": twc_max_candidates}
        rows.append({"task": setup.task, "bits": Bits.parse(b).name, "recipe": name, "seed": seed,
                     **kept(memo, setup, key, run)})
    return pd.DataFrame(rows)


def fp_of_transforms(setup, width: int, batches) -> dict[str, float]:
    """FP metric of each recipe's transformed model (exact transforms give the FP metric back)."""
    out = {}
    for name, recipe in recipes("W8A8", width).items():
        if recipe.transforms:
            out[name] = setup.score(transformed(setup.model, recipe, batches))
    return out


def naq_on_top(setup, batches, t_qp: float = 0.0, t_as: float = -3.0, t_sum: float = 200.0) -> dict:
    """NAQ (4-bit low-precision path) executing the W8A8 MinMax model: metric and avoided compute share."""
    from .naq import macs_from_counts

    qm = quantize(setup.model, recipes("W8A8", setup.model.config.hidden_size)["MinMax"], batches)
    w8a8 = setup.score(qm)
    with naq_executing(qm.model, t_qp=t_qp, t_as=t_as, t_sum=t_sum) as naq:
        value = setup.score(naq)
        m = macs_from_counts(naq.stats, setup.model.config)
    return {"task": setup.task, "W8A8": w8a8, "W8A8 + NAQ": value, "avoided_share": m["avoided_share"]}


TRANSFORM_ORDERS = {  # short label -> transforms, in the order they are applied
    "GM": (GammaMigration(),),
    "SQ": (SmoothQuant(),),
    "SQ, shortcut not rescaled": (SmoothQuant(rescale_shortcut=False),),
    "SQ then GM": (SmoothQuant(), GammaMigration()),
    "GM then SQ": (GammaMigration(), SmoothQuant()),
}


@torch.no_grad()
def transform_exactness(model, batches, node: str) -> tuple[pd.DataFrame, float]:
    """Per transform order of :data:`TRANSFORM_ORDERS`: the largest change of the encoder's output on the first
    batch's real tokens, the largest difference of the quantized tensor ``node`` from Gamma Migration's, and
    that tensor's largest magnitude. Also returns the output's largest magnitude (the scale to read them by)."""
    from ..analysis.capture import capture_activations

    probe = batches[0]
    real = probe["attention_mask"].bool()

    def output(m):
        return m(**probe, output_hidden_states=True).hidden_states[-1][real]

    reference = output(model)
    models = {label: transformed(model, Recipe(transforms=ts), batches) for label, ts in TRANSFORM_ORDERS.items()}
    tensors = {label: capture_activations(m, [probe], names=[node], placement="os")[node] for label, m in models.items()}
    table = pd.DataFrame([{"transforms": label, "Δ output": float((output(m) - reference).abs().max()),
                           "Δ tensor vs GM": float((tensors[label] - tensors["GM"]).abs().max()),
                           "max |tensor|": float(tensors[label].abs().max())}
                          for label, m in models.items()]).set_index("transforms")
    return table, float(reference.abs().max())


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per task, bit-width and recipe."""
    g = rows.groupby(["task", "bits", "recipe"], sort=False)["value"]
    out = g.agg(mean="mean", std=lambda v: statistics.stdev(v) if len(v) > 1 else 0.0, n="count").reset_index()
    return out
