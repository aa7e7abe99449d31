"""The source of some of the package's modules, fed into a hash: part of the key of a stored evaluation, so
that an edited quantizer or estimator never reuses a result computed by the old code."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def update_with_sources(h, names) -> None:
    """``h.update`` with the bytes of every ``.py`` file of ``names`` (paths relative to the package: a module
    file, or a folder read recursively in sorted order)."""
    for name in names:
        path = PACKAGE / name
        if not path.exists():
            raise FileNotFoundError(f"no module or folder {name!r} in the package; name one under {PACKAGE.name}/")
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.read_bytes())
