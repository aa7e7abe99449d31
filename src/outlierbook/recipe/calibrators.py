r"""Calibrators: steps that set the ranges (or range parameters) of a wrapped model.

Each is a named object with ``check(...)`` (run by :meth:`Recipe.validate`, before any compute) and
``run(qm, batches) -> dict`` (details worth recording). Calling a calibrator runs it inside
:func:`preserved`: if it raises, every quantizer's range, estimator (and its statistics), granularity,
learnable parameters and switches, and the model's mode, are put back as they were.

Stages, in the order a recipe runs them: **before** the ranges (PEG's range-based permutation),
**the ranges** (one :class:`Ranges`: observe the FP model, fix each node's range), **after** the ranges
(Token-Wise Clipping's coarse search and fine stage, EasyQuant's scale search).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from ..errors import ConfigError
from ..quant.nodes import kind_of

BEFORE, RANGES, AFTER = "before", "ranges", "after"
_STATE = ("estimator", "granularity", "observing", "quantizing", "learnable", "pact", "lsq_grad_scaling")


def _quantizers(qm):
    return qm.activation_quantizers() + qm.weight_quantizers()


@contextlib.contextmanager
def preserved(qm):
    """Restore every quantizer's state and the model's mode if the body raises."""
    def buffers_of(module):
        return {} if module is None else {k: (None if v is None else v.detach().clone())
                                          for k, v in module._buffers.items()}

    saved = []
    for q in _quantizers(qm):
        saved.append((q, {k: getattr(q, k) for k in _STATE}, buffers_of(q), buffers_of(q.estimator),
                      dict(q._parameters)))
    mode, training = qm.mode, qm.training
    try:
        yield
    except BaseException:
        for q, attrs, buffers, estimator_buffers, params in saved:
            for k, v in attrs.items():
                setattr(q, k, v)
            for k in list(q._parameters):
                if k not in params:
                    del q._parameters[k]
            q._parameters.update(params)
            for k, v in buffers.items():
                q._buffers[k] = v
            for k, v in estimator_buffers.items():  # the statistics of the estimator put back
                q.estimator._buffers[k] = v
        qm.set_mode(*mode)
        qm.train(training)
        raise


class Calibrator:
    name = "calibrator"
    stage = AFTER

    def check(self, recipe, anat, settings: dict) -> None:
        """Raise ConfigError for a conflict with the recipe (``settings``: node name -> NodeSettings)."""

    def run(self, qm, batches) -> dict:
        raise NotImplementedError

    def __call__(self, qm, batches) -> dict:
        with preserved(qm):
            return self.run(qm, batches) or {}


@dataclass(frozen=True)
class Ranges(Calibrator):
    """Static ranges: every activation node observes the FP model on the batches with its estimator
    (or ``estimator`` for all of them), then every weight range is set from the weight itself."""

    estimator: object = None
    name = "ranges"
    stage = RANGES

    def check(self, recipe, anat, settings):
        if self.estimator is not None:
            from ..quant.estimators import make_estimator

            make_estimator(self.estimator)

    def run(self, qm, batches):
        from ..quant.calibrate import calibrate

        t0 = time.perf_counter()
        calibrate(qm, batches, estimator=self.estimator)
        return {"seconds": time.perf_counter() - t0}


@dataclass(frozen=True)
class PegPermutation(Calibrator):
    """PEG's range-based permutation for the per-group nodes of ``kinds`` (recorded on the FP model)."""

    kinds: tuple = ("attention.ln", "ffn.output", "ffn.residual")
    name = "peg_permutation"
    stage = BEFORE

    def check(self, recipe, anat, settings):
        grouped = [n for n, s in settings.items() if s.bits is not None and s.groups is not None
                   and kind_of(n) in self.kinds]
        if not grouped:
            raise ConfigError(f"PEG's permutation needs per-group nodes among {', '.join(self.kinds)}; give them "
                              "groups in the recipe's overrides, e.g. peg_config(6, kinds)")

    def run(self, qm, batches):
        from ..methods.peg import set_range_permutations

        return {"permuted": len(set_range_permutations(qm, batches, kinds=self.kinds))}


@dataclass(frozen=True)
class TokenWiseClipping(Calibrator):
    """Outlier Suppression's Token-Wise Clipping: the coarse quantile search, then (``fine_epochs`` > 0)
    the fine stage that learns the activation scales. ``max_candidates`` thins the authors' grid."""

    max_candidates: int | None = None
    fine_epochs: int = 0
    fine_lr: float = 1e-5
    exempt_kinds: tuple = ("attention.probs",)
    name = "token_wise_clipping"

    def check(self, recipe, anat, settings):
        from ..methods.token_wise_clipping import SPAN

        if recipe.bits.acts not in SPAN:
            raise ConfigError(f"Token-Wise Clipping's grid is defined for activations at 4, 6 or 8 bits, "
                              f"not {recipe.bits.acts}")
        for name, s in settings.items():
            if name.startswith("weight:"):
                continue
            if s.bits is not None and s.axis is not None and kind_of(name) not in self.exempt_kinds:
                raise ConfigError(f"Token-Wise Clipping gives one per-tensor range, but node {name} is per-channel "
                                  "or per-group; exempt its kind (TokenWiseClipping(exempt_kinds=(...)))")
        if self.fine_epochs < 0 or (self.max_candidates is not None and self.max_candidates < 1):
            raise ConfigError("fine_epochs must be >= 0 and max_candidates >= 1")

    def run(self, qm, batches):
        from ..methods.token_wise_clipping import coarse_search, grid, learn_scales

        bits = {n.quantizer.grid.bits for n in qm.act_nodes.values()
                if n.quantizer is not None and n.kind not in self.exempt_kinds}
        if len(bits) != 1:
            raise ConfigError(f"Token-Wise Clipping searches one grid; the clipped nodes have bit-widths {sorted(bits)}")
        full = grid(bits.pop())
        candidates = full
        if self.max_candidates is not None and self.max_candidates < len(full):
            candidates = full[::-(-len(full) // self.max_candidates)]
        result = coarse_search(qm, batches, candidates, exempt_kinds=self.exempt_kinds)
        info = {"best_p": result["best_p"], "n_candidates": len(candidates), "losses": result["losses"]}
        if self.fine_epochs:
            info["fine_losses"] = learn_scales(qm, batches, lr=self.fine_lr, epochs=self.fine_epochs)
        return info


@dataclass(frozen=True)
class EasyQuant(Calibrator):
    """EasyQuant's alternating search of activation and weight scale multipliers (methods/easyquant.py)."""

    name = "easyquant"

    def check(self, recipe, anat, settings):
        if recipe.bits.weights is None or recipe.bits.acts is None:
            raise ConfigError("EasyQuant searches weight and activation scales together; quantize both")
        grouped = [n for n, s in settings.items() if not n.startswith("weight:") and s.bits is not None
                   and s.axis is not None]
        if grouped:
            raise ConfigError(f"EasyQuant searches one scale per activation node, but {grouped[0]} is per-channel or "
                              "per-group (PEG); use one of the two")
        if any(isinstance(c, TokenWiseClipping) for c in recipe.calibrators):
            raise ConfigError("EasyQuant and Token-Wise Clipping both search the activation ranges after Ranges(); "
                              "use one of them")

    def run(self, qm, batches):
        from ..methods.easyquant import easyquant

        easyquant(qm, batches)
        return {}

