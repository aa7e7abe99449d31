"""Execute chapters with papermill, stamp them, and refuse to render stale ones.

``run`` converts ``notebooks/<id>.py`` (jupytext percent) to a notebook, injects the profile's
parameters (``profile`` plus the registry's per-profile values plus the user's ``key=value``
overrides; unknown names are an error, papermill itself only logs them), executes it with
``--cwd notebooks``, stamps ``metadata.outlierbook`` with the profile, the parameters and hashes of
the chapter source and of ``src/``, and moves it into place atomically.

``check`` lists every registered chapter whose executed notebook is missing, errored, from the
wrong profile or stale (its source or ``src/`` changed since it ran).
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError, OutlierBookError
from .nbsetup import DEFAULT_THREADS
from .paths import notebooks_dir, repo_root
from .registry import Chapter, check_profile, in_dependency_order

STAMP = "outlierbook"


def sha256_of(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root) if p.is_relative_to(root) else p.name).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def src_hash() -> str:
    root = repo_root()
    files = [p for p in (root / "src" / "outlierbook").rglob("*.py") if "__pycache__" not in p.parts]
    return sha256_of(files, root)


def source_hash(chapter: Chapter) -> str:
    return sha256_of([chapter.source], repo_root())


def read_source(chapter: Chapter):
    import jupytext

    if not chapter.source.is_file():
        raise ConfigError(f"chapter source {chapter.source} is missing; every registered chapter needs notebooks/<id>.py")
    return jupytext.read(chapter.source, fmt="py:percent")


def parameter_defaults(chapter: Chapter) -> dict:
    """Names and default values of the chapter's ``# %% tags=["parameters"]`` cell."""
    nb = read_source(chapter)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ConfigError(f"{chapter.source} must have exactly one cell tagged parameters, found {len(cells)}")
    defaults: dict = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            defaults[node.targets[0].id] = ast.literal_eval(node.value)
    if "profile" not in defaults:
        raise ConfigError(f"{chapter.source}: the parameters cell must define `profile`")
    return defaults


def parse_overrides(pairs: list[str] | None) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"parameter {pair!r} is not key=value; write e.g. --set seed=1")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def parameters_for(chapter: Chapter, profile: str, overrides: dict | None = None) -> dict:
    """The parameters a run injects: ``profile``, the registry's values for it, the user's overrides —
    every name known to the chapter's parameters cell, every value type- and domain-checked
    (:mod:`outlierbook.parameters`) before any compute."""
    from . import parameters

    check_profile(profile)
    overrides = dict(overrides or {})
    if "profile" in overrides:
        raise ConfigError(f"profile is chosen with --profile, not --set (a --set profile would write one profile's "
                          f"numbers into the other's results); run: python -m outlierbook run {chapter.id} "
                          f"--profile {overrides['profile']}")
    defaults = parameter_defaults(chapter)
    params = {"profile": profile, **chapter.profiles.get(profile, {}), **overrides}
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for chapter {chapter.id}; it takes: {', '.join(sorted(defaults))}"
        )
    for name, value in params.items():
        if name != "profile":
            examples = [defaults[name]] + [values[name] for values in chapter.profiles.values() if name in values]
            parameters.check(name, value, examples)
    if "model" in overrides:
        params["model"] = parameters.absolute_model_path(params["model"])
    return params


def run_chapter(chapter: Chapter, profile: str, overrides: dict | None = None, log_output: bool = False) -> Path:
    import nbformat
    import papermill

    params = parameters_for(chapter, profile, overrides)
    nb = read_source(chapter)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out = chapter.executed
    tmp = out.with_name(f".{out.stem}.running.ipynb")
    started = time.time()
    error = None
    os.environ["OUTLIERBOOK_EXECUTING"] = "1"  # the kernel inherits it: no progress bars in the document
    try:
        papermill.execute_notebook(nb, str(tmp), parameters=params, kernel_name="python3", cwd=str(notebooks_dir()),
                                   execution_timeout=chapter.timeout, log_output=log_output,
                                   progress_bar=not os.environ.get("OUTLIERBOOK_TEST") and sys.stderr.isatty())
    except Exception as exc:  # papermill.PapermillExecutionError and kernel failures
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    if not tmp.is_file():
        raise OutlierBookError(f"chapter {chapter.id} did not produce a notebook ({error})")
    executed = nbformat.read(tmp, as_version=4)
    executed.metadata[STAMP] = {
        "chapter": chapter.id,
        "profile": profile,
        "parameters": params,
        "source_hash": source_hash(chapter),
        "src_hash": src_hash(),
        "error": error,
        "seconds": round(time.time() - started, 1),
        "threads": DEFAULT_THREADS,  # nbval re-runs it at this count (outputs depend on it)
    }
    nbformat.write(executed, tmp)
    os.replace(tmp, out)
    if error:
        raise OutlierBookError(f"chapter {chapter.id} failed: {error}; the executed notebook {out} shows the failing cell")
    return out


def stamps(chapters: list[Chapter]) -> dict[str, dict]:
    """The runner's stamp of each executed chapter notebook (chapters not executed are left out)."""
    import nbformat

    return {c.id: nbformat.read(c.executed, as_version=4).metadata.get(STAMP, {}) for c in chapters
            if c.executed.is_file()}


THREADS_BEFORE_RECORDED = 2  # notebooks stamped before the thread count was recorded ran at two threads


def executed_threads(found: dict[str, dict]) -> int:
    """The one thread count the notebooks were executed with; an error if they differ (nbval would compare
    outputs computed at different counts)."""
    counts = {cid: int(s.get("threads", THREADS_BEFORE_RECORDED)) for cid, s in found.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{cid}: {n}" for cid, n in sorted(counts.items()))
        raise OutlierBookError(f"the notebooks were executed at different thread counts ({listed}); re-run them "
                               "together: python -m outlierbook run all")
    return next(iter(counts.values()), THREADS_BEFORE_RECORDED)


def problems(profile: str, chapters: list[Chapter] | None = None) -> list[str]:
    """Why the executed notebooks cannot be rendered (empty when all are fresh)."""
    import nbformat

    check_profile(profile)
    found = []
    current_src = src_hash()
    for chapter in chapters or in_dependency_order():
        if not chapter.executed.is_file():
            found.append(f"{chapter.id}: not executed (run: python -m outlierbook run {chapter.id} --profile {profile})")
            continue
        nb = nbformat.read(chapter.executed, as_version=4)
        stamp = nb.metadata.get(STAMP)
        if not stamp:
            found.append(f"{chapter.id}: executed without the book's runner (no stamp); re-run it")
            continue
        if stamp.get("error") or nb.metadata.get("papermill", {}).get("exception"):
            found.append(f"{chapter.id}: its last run failed ({stamp.get('error')})")
        if stamp.get("profile") != profile:
            found.append(f"{chapter.id}: executed with profile {stamp.get('profile')!r}, expected {profile!r}")
        if stamp.get("source_hash") != source_hash(chapter):
            found.append(f"{chapter.id}: stale, notebooks/{chapter.id}.py changed since it ran")
        if stamp.get("src_hash") != current_src:
            found.append(f"{chapter.id}: stale, src/ changed since it ran")
    return found
