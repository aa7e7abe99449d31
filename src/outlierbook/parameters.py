"""Check a chapter's parameters before any compute.

A chapter's parameters are the assignments of its ``# %% tags=["parameters"]`` cell; the registry's
profiles and the user's ``--set name=value`` override them. :func:`check` refuses, with one line
naming the problem and the fix, every value a chapter would otherwise fail on minutes later:

- **type**: a value must have the type of the parameter's default or of one of the registry's
  profile values for it (an int where a float is expected is fine; ``None`` only where a profile
  uses it, e.g. ``eval_limit=None`` for "every example"); list elements are checked against the
  default's elements;
- **domain**, by the parameter's name: task names, data source, model (the embedded default, an
  existing folder, or a hub id when online), node kinds, bit-widths, range estimators,
  percentiles, positive sizes and non-negative seeds.

``profile`` is never a ``--set`` parameter: it is chosen with ``--profile``, so that a quick run
cannot write into the full profile's results.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

SEED_NAMES = ("seed", "seeds", "calib_seeds", "ptq_seeds", "table1_seeds")


def _type_name(value) -> str:
    return "None" if value is None else type(value).__name__


def _fits(value, examples: list) -> bool:
    """Does ``value`` have the type of one of the example values (recursively for lists and dicts)?"""
    for example in examples:
        if example is None and value is None:
            return True
        if example is None or value is None:
            continue
        if isinstance(example, bool) or isinstance(value, bool):
            if isinstance(example, bool) and isinstance(value, bool):
                return True
            continue
        if isinstance(example, float) and isinstance(value, (int, float)):
            return True
        if isinstance(example, int) and isinstance(value, int):
            return True
        if isinstance(example, str) and isinstance(value, str):
            return True
        if isinstance(example, dict) and isinstance(value, dict):
            return True
        if isinstance(example, (list, tuple)) and isinstance(value, (list, tuple)):
            elements = [e for e in example if e is not None]
            if not elements or not value or all(_fits(v, elements) for v in value):
                return True
            continue  # another example may still fit
    return False


def _example_text(name: str, examples: list) -> str:
    example = next((e for e in examples if e is not None), None)
    if isinstance(example, (list, tuple)):
        inner = ", ".join(str(e) if not isinstance(e, str) else e for e in example[:2]) if example else "..."
        return f"--set {name}=[{inner}]"
    if isinstance(example, dict):
        return f"--set '{name}={{...}}' (a YAML mapping like the default)"
    return f"--set {name}={example}"


def _article(wanted: list[str]) -> str:
    return "an " if wanted[0][0] in "aeiou" else "a "


def check_type(name: str, value, examples: list) -> None:
    if not _fits(value, examples):
        wanted = sorted({_type_name(e) for e in examples})
        elements = ""
        default = next((e for e in examples if isinstance(e, (list, tuple)) and e), None)
        if default is not None and isinstance(value, (list, tuple)):
            elements = f" of {_type_name(default[0])}"
        raise ConfigError(f"parameter {name} must be {_article(wanted)}{' or '.join(wanted)}{elements}, got {value!r} "
                          f"({_type_name(value)}); write e.g. {_example_text(name, examples)}")


# ------------------------------------------------------------------ domains, by parameter name


def _tasks(name, value):
    from .data.glue import task_spec

    for task in value if isinstance(value, (list, tuple)) else [value]:
        task_spec(task)


def _data_source(name, value):
    from .nbsetup import online

    if value not in ("local", "hub"):
        raise ConfigError(f"parameter {name} must be 'local' (the book's data/ folder) or 'hub', got {value!r}")
    if value == "hub" and not online():
        raise ConfigError("data_source=hub needs the network: set OUTLIERBOOK_ONLINE=1 on a machine with network, "
                          "or keep data_source=local")


def _model(name, value):
    from .models.load import check_model_name

    check_model_name(value)


def _stsb_split(name, value):
    from .data.glue import task_spec

    if value not in task_spec("stsb").files:
        raise ConfigError(f"parameter {name} must be one of {', '.join(task_spec('stsb').files)}, got {value!r}")


def _node_kind(name, value):
    from .quant.nodes import ALL_KINDS

    if value not in ALL_KINDS:
        raise ConfigError(f"parameter {name}: {value!r} is not a node kind; use one of: {', '.join(ALL_KINDS)}")


def _bits(name, value):
    if isinstance(value, (list, tuple)):  # bit-width settings such as ["W8A8", "W6A6E8"]
        return _wea_bits(name, value)
    if value is not None and not 2 <= value <= 16:
        raise ConfigError(f"parameter {name} is a bit-width from 2 to 16, got {value}")


def _wea_bits(name, value):
    from .recipe.bits import Bits

    for text in value:
        try:
            Bits.parse(text)
        except ConfigError as exc:
            raise ConfigError(f"parameter {name}: {exc}") from None


def _estimators(name, value):
    from .quant.estimators import make_estimator

    for spec in value:
        spec = tuple(spec) if isinstance(spec, list) else spec
        if isinstance(spec, tuple) and (len(spec) != 2 or not isinstance(spec[1], dict)):
            raise ConfigError(f"parameter {name}: {list(spec)!r} must be a name or [name, {{argument: value}}]")
        make_estimator(spec)


def _act_settings(name, value):
    from .quant.estimators import ESTIMATORS

    for setting in value:
        if len(setting) != 3 or setting[0] not in ESTIMATORS or not all(isinstance(n, int) and n >= 1 for n in setting[1:]):
            raise ConfigError(f"parameter {name}: {setting!r} must be [estimator, batches, batch size], "
                              f"e.g. ['running_minmax', 4, 16]; estimators: {', '.join(ESTIMATORS)}")


def _qat_steps(name, value):
    if isinstance(value, str) and value != "epoch":
        raise ConfigError(f"parameter {name} must be a number of steps or 'epoch' (one pass over the training "
                          f"split), got {value!r}")


def _percentiles(name, value):
    for p in value:
        if not 50 < p <= 100:
            raise ConfigError(f"parameter {name}: percentile {p} must be in (50, 100]")


DOMAINS = {
    "tasks": _tasks, "problem_tasks": _tasks, "qat_tasks": _tasks, "lowbit_tasks": _tasks, "node_study_tasks": _tasks,
    "data_source": _data_source,
    "model": _model,
    "stsb_split": _stsb_split,
    "focus_kind": _node_kind,
    "bits": _bits,
    "table4_bits": _wea_bits, "qat_bits": _wea_bits,
    "weight_estimators": _estimators, "act_estimators": _estimators,
    "act_settings": _act_settings,
    "percentiles": _percentiles,
    "qat_steps": _qat_steps,
}


def _numbers(name: str, value) -> None:
    """Seeds are >= 0; every other int (a size, a count, a number of steps) is >= 1."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            continue
        if name in SEED_NAMES and v < 0:
            raise ConfigError(f"parameter {name}: a seed is a non-negative int, got {v}")
        if name not in SEED_NAMES and v < 1:
            raise ConfigError(f"parameter {name} must be at least 1, got {v}")


def check(name: str, value, examples: list) -> None:
    """Type and domain of one parameter value (``examples``: its default and the registry's values)."""
    check_type(name, value, examples)
    if value is None:
        return
    _numbers(name, value)
    if name in DOMAINS:
        DOMAINS[name](name, value)


def absolute_model_path(value):
    """A model folder named relative to the user's folder, made absolute (chapters run in notebooks/)."""
    if isinstance(value, str) and not os.path.isabs(value) and Path(value).expanduser().is_dir():
        return str(Path(value).expanduser().resolve())
    return value
