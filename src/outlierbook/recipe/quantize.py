r"""The front door: ``quantize(model, recipe, batches) -> QuantizedModel``.

load → **transform the FP model → wrap with the recipe's nodes → calibrate** → evaluate → record.
The recipe is validated first (every conflict raises before any compute); transforms each return a
new model, and without transforms the model is deep-copied, so the caller's model is never edited:
a failure anywhere leaves it as it was, and the returned model needs no ``remove()``. The returned
:class:`~outlierbook.quant.nodes.QuantizedModel` is in the recipe's mode (W+A for ``W8A8``, weights
only for ``W8A32``), with ``qm.recipe`` and ``qm.info`` (what each calibrator reported, and the
calibration time in seconds).
"""

from __future__ import annotations

import copy
import time

from ..errors import ConfigError
from .recipe import Recipe


def transformed(model, recipe: Recipe, batches=None):
    """The FP model after the recipe's transforms (a new model; ``model`` itself when there are none).
    Transforms that measure the model (SmoothQuant) use ``batches``."""
    for t in recipe.transforms:
        model = t(model, batches)
    return model


def wrapped(model, recipe: Recipe, batches=(), copy_model: bool = True):
    """The recipe's (uncalibrated) nodes on the transformed FP model — a copy unless ``copy_model=False``
    and the recipe has no transforms. The one place a recipe's model is built: :func:`quantize` calibrates
    it, :func:`~outlierbook.recipe.saved.load_quantized` loads a saved state into it."""
    target = transformed(model, recipe, batches)
    if target is model and copy_model:
        target = copy.deepcopy(model)
    qm = recipe.wrap(target)
    qm.recipe, qm.info = recipe, {}
    return qm


def quantize(model, recipe: Recipe, batches=(), calibration: dict | None = None, copy_model: bool = True):
    """Validate, transform, wrap and calibrate; see the module docstring.

    ``calibration`` gives one calibrator other batches than ``batches`` (by its name, e.g.
    ``{"peg_permutation": other_batches}``). ``copy_model=False`` wraps ``model`` itself when the recipe
    has no transforms (then call ``remove()`` to get it back); the default never touches it.
    """
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"quantize() takes a Recipe, not {type(recipe).__name__}; e.g. Recipe(bits='W8A8')")
    recipe.validate(model)
    batches = list(batches)
    calibration = {k: list(v) for k, v in (calibration or {}).items()}
    unknown = set(calibration) - {c.name for c in recipe.calibrators}
    if unknown:
        raise ConfigError(f"calibration batches for {', '.join(sorted(unknown))}, which the recipe does not run; "
                          f"its calibrators: {', '.join(c.name for c in recipe.calibrators)}")
    if not batches and (recipe.bits.acts is not None or any(t.needs_batches for t in recipe.transforms)):
        raise ConfigError("quantizing activations (or a transform that measures the model) needs calibration "
                          "batches from the training split")
    qm = wrapped(model, recipe, batches, copy_model)
    t0 = time.perf_counter()
    try:
        for c in recipe.calibrators:
            qm.info[c.name] = c(qm, calibration.get(c.name, batches))
    except BaseException:
        if qm.model is model:  # wrapped in place (copy_model=False): give the caller its model back
            qm.remove()
        raise
    qm.info["seconds"] = time.perf_counter() - t0
    return qm.set_mode(*recipe.mode)
