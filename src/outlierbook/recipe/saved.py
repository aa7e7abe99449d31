"""A calibrated model as a file: ``save_quantized(qm, path)`` and ``load_quantized(model, recipe, path)``.

Everything calibration sets is module state — each quantizer's scale and zero point (or its learned
LSQ+/PACT parameters), PEG permutation and switches, each range estimator's statistics — so the file is
the wrapped model's ``state_dict`` in safetensors, with the recipe's label in its metadata. Loading
validates the recipe, wraps a copy of the FP model with it (after its transforms, which fix the
model's structure), turns the quantizers whose file holds learned ranges into learnable ones, and
loads the state strictly: the result computes exactly what the saved model computed. The caller's
model is never edited; the file is written atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..quant.fake_quant import FakeQuantizer
from .quantize import wrapped
from .recipe import Recipe


def save_quantized(qm, path) -> Path:
    """Write ``qm``'s state (weights, ranges, estimator statistics, switches) to ``path`` (safetensors)."""
    from safetensors.torch import save_file

    recipe = getattr(qm, "recipe", None)
    if recipe is None:
        raise ConfigError("this model was not made by quantize(model, recipe, batches); only a recipe's model "
                          "can be loaded again, so quantize it through the front door first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in qm.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"recipe": recipe.label})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_quantized(model, recipe: Recipe, path, batches=()):
    """The quantized model saved at ``path`` by :func:`save_quantized`, rebuilt on a copy of ``model``
    (the FP model it was made from) with ``recipe`` (the recipe it was made with)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no saved quantized model at {path}; write one with save_quantized(qm, path)")
    with safe_open(str(path), "pt") as f:
        label = (f.metadata() or {}).get("recipe")
    if label != recipe.label:
        raise ConfigError(f"{path.name} was saved with recipe {label!r}, not {recipe.label!r}; "
                          "load it with the recipe that made it")
    recipe.validate(model)
    batches = list(batches)
    if any(t.needs_batches for t in recipe.transforms) and not batches:
        raise ConfigError("this recipe's transforms measure the model: pass the calibration batches to load it")
    state = load_file(str(path))
    qm = wrapped(model, recipe, batches)
    for name, q in qm.named_modules():
        prefix = name + "."
        if not isinstance(q, FakeQuantizer):
            continue
        if prefix + "lo_param" in state:  # PACT: learned clipping bounds
            q.set_range(state[prefix + "lo_param"], state[prefix + "hi_param"])
            q.make_pact()
        elif prefix + "scale_param" in state:  # LSQ/LSQ+: learned scale and zero point
            q.set_qparams(state[prefix + "scale_param"], state[prefix + "zero_param"])
            q.make_learnable()
    try:
        qm.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ConfigError(f"{path.name} does not fit this model and recipe ({first}); load it with the FP "
                          "model and recipe that made it") from None
    qm.info = {"loaded_from": path.name}
    return qm
