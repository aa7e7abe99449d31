"""Claim checks: a paper's claim tested on our own measurement, with the ledger's fixed rule.

``data/claims.md`` (the ledger) lists every claim the book checks, with a stable id (``OS-4``) and the
rule that decides whether it holds — fixed before any measurement. A chapter computes its
measurement, applies that rule in code, and calls :func:`check`, which prints one line and
records ``{id, claim, rule, ours, paper, holds, note}`` in the chapter's ``claims.json``.
A claim that does not hold is recorded as such; it is never raised as an error.
``holds=None`` records a claim that cannot be tested offline ("not testable here").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import ConfigError, DataNotFoundError
from .paths import claims_file

_ROW = re.compile(r"^\|\s*([A-Z]+-\d+)\s*\|(.*)\|\s*$")
_PAPER = re.compile(r"^##\s+(.*?)\s+—")


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    claim: str
    evidence: str
    rule: str


def parse_ledger(text: str) -> dict[str, Claim]:
    claims: dict[str, Claim] = {}
    paper = ""
    for line in text.splitlines():
        m = _PAPER.match(line)
        if m:
            paper = m.group(1)
            continue
        m = _ROW.match(line.strip())
        if m:
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", m.group(2))]
            if len(cells) != 3:
                raise ConfigError(f"claims ledger row {m.group(1)} has {len(cells)} cells after the id, expected 3")
            claims[m.group(1)] = Claim(m.group(1), paper, *cells)
    return claims


@lru_cache(maxsize=4)
def _ledger(path: Path) -> dict[str, Claim]:
    if not path.is_file():
        raise DataNotFoundError(f"claims ledger {path} not found; it ships with the book as data/claims.md (restore it with git checkout -- data/claims.md, or set OUTLIERBOOK_CLAIMS)")
    return parse_ledger(path.read_text(encoding="utf-8"))


def ledger() -> dict[str, Claim]:
    return _ledger(claims_file())


def get(claim_id: str) -> Claim:
    claims = ledger()
    if claim_id not in claims:
        raise ConfigError(f"unknown claim id {claim_id!r}; the ledger data/claims.md has: {', '.join(claims)}")
    return claims[claim_id]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


_UNSET = object()


def model_of(recorder) -> str:
    """The short name of the model a chapter's claims were measured on (the chapter's ``claims_model`` when it
    trains its own models; else its ``model`` parameter; the embedded default when it has none), so the
    scorecard can give each model its own column."""
    from . import registry
    from .models.load import EMBEDDED, short_name

    chapter = getattr(recorder, "chapter", None)
    if chapter in registry.chapter_ids() and registry.get(chapter).claims_model:
        return registry.get(chapter).claims_model
    params = getattr(recorder, "params", None) or {}
    return short_name(str(params.get("model") or EMBEDDED))
VERDICT_WORDS = {True: "HOLDS", False: "DOES NOT HOLD", None: "NOT TESTABLE HERE"}


def check(recorder, claim_id: str, ours, paper, holds, note: str = "", old_rule=_UNSET) -> dict:
    """Record and print one claim check.

    ``holds`` is a bool (the chapter applied the ledger's rule), a callable ``rule(ours) -> bool``,
    or ``None`` when the claim cannot be tested here (say why in ``note``). ``old_rule`` is the
    verdict under the rule a dated ledger change replaced (bool, or ``None`` for not testable), for
    claims that change touched: it is recorded as ``holds_old_rule`` and shown beside the new verdict.
    """
    claim = get(claim_id)
    if callable(holds):
        holds = bool(holds(ours))
    if holds is not None:
        holds = bool(holds)
    verdict = VERDICT_WORDS[holds]
    record = {
        "id": claim_id,
        "paper": claim.paper,
        "claim": claim.claim,
        "rule": claim.rule,
        "ours": ours,
        "paper_value": paper,
        "holds": holds,
        "note": note,
        "profile": getattr(recorder, "profile", None),
        "model": model_of(recorder),
    }
    if old_rule is not _UNSET:
        record["holds_old_rule"] = None if old_rule is None else bool(old_rule)
    if recorder is not None:
        recorder.add_claim(record)
    smoke = " (quick profile: a smoke test of the code path, not the book's verdict)" if record["profile"] == "quick" else ""
    old = ("" if "holds_old_rule" not in record else
           f" | old rule: {VERDICT_WORDS[record['holds_old_rule']].lower()}")
    print(f"[{claim_id}] {verdict}{smoke}: {claim.claim} | ours {_fmt(ours)} | paper {_fmt(paper)} | rule: {claim.rule}"
          + (f" | {note}" if note else "") + old)
    return record
