"""The scorecard: every claim of the ledger with the verdict the book has stored for it.

Read from each chapter's stored ``claims.json`` (the full profile's where it has been run, else the quick
profile's, labelled) and from the ledger itself, never typed in. A verdict stored *before* a ledger change
that touches its claim is shown as what it is: the old rule's verdict, with the change and "re-run
pending", and it is counted apart from the current verdicts. A ledger change touches a claim when it names
its id (``QT-1``), or when it introduces the preconditions: the *outliers present* precondition names its
claims (``QT-3 … QT-7``); the *competent FP model* precondition, which decides which tasks enter a claim's
average, touches every claim that averages over tasks (its rule says "average", or its stored note says it
is a mean or average over two or more tasks).

``python -m outlierbook book`` writes :func:`fragment` to ``book/_generated/scorecard.md`` before it builds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_text
from .claims import parse_ledger
from .data.glue import TASKS
from .paths import claims_file, repo_root
from .registry import CHAPTERS

PRIMARY = "all-MiniLM-L6-v2"  # the embedded default every chapter runs; other models get a column each

GENERATED = Path("book") / "_generated" / "scorecard.md"
VERDICTS = {True: "holds", False: "does not hold", None: "not testable here"}
_ID = re.compile(r"\b([A-Z]{2,4})-(\d+)\b")
_RANGE = re.compile(r"\b([A-Z]{2,4})-(\d+)\s*(?:…|\.\.\.|–|to)\s*([A-Z]{2,4})-(\d+)\b")
_CHANGE = re.compile(r"^- (\d{4}-\d{2}-\d{2}) — (.*)$")


@dataclass(frozen=True)
class LedgerChange:
    date: str
    text: str
    ids: frozenset[str]  # claims it names
    multi_task: bool  # it introduces the competent-FP-model precondition (every multi-task claim)


def named_ids(text: str) -> set[str]:
    """Claim ids named in ``text``, with ranges such as ``QT-3 … QT-7`` expanded."""
    ids = {f"{p}-{n}" for p, n in _ID.findall(text)}
    for p, a, q, b in _RANGE.findall(text):
        if p == q:
            ids |= {f"{p}-{n}" for n in range(int(a), int(b) + 1)}
    return ids


def _section(text: str, heading: str) -> list[str]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("###") and heading in line), None)
    if start is None:
        return []
    out = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        out.append(line)
    return out


def _bullets(lines: list[str]) -> list[str]:
    items: list[str] = []
    for line in lines:
        if line.startswith("- "):
            items.append(line.strip())
        elif items and line.strip():
            items[-1] += " " + line.strip()
    return items


def ledger_changes(text: str) -> list[LedgerChange]:
    """The ledger's dated rule changes, each with the claims it touches."""
    preconditions = _bullets(_section(text, "Preconditions"))
    changes = []
    for item in _bullets(_section(text, "Ledger changes")):
        m = _CHANGE.match(item)
        if not m:
            continue
        date, body = m.groups()
        ids, multi = named_ids(body), False
        if "precondition" in body.lower():
            for p in preconditions:
                scoped = named_ids(p)
                ids |= scoped
                multi = multi or not scoped  # a precondition that names no claims scopes by tasks
        changes.append(LedgerChange(date, body, frozenset(ids), multi))
    return changes


def averages_tasks(rule: str, stored_claim: dict) -> bool:
    """Whether a claim's verdict rests on an average over tasks (what the competence precondition governs)."""
    note = str(stored_claim.get("note", "")).lower()
    return "average" in rule.lower() or (("mean" in note or "average" in note) and sum(t in note for t in TASKS) >= 2)


def claim_model(record: dict, chapter: str | None = None) -> str:
    """The model a stored claim was measured on. Records written before models were recorded: the chapter's
    ``claims_model`` if it trains its own models, else the default."""
    from . import registry

    if record.get("model"):
        return record["model"]
    if chapter in registry.chapter_ids():
        return registry.get(chapter).claims_model or PRIMARY
    return PRIMARY


def models_checked(root: Path | None = None) -> list[str]:
    """Every model some chapter stored a claim check for, the book's default first."""
    found = {claim_model(c, chapter) for chapter, c in _all_stored(root)}
    return [PRIMARY] + sorted(found - {PRIMARY})


def _all_stored(root: Path | None):
    from .results import InconsistentResultsError, OutlierBookError, load

    for profile in ("quick", "full"):
        for chapter in CHAPTERS:
            try:
                stored = load(chapter.id, profile, root=root)
            except InconsistentResultsError:
                raise
            except OutlierBookError:
                continue
            for c in stored["claims"]:
                yield chapter.id, c


def stored_claims(root: Path | None = None, model: str | None = None) -> dict[str, dict]:
    """Per claim id, the record it was last decided by on ``model`` (default: the book's embedded model): the
    full profile's if any chapter ran it, else the quick profile's; with the chapter, the profile and the
    run's finish date."""
    from .results import InconsistentResultsError, OutlierBookError, load

    model = model or PRIMARY
    found: dict[str, dict] = {}
    for profile in ("quick", "full"):  # full overwrites quick
        for chapter in CHAPTERS:
            try:
                stored = load(chapter.id, profile, root=root)
            except InconsistentResultsError:
                raise  # a mixed folder is refused, never scored
            except OutlierBookError:
                continue
            for c in stored["claims"]:
                if claim_model(c, chapter.id) != model:
                    continue
                found[c["id"]] = {**c, "chapter": chapter.id, "profile": profile,
                                  "finished": str(stored["run"].get("finished_utc", ""))[:10]}
    return found


def _ours(value, width: int = 90) -> str:
    from .claims import _fmt

    text = _fmt(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def rows(root: Path | None = None, ledger_text: str | None = None, model: str | None = None) -> list[dict]:
    """One row per ledger claim, in ledger order, with the verdict stored for ``model`` (default: the
    book's embedded model)."""
    text = ledger_text if ledger_text is not None else claims_file().read_text(encoding="utf-8")
    changes = ledger_changes(text)
    stored = stored_claims(root, model)
    out = []
    for claim_id, claim in parse_ledger(text).items():
        s = stored.get(claim_id)
        row = {"id": claim_id, "claim": claim.claim, "paper": claim.evidence, "rule": claim.rule}
        if s is None:
            out.append({**row, "status": "not yet checked", "verdict": "—", "ours": "—", "why": "no chapter has "
                        "stored a check of it", "where": "—", "old_rule": ""})
            continue
        touching = [c for c in changes if s["finished"] <= c.date
                    and (claim_id in c.ids or (c.multi_task and averages_tasks(claim.rule, s)))]
        verdict = VERDICTS[s.get("holds")]
        where = f"{{doc}}`/notebooks/{s['chapter']}` ({s['profile']})"
        if touching:
            dates = ", ".join(sorted({c.date for c in touching}))
            out.append({**row, "status": "re-run pending", "verdict": "re-run pending", "old_rule": verdict,
                        "ours": _ours(s.get("ours")), "why": f"decided {s['finished']}, before the ledger change of "
                        f"{dates}; {s.get('note', '')}".strip("; "), "where": where})
        else:
            old = VERDICTS[s["holds_old_rule"]] if "holds_old_rule" in s else ""
            out.append({**row, "status": verdict, "verdict": verdict, "old_rule": old, "ours": _ours(s.get("ours")),
                        "why": s.get("note", ""), "where": where})
    return out


def counts(table: list[dict]) -> dict[str, int]:
    order = ["holds", "does not hold", "not testable here", "re-run pending", "not yet checked"]
    return {k: sum(r["status"] == k for r in table) for k in order}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _summary(n: dict) -> str:
    return (f"**{n['holds']} hold**, **{n['does not hold']} do not hold**, **{n['not testable here']} not "
            f"testable here**")


def fragment(root: Path | None = None) -> str:
    table = rows(root)
    n = counts(table)
    others = {m: rows(root, model=m) for m in models_checked(root)[1:]}
    quick_only = sorted(r["id"] for r in table if r["where"].endswith("(quick)"))
    head = (f"**{len(table)} claims.** Current verdicts: **{n['holds']} hold**, **{n['does not hold']} do not "
            f"hold**, **{n['not testable here']} not testable here**. **{n['re-run pending']}** were decided "
            f"before a ledger change that touches them: their old verdict is shown, and they count in none of "
            f"the three until their chapter is re-run."
            + (f" {n['not yet checked']} have no stored check." if n["not yet checked"] else ""))
    if quick_only:
        head += (f" Decided on the quick profile only (its numbers exercise the code, they are not the "
                 f"book's results): {', '.join(quick_only)}.")
    for m, other in others.items():
        checked = [r for r in other if r["status"] != "not yet checked"]
        head += (f"\n\nOn **{m}** ({len(checked)} claims checked, column \"{m}\"): {_summary(counts(other))}"
                 + (f", {counts(other)['re-run pending']} re-run pending" if counts(other)["re-run pending"] else "")
                 + ". The other columns are the book's default model, " + PRIMARY + ".")
    extra = list(others)
    lines = ["| id | claim | paper's evidence | ours | verdict | old rule's verdict | why | chapter |"
             + "".join(f" {m} |" for m in extra),
             "|---|---|---|---|---|---|---|---|" + "---|" * len(extra)]
    for i, r in enumerate(table):
        cells = [_cell(r[k]) for k in ("id", "claim", "paper", "ours", "verdict", "old_rule", "why", "where")]
        for m in extra:
            o = others[m][i]
            cells.append("—" if o["status"] == "not yet checked" else _cell(f"{o['verdict']} ({o['where']})"))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n\n" + "\n".join(lines) + "\n"


def write_fragment(root: Path | None = None) -> Path:
    path = repo_root() / GENERATED
    atomic_write_text(path, fragment(root))
    return path
