"""Where things live: the repository root, the data, the claims ledger, the cache, the results.

Every path is resolved from the repository root (the first parent holding ``_toc.yml``), so
papermill (caller's cwd), nbval and Jupyter Book (notebook's folder) all agree.
Environment variables override the defaults:

- ``OUTLIERBOOK_DATA``: the data directory holding ``glue/`` and ``wikitext-2/``
  (default: ``<repo>/data``, committed with the book: a clone needs nothing beside it).
- ``OUTLIERBOOK_CACHE``: fine-tuned checkpoints and other derived artefacts
  (default: ``<repo>/.cache``; a fresh clone starts empty).
- ``OUTLIERBOOK_RESULTS``: results tree (default: ``<repo>/results``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from .errors import DataNotFoundError, OutlierBookError


@lru_cache(maxsize=None)
def repo_root() -> Path:
    """The repository root: the first parent of this file (or the cwd) that holds ``_toc.yml``."""
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / "_toc.yml").is_file() and (parent / "src" / "outlierbook").is_dir():
                return parent
    raise OutlierBookError(
        "cannot find the Outlier Book repository root (a folder with _toc.yml and src/outlierbook); "
        "install the package editable from a clone: pip install -e ."
    )


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data directory (``<repo>/data`` unless overridden); raises a clear error when it is missing."""
    if override is not None:
        path, source = Path(override), "the data_dir argument"
    elif os.environ.get("OUTLIERBOOK_DATA"):
        path, source = Path(os.environ["OUTLIERBOOK_DATA"]), "OUTLIERBOOK_DATA"
    else:
        path, source = default_data_dir(), "the default <repo>/data"
    if not path.is_dir():
        raise DataNotFoundError(
            f"data directory {path} (from {source}) does not exist; point OUTLIERBOOK_DATA at a folder "
            "holding glue/ and wikitext-2/ (the layout of data/README.md), or use source='hub' with network"
        )
    return path


def default_data_dir() -> Path:
    """The data committed with the book."""
    return repo_root() / "data"


def cache_dir() -> Path:
    path = Path(os.environ.get("OUTLIERBOOK_CACHE") or repo_root() / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    return Path(os.environ.get("OUTLIERBOOK_RESULTS") or repo_root() / "results")


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def paper_numbers_dir() -> Path:
    """Transcribed paper tables (committed): ``results/paper/<paper>.csv``."""
    return repo_root() / "results" / "paper"


def claims_file() -> Path:
    """The claims ledger, ``data/claims.md`` (override with ``OUTLIERBOOK_CLAIMS``)."""
    return Path(os.environ.get("OUTLIERBOOK_CLAIMS") or repo_root() / "data" / "claims.md")
