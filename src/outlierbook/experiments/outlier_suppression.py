"""The Outlier Suppression chapter's experiments: one calibration recipe per named method, at W-E-A bits.

Every method starts from the same wrapper — FasterTransformer placement (``"os"``), symmetric
per-channel weights, asymmetric per-tensor activations, embeddings at their own bit-width — and the
same calibration batches (training split). Methods differ only in how the ranges are set:

=================  =====================================================================
``minmax``         average of per-batch min/max ("MinMax" in the paper)
``omse``           golden-section search of the output MSE per node
``mse_grid``       100-candidate grid search of the MSE per node (OMSE's grid variant)
``percentile:p``   the p-th percentile (p in %) averaged over batches
``easyquant``      MinMax, then EasyQuant's alternating scale search (methods/easyquant.py)
``peg``            K = 6 per-embedding groups with range-based permutation on the LN outputs
``twc_coarse``     Token-Wise Clipping, coarse stage (the authors' quantile grid)
``twc``            coarse stage + fine stage (learned scales)
``gm+<method>``    the same, on a Gamma-Migrated copy of the model
=================  =====================================================================
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..methods.easyquant import easyquant
from ..methods.gamma_migration import migrate_gamma
from ..methods.peg import peg_config, set_range_permutations
from ..methods.token_wise_clipping import coarse_search, grid, learn_scales
from ..quant.calibrate import calibrate
from ..quant.nodes import QuantizedModel, quantize_model

LN_KINDS = ("embeddings.ln", "attention.ln", "ffn.ln")
EMBEDDING_WEIGHTS = "weight:*embeddings.*"


@dataclass(frozen=True)
class Bits:
    """W-E-A: Linear weights, embedding tables, activations."""

    weights: int
    embeddings: int
    acts: int

    @classmethod
    def parse(cls, text: str) -> "Bits":
        try:
            w, e, a = (int(v) for v in text.split("-"))
        except ValueError:
            raise ConfigError(f"bits {text!r} must read W-E-A, e.g. '6-6-6'") from None
        return cls(w, e, a)

    def __str__(self) -> str:
        return f"{self.weights}-{self.embeddings}-{self.acts}"


def migrated_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A Gamma-Migrated deep copy (the original model is left untouched)."""
    m = copy.deepcopy(model)
    migrate_gamma(m)
    return m


def wrap(model, bits: Bits, act_estimator="avg_minmax", config: dict | None = None) -> QuantizedModel:
    cfg = {EMBEDDING_WEIGHTS: bits.embeddings, **(config or {})}
    return quantize_model(model, placement="os", weight_bits=bits.weights, act_bits=bits.acts,
                          act_estimator=act_estimator, config=cfg)


def split_method(method: str) -> tuple[bool, str]:
    return (True, method[3:]) if method.startswith("gm+") else (False, method)


def twc_candidates(bits: int, max_candidates: int | None = None) -> list[float]:
    """The authors' quantile grid, thinned to at most ``max_candidates`` evenly spaced ones (None: all)."""
    full = grid(bits)
    if max_candidates is None or max_candidates >= len(full):
        return full
    stride = -(-len(full) // max_candidates)
    return full[::stride]


def calibrate_method(model, fp_model_migrated, method: str, bits: Bits, batches, twc_max_candidates: int | None = None,
                     fine_epochs: int = 3) -> tuple[QuantizedModel, dict]:
    """Wrap and calibrate by ``method``; returns the W+A-mode wrapper and ``{"seconds", ...}`` details.

    ``fp_model_migrated`` is the Gamma-Migrated copy used by ``gm+`` methods. The caller removes the
    wrapper (``qm.remove()``) when done. ``seconds`` times the activation calibration only.
    """
    gm, base = split_method(method)
    target = fp_model_migrated if gm else model
    info: dict = {}
    if base in ("minmax", "easyquant", "twc_coarse", "twc"):
        qm = wrap(target, bits)
    elif base == "omse":
        qm = wrap(target, bits, act_estimator="omse")
    elif base == "mse_grid":
        qm = wrap(target, bits, act_estimator="mse")
    elif base.startswith("percentile:"):
        qm = wrap(target, bits, act_estimator=("percentile", {"p": float(base.split(":")[1])}))
    elif base == "peg":
        qm = wrap(target, bits, config=peg_config(6, LN_KINDS))
    else:
        raise ConfigError(f"unknown method {method!r}; see outlierbook.experiments.outlier_suppression")
    t0 = time.perf_counter()
    if base == "peg":
        set_range_permutations(qm, batches, kinds=LN_KINDS)
    calibrate(qm, batches)
    if base == "easyquant":
        easyquant(qm, batches)
    if base in ("twc_coarse", "twc"):
        candidates = twc_candidates(bits.acts, twc_max_candidates)
        result = coarse_search(qm, batches, candidates)
        info.update(best_p=result["best_p"], n_candidates=len(candidates))
    if base == "twc":
        info["fine_losses"] = learn_scales(qm, batches, epochs=fine_epochs)
    info["seconds"] = time.perf_counter() - t0
    qm.set_mode(weights=True, acts=True)
    return qm, info


def score_method(setup, method: str, bits: Bits, batches, migrated=None, **kw) -> dict:
    """Calibrate, score on the setup's evaluation data, unwrap. Returns metric, seconds and details."""
    if split_method(method)[0] and migrated is None:
        migrated = migrated_copy(setup.model)
    qm, info = calibrate_method(setup.model, migrated, method, bits, batches, **kw)
    try:
        value = setup.score(qm)
    finally:
        qm.remove()
    return {"task": setup.task, "method": method, "bits": str(bits), "value": value, **info}


@torch.no_grad()
def migration_max_difference(model, migrated, batches) -> float:
    """max |f_migrated(x) - f(x)| over the batches' real-token outputs (logits for classifiers)."""
    worst = 0.0
    for b in batches:
        a, m = model(**b), migrated(**b)
        if getattr(a, "logits", None) is not None:
            d = (a.logits - m.logits).abs().max()
        else:
            mask = b["attention_mask"].bool()
            d = (a.last_hidden_state[mask] - m.last_hidden_state[mask]).abs().max()
        worst = max(worst, float(d))
    return worst


QAT_VARIANTS = {
    "LSQ+": ("minmax", False),  # (PTQ initialisation, PACT activations)
    "PACT": ("minmax", True),
    "Ours (GM + TWC coarse → LSQ+)": ("gm+twc_coarse", False),
}


def qat_variant(setup, variant: str, bits: Bits, batches, steps: int, batch_size: int = 32, lr: float = 2e-5,
                seed: int = 0, twc_max_candidates: int | None = None, progress: bool = True) -> dict:
    """Quantization-aware training of a *copy* of the FP model from one of :data:`QAT_VARIANTS`."""
    from ..methods.qat import qat_and_score

    if variant not in QAT_VARIANTS:
        raise ConfigError(f"unknown QAT variant {variant!r}; use one of: {', '.join(QAT_VARIANTS)}")
    init, pact = QAT_VARIANTS[variant]
    migrated = migrated_copy(setup.model) if init.startswith("gm+") else None
    qm, _ = calibrate_method(copy.deepcopy(setup.model), migrated, init, bits, batches,
                             twc_max_candidates=twc_max_candidates)
    result = qat_and_score(qm, setup, steps=steps, batch_size=batch_size, lr=lr, seed=seed, pact=pact,
                           progress=progress)
    return {"task": setup.task, "variant": variant, "bits": str(bits), "ptq_init": result["ptq"],
            "value": result["value"], "final_loss": result["final_loss"], "steps": steps}


def ln_cosine_table(model, batches, bits: int = 6):
    """Tables 1 and 12: per LayerNorm, the `bits`-bit cosine similarity (%) of X̃ and of X'."""
    import pandas as pd

    from ..analysis.capture import capture_activations
    from ..methods.gamma_migration import migration_cosines
    from ..models.anatomy import anatomy

    layers = anatomy(model).layers
    names = [f"layer{i}.{k}" for i in range(len(layers)) for k in ("attention.ln", "ffn.ln")]
    acts = capture_activations(model, batches, names=names, placement="os")
    rows = []
    for i, layer in enumerate(layers):
        for kind, ln, label in (("attention.ln", layer.attention_ln, "MHA-LN"), ("ffn.ln", layer.ffn_ln, "FFN-LN")):
            c = migration_cosines(acts[f"layer{i}.{kind}"], ln.weight.detach(), ln.bias.detach(), bits)
            rows.append({"layer": i, "ln": label, "x_tilde": c["x_tilde"], "x_prime": c["x_prime"]})
    return pd.DataFrame(rows)


def weight_cosine_table(model, bits: int = 6):
    """Table 2: `bits`-bit cosine similarity (%) of each FFN1 weight before and after absorbing the MHA-LN γ."""
    import pandas as pd

    from ..methods.gamma_migration import weight_cosines
    from ..models.anatomy import anatomy

    rows = []
    for i, layer in enumerate(anatomy(model).layers):
        c = weight_cosines(layer.ffn_in, layer.attention_ln.weight.detach(), bits)
        rows.append({"layer": i, **c})
    return pd.DataFrame(rows)


def run_methods(setup, methods, bits: Bits, batches, migrated=None, cache: dict | None = None, **kw) -> list[dict]:
    """:func:`score_method` for each method (memoised in ``cache`` by task, method and bits), with progress."""
    from tqdm import tqdm

    from ..nbsetup import progress_enabled

    cache = {} if cache is None else cache
    rows = []
    for method in tqdm(methods, desc=f"{setup.task} {bits}", disable=not progress_enabled()):
        key = (setup.task, method, str(bits))
        if key not in cache:
            if split_method(method)[0] and migrated is None:
                migrated = migrated_copy(setup.model)
            cache[key] = score_method(setup, method, bits, batches, migrated=migrated, **kw)
        rows.append(cache[key])
    return rows


def best_percentile(rows: list[dict]) -> dict:
    """The percentile row with the best dev metric (the paper's protocol for its Percentile baseline)."""
    cands = [r for r in rows if r["method"].startswith("percentile:")]
    if not cands:
        raise ConfigError("no percentile rows to choose from")
    best = max(cands, key=lambda r: r["value"])
    return {**best, "method": "percentile (best on dev)", "chosen": best["method"],
            "seconds": sum(r["seconds"] for r in cands)}
