"""The problem chapter's experiments: bit-width sweeps, per-node sensitivity, disable-one-kind recovery."""

from __future__ import annotations

import math

import pandas as pd
from tqdm import tqdm

from ..analysis.sensitivity import fp32_kinds, node_cosine
from ..errors import ConfigError
from ..memo import kept
from ..models.tasks import TaskSetup
from ..nbsetup import progress_enabled
from ..quant.calibrate import calibration_batches
from ..recipe import Bits, Recipe, quantize
from ..seeds import summarize

# (weight bits, activation bits) of each wrapper -> the settings read off it by switching modes.
SWEEP = {
    (8, 8): {"W8A8": (True, True), "W32A8": (False, True), "W8A32": (True, False)},
    (6, 6): {"W6A6": (True, True), "W32A6": (False, True), "W6A32": (True, False)},
    (4, 8): {"W4A8": (True, True), "W4A32": (True, False)},
    (4, 4): {"W4A4": (True, True), "W32A4": (False, True)},
}


def weight_act_sweep(setup: TaskSetup, n_calib: int = 256, seeds=(0,), placement: str = "bondarenko",
                     act_estimator="avg_minmax", batch_size: int = 32, memo=None, wrappers=None) -> pd.DataFrame:
    """Metric of every setting in :data:`SWEEP` (or of the ``wrappers``, a subset of its keys such as
    ``[(8, 8), (6, 6)]``) over calibration seeds, plus FP32.

    One row per setting: ``value`` is the mean over seeds, beside ``std``, ``median`` and ``n_seeds``
    (see :mod:`outlierbook.seeds`). With a :class:`~outlierbook.memo.Memo`, each (wrapper, seed) is kept
    on disk, so a stopped full run resumes there.
    """
    wrappers = list(SWEEP) if wrappers is None else [tuple(w) for w in wrappers]
    unknown = [w for w in wrappers if w not in SWEEP]
    if unknown:
        raise ConfigError(f"unknown wrapper(s) {unknown}; use (weight bits, activation bits) among {list(SWEEP)}")
    rows = [{"task": setup.task, "setting": "FP32", "metric": setup.metric, "value": setup.score(), "std": math.nan,
             "median": math.nan, "n_seeds": 1}]
    rows[0]["median"] = rows[0]["value"]
    per_setting: dict[str, list[float]] = {}
    jobs = [(bits, seed) for bits in wrappers for seed in seeds]
    for (wb, ab), seed in tqdm(jobs, desc=f"PTQ sweep {setup.task}", disable=not progress_enabled()):
        def run(wb=wb, ab=ab, seed=seed):
            batches = calibration_batches(setup.calibration, setup.tokenizer, n_calib, batch_size, seed)
            qm = quantize(setup.model, Recipe(bits=Bits(wb, wb, ab), placement=placement,
                                              act_estimator=act_estimator), batches)
            return {name: setup.score(qm.set_mode(*mode)) for name, mode in SWEEP[(wb, ab)].items()}

        key = {"experiment": "sweep", "weight_bits": wb, "act_bits": ab, "seed": seed, "n_calib": n_calib,
               "batch_size": batch_size, "placement": placement, "act_estimator": act_estimator}
        scores = kept(memo, setup, key, run)
        for name in SWEEP[(wb, ab)]:  # in the sweep's order (a stored result's keys come back sorted)
            per_setting.setdefault(name, []).append(scores[name])
    for name, values in per_setting.items():
        s = summarize(values)
        rows.append({"task": setup.task, "setting": name, "metric": setup.metric, "value": s["mean"], "std": s["std"],
                     "median": s["median"], "n_seeds": s["n_seeds"]})
    return pd.DataFrame(rows)


def node_sensitivity(setup: TaskSetup, bits: int = 6, n_calib: int = 256, seed: int = 0, placement: str = "os",
                     kinds_groups: dict | None = None, batch_size: int = 32):
    """At W{bits}A{bits} (embeddings too): per-node cosine similarity and the metric with one kind in FP.

    Returns ``(cosine_table, recovery_table)``. ``kinds_groups`` maps a label to the node kinds kept in
    FP together (default: each kind of the placement alone, plus all LayerNorm and GELU outputs).
    """
    from ..quant.nodes import PLACEMENTS

    batches = calibration_batches(setup.calibration, setup.tokenizer, n_calib, batch_size, seed)
    groups = kinds_groups or {
        **{k: [k] for k in PLACEMENTS[placement]},
        "all LN + GELU": [k for k in PLACEMENTS[placement] if k.endswith(".ln") or k == "ffn.gelu"],
    }
    qm = quantize(setup.model, Recipe(bits=Bits(bits, bits, bits), placement=placement, act_estimator="avg_minmax"),
                  batches)
    cos = node_cosine(qm, batches[:2])
    rows = [{"task": setup.task, "fp32 kinds": "none (all quantized)", "value": setup.score(qm)}]
    for label, kinds in tqdm(groups.items(), desc=f"disable one kind ({setup.task})", disable=not progress_enabled()):
        with fp32_kinds(qm, kinds):
            rows.append({"task": setup.task, "fp32 kinds": label, "value": setup.score(qm)})
    return cos, pd.DataFrame(rows)
