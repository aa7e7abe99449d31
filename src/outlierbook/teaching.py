"""The "Teaching with this book" page's measured part: each chapter's run time in this build and its
exercises, read from the executed notebooks and the chapter sources (never typed in).

``python -m outlierbook book`` writes :func:`fragment` to ``book/_generated/teaching.md`` before it
builds; ``book/teaching.md`` (the prose: which chapters fit which session) includes it.
"""

from __future__ import annotations

import re
from pathlib import Path

from .atomic import atomic_write_text
from .paths import repo_root
from .registry import CHAPTERS, Chapter

GENERATED = Path("book") / "_generated" / "teaching.md"
_ITEM = re.compile(r"^# (\d+)\. (.*)$")
_MORE = re.compile(r"^#\s{2,}(\S.*)$")


def exercises(chapter: Chapter) -> list[str]:
    """The numbered exercises under a chapter's ``## Exercises`` heading (solutions left out)."""
    lines = chapter.source.read_text(encoding="utf-8").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "# ## Exercises")
    except StopIteration:
        return []
    items: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("# ```") or line.startswith("# %%"):
            break
        if m := _ITEM.match(line):
            items.append(m.group(2).strip())
        elif items and (m := _MORE.match(line)):
            items[-1] += " " + m.group(1).strip()
    return items


def run_seconds(chapter: Chapter) -> tuple[str | None, float | None, int | None]:
    """Profile, wall time and thread count of the chapter's executed notebook in this build (None if not
    executed; the thread count is None for notebooks stamped before it was recorded)."""
    import nbformat

    if not chapter.executed.is_file():
        return None, None, None
    stamp = nbformat.read(chapter.executed, as_version=4).metadata.get("outlierbook", {})
    return stamp.get("profile"), stamp.get("seconds"), stamp.get("threads")


def fragment(chapters: tuple[Chapter, ...] = CHAPTERS) -> str:
    rows, lists = [], []
    for chapter in chapters:
        profile, seconds, threads = run_seconds(chapter)
        how = f"{profile} profile" + ("" if threads is None else f", {threads} thread{'s' if threads != 1 else ''}")
        minutes = "not executed" if seconds is None else f"{seconds / 60:.1f} min ({how})"
        items = exercises(chapter)
        rows.append(f"| {{doc}}`/notebooks/{chapter.id}` | {minutes} | {len(items)} |")
        if items:
            lists.append(f"**{{doc}}`/notebooks/{chapter.id}`**\n\n" + "\n".join(
                f"{i}. {text}" for i, text in enumerate(items, 1)))
    table = "| chapter | run time in this build | exercises |\n|---|---|---|\n" + "\n".join(rows)
    return (table + "\n\nThe run times are those of the executed notebooks this book was built from, measured by "
            "the runner (`metadata.outlierbook.seconds`); a laptop with more cores is faster, and a chapter "
            "run side by side with another (`JOBS=2`, one thread each) is slower.\n\n"
            "## Every exercise\n\n" + "\n\n".join(lists) + "\n")


def write_fragment(root: Path | None = None) -> Path:
    path = (root or repo_root()) / GENERATED
    atomic_write_text(path, fragment())
    return path
