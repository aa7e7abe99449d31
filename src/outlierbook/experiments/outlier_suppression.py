"""The Outlier Suppression chapter's experiments: one calibration recipe per named method, at W-E-A bits.

Every method starts from the same wrapper — FasterTransformer placement (``"os"``), symmetric
per-channel weights, asymmetric per-tensor activations, embeddings at their own bit-width — and the
same calibration batches (training split). Methods differ only in how the ranges are set:

=================  =====================================================================
``minmax``         average of per-batch min/max ("MinMax" in the paper)
``omse``           golden-section search of the output MSE per node
``mse_grid``       100-candidate grid search of the MSE per node (OMSE's grid variant)
``omse_per_batch`` OMSE as the authors' code runs it: scipy's bounded search on every batch, averaged
``percentile:p``   the p-th percentile (p in %) averaged over batches
``easyquant``      MinMax, then EasyQuant's alternating scale search (methods/easyquant.py)
``peg``            K = 6 per-embedding groups with range-based permutation on the LN outputs
``twc_coarse``     Token-Wise Clipping, coarse stage (the authors' quantile grid)
``twc``            coarse stage + fine stage (learned scales)
``gm+<method>``    the same, on a Gamma-Migrated copy of the model
``sgm+<method>``   the same, migrating only the LayerNorms whose γ amplifies their outlier dimensions
=================  =====================================================================
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..memo import kept
from ..methods.peg import peg_config
from ..recipe import (EMBEDDING_WEIGHTS, Bits, EasyQuant, GammaMigration, PegPermutation, Ranges, Recipe,
                      TokenWiseClipping, quantize)
from ..recipe.quantize import transformed

LN_KINDS = ("embeddings.ln", "attention.ln", "ffn.ln")
BASE_METHODS = ("minmax", "omse", "omse_per_batch", "mse_grid", "percentile:<p>", "easyquant", "peg", "twc_coarse", "twc")


def migrated_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A Gamma-Migrated deep copy (the original model is left untouched)."""
    return transformed(model, Recipe(transforms=(GammaMigration(),)))


def split_method(method: str) -> tuple[GammaMigration | None, str]:
    """``"sgm+twc"`` → (selective Gamma Migration, ``"twc"``); ``"gm+twc"`` → (Gamma Migration, ``"twc"``)."""
    if method.startswith("sgm+"):
        return GammaMigration(selective=True), method[4:]
    if method.startswith("gm+"):
        return GammaMigration(), method[3:]
    return None, method


def twc_candidates(bits: int, max_candidates: int | None = None) -> list[float]:
    """The authors' quantile grid, thinned to at most ``max_candidates`` evenly spaced ones (None: all)."""
    from ..methods.token_wise_clipping import grid

    full = grid(bits)
    if max_candidates is None or max_candidates >= len(full):
        return full
    stride = -(-len(full) // max_candidates)
    return full[::stride]


def recipe_for(method: str, bits: Bits, twc_max_candidates: int | None = None, fine_epochs: int = 3) -> Recipe:
    """The recipe of one row of the chapter's tables (see the module docstring for the names)."""
    gm, base = split_method(method)
    estimator, overrides, calibrators = "avg_minmax", {}, [Ranges()]
    if base in ("omse", "omse_per_batch"):
        estimator = base
    elif base == "mse_grid":
        estimator = "mse"
    elif base.startswith("percentile:"):
        try:
            estimator = ("percentile", {"p": float(base.split(":", 1)[1])})
        except ValueError:
            raise ConfigError(f"method {method!r}: write a percentile as 'percentile:99.99'") from None
    elif base == "peg":
        overrides = peg_config(6, LN_KINDS)
        calibrators = [PegPermutation(LN_KINDS), Ranges()]
    elif base == "easyquant":
        calibrators.append(EasyQuant())
    elif base in ("twc_coarse", "twc"):
        calibrators.append(TokenWiseClipping(max_candidates=twc_max_candidates,
                                             fine_epochs=fine_epochs if base == "twc" else 0))
    elif base != "minmax":
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(BASE_METHODS)}, optionally after 'gm+' or 'sgm+'")
    bits = Bits.parse(bits)
    return Recipe(bits=bits, placement="os", act_estimator=estimator,
                  overrides={EMBEDDING_WEIGHTS: bits.embeddings, **overrides},
                  transforms=(gm,) if gm else (), calibrators=tuple(calibrators))


def score_method(setup, method: str, bits: Bits, batches, twc_max_candidates: int | None = None,
                 fine_epochs: int = 3) -> dict:
    """Quantize a copy of the setup's model by ``method`` and score it. Returns metric, the calibration
    time in seconds (every calibrator of the recipe) and the Token-Wise Clipping details."""
    qm = quantize(setup.model, recipe_for(method, bits, twc_max_candidates, fine_epochs), batches)
    twc = qm.info.get("token_wise_clipping", {})
    info = {k: twc[k] for k in ("best_p", "n_candidates", "fine_losses") if k in twc}
    return {"task": setup.task, "method": method, "bits": Bits.parse(bits).wea, "value": setup.score(qm),
            **info, "seconds": qm.info["seconds"]}


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
    "LSQ+": ("minmax", False),  # (PTQ initialisation of the activations, PACT activations)
    "PACT": ("minmax", True),
    "Ours (GM + TWC coarse → LSQ+)": ("gm+twc_coarse", False),
}
# every QAT variant starts its weight scales as LSQ+ does (mean ± 3σ per row, the authors' LSQPlusObserver), so
# the three differ only in how their activation ranges start and are learned
QAT_WEIGHT_ESTIMATOR = ("mean_std", {"k": 3.0})


def qat_variant(setup, variant: str, bits: Bits, batches, steps: int | str, batch_size: int = 32, lr: float = 2e-5,
                seed: int = 0, twc_max_candidates: int | None = None, progress: bool = True, memo=None) -> dict:
    """Quantization-aware training of a *copy* of the FP model from one of :data:`QAT_VARIANTS` for ``steps``
    (``"epoch"``: one pass over the training split), kept on disk by ``memo``, if given, so a stopped full run
    does not train it again."""
    from ..methods.qat import qat_and_score, resolve_steps

    if variant not in QAT_VARIANTS:
        raise ConfigError(f"unknown QAT variant {variant!r}; use one of: {', '.join(QAT_VARIANTS)}")
    steps = resolve_steps(steps, len(setup.calibration), batch_size)
    init, pact = QAT_VARIANTS[variant]
    bits = Bits.parse(bits)

    def run():
        recipe = recipe_for(init, bits, twc_max_candidates).replace(weight_estimator=QAT_WEIGHT_ESTIMATOR)
        qm = quantize(setup.model, recipe, batches)
        result = qat_and_score(qm, setup, steps=steps, batch_size=batch_size, lr=lr, seed=seed, pact=pact,
                               progress=progress)
        return {"task": setup.task, "variant": variant, "bits": bits.wea, "ptq_init": result["ptq"],
                "value": result["value"], "final_loss": result["final_loss"], "steps": steps}

    key = {"experiment": "qat", "variant": variant, "bits": bits.wea, "steps": steps, "batch_size": batch_size,
           "lr": lr, "seed": seed, "twc_max_candidates": twc_max_candidates, "weight_init": "mean_std:3"}
    return kept(memo, setup, key, run)


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


@torch.no_grad()
def weight_init_table(model, bits=(4, 6, 8), estimators=("current_minmax", QAT_WEIGHT_ESTIMATOR)):
    r"""How a weight estimator starts QAT: over every linear weight of the encoder layers, with symmetric
    per-output-channel scales as the recipes quantize them, the share of weights that round to zero,
    :math:`|\lfloor w/s \rceil| = 0`, and the mean squared rounding error :math:`\overline{(\hat w - w)^2}`."""
    import pandas as pd

    from ..models.anatomy import anatomy
    from ..quant.estimators import make_estimator
    from ..quant.quantizer import Grid, qparams

    weights = [getattr(layer, role).weight for layer in anatomy(model).layers
               for role in ("query", "key", "value", "out", "ffn_in", "ffn_out")]
    rows = []
    for spec in estimators:
        for b in bits:
            grid, zeros, err, n = Grid(b, symmetric=True), 0, 0.0, 0
            for w in weights:
                est = make_estimator(spec)
                est.update(w.detach())
                scale = qparams(*est.compute(), grid)[0][:, None]
                q = torch.clamp(torch.round(w / scale), grid.qmin, grid.qmax)
                zeros, err, n = zeros + int((q == 0).sum()), err + float(((q * scale - w) ** 2).sum()), n + w.numel()
            rows.append({"estimator": spec if isinstance(spec, str) else spec[0], "bits": b,
                         "rounded to zero (%)": 100 * zeros / n, "rounding MSE (×1e-6)": 1e6 * err / n})
    return pd.DataFrame(rows)


def run_methods(setup, methods, bits: Bits, batches, cache: dict | None = None, memo=None, **kw) -> list[dict]:
    """:func:`score_method` for each method, with progress.

    Each result is kept in ``cache`` (this run's index, keyed by task, method and bits) and, with a
    :class:`~outlierbook.memo.Memo`, on disk, so a stopped full run resumes at the method in progress.
    The memo's key also holds the method's options (``kw``) and the number of evaluation examples."""
    from tqdm import tqdm

    from ..nbsetup import progress_enabled

    cache = {} if cache is None else cache
    rows = []
    bits = Bits.parse(bits)
    for method in tqdm(methods, desc=f"{setup.task} {bits.wea}", disable=not progress_enabled()):
        key = (setup.task, method, bits.wea)
        if key not in cache:
            def run(method=method):
                return score_method(setup, method, bits, batches, **kw)

            cache[key] = kept(memo, setup, {"experiment": "method", "method": method, "bits": bits.wea, **kw}, run)
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
