r"""The ledger's *competent FP model* precondition.

A comparison of quantization methods on a task tests something only if the FP model has learnt the
task. The ledger fixes the rule: the FP model must beat the majority class by at least
:data:`MARGIN` = 5 points on the evaluation split,

.. math:: \text{competent} \iff m_\text{FP} \ge b + 5, \qquad
          b = 100\,\max_c \tfrac{|\{i : y_i = c\}|}{n} \ \text{(accuracy)}, \quad b = 50 \ \text{(STS-B Spearman)}.

Tasks that fail it are reported beside a claim's average, labelled, but do not enter it; with fewer
than two competent tasks the claim is "not testable here".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .data.glue import task_spec

MARGIN = 5.0
STSB_BASELINE = 50.0  # the ledger's stand-in for a majority class on a Spearman scale


def majority_baseline(task: str, labels) -> float:
    """The metric of always predicting the most frequent class (×100); 50 for STS-B's Spearman."""
    if task_spec(task).kind == "regression":
        return STSB_BASELINE
    labels = list(labels)
    if not labels:
        raise ValueError(f"{task}: no labels to compute a majority class from")
    return 100.0 * Counter(labels).most_common(1)[0][1] / len(labels)


def is_competent(task: str, fp_score: float, labels) -> bool:
    """Whether an FP score clears the precondition on the split whose ``labels`` are given."""
    return fp_score >= majority_baseline(task, labels) + MARGIN


def competent_tasks(fp: dict[str, float], labels: dict[str, list]) -> dict[str, bool]:
    """Per task, whether its FP model is competent (``fp`` and ``labels`` keyed by task)."""
    return {t: is_competent(t, v, labels[t]) for t, v in fp.items()}


MIN_TASKS = 2  # the ledger: with fewer competent tasks than this, an averaged claim is not testable


def status(fp: dict[str, float], labels: dict[str, list]) -> dict[str, dict]:
    """Per task: its FP score, the majority-class baseline on the same split and whether it is competent."""
    out = {}
    for t, v in fp.items():
        b = majority_baseline(t, labels[t])
        out[t] = {"fp": float(v), "majority": b, "competent": bool(v >= b + MARGIN)}
    return out


def describe(state: dict[str, dict], tasks=None) -> str:
    """One line for a claim's note: which of ``tasks`` (default: all) the precondition excluded, with the
    numbers that decided it."""
    out = [f"{t} not competent (FP {s['fp']:.2f} < majority {s['majority']:.2f} + {MARGIN:g})"
           for t, s in state.items() if not s["competent"] and (tasks is None or t in tasks)]
    return "; ".join(out) if out else "every task competent"


@dataclass(frozen=True)
class Averages:
    """Row means of a (setting × task) table under the new and the old rule.

    ``new``: mean over the competent tasks only (``None`` when fewer than :data:`MIN_TASKS` are
    competent: the claim is not testable); ``old``: mean over every task, the rule before the
    ledger's precondition; ``excluded``: each excluded task's column, reported beside the average."""

    new: "pd.Series | None"
    old: "pd.Series"
    tasks: tuple
    excluded: dict

    def verdicts(self, rule) -> tuple[bool | None, bool]:
        """(the new rule's verdict, the old rule's) for ``rule(averages) -> bool``: the new one is ``None``
        (not testable here) with fewer than :data:`MIN_TASKS` competent tasks."""
        return (None if self.new is None else bool(rule(self.new))), bool(rule(self.old))

    def shown(self, rows, digits: int = 2) -> dict:
        """The averages of ``rows`` a claim records (the competent tasks', else every task's), with each
        excluded task's values beside them, labelled."""
        avg = self.new if self.new is not None else self.old
        out = {r: round(float(avg[r]), digits) for r in rows}
        out.update({f"{t} (excluded)": {r: round(float(col[r]), digits) for r in rows}
                    for t, col in self.excluded.items()})
        return out


def averages(table, state: dict[str, dict]) -> Averages:
    """:class:`Averages` of ``table``'s task columns (columns not in ``state`` are ignored)."""
    tasks = [t for t in table.columns if t in state]
    kept = tuple(t for t in tasks if state[t]["competent"])
    excluded = {t: table[t] for t in tasks if t not in kept}
    new = table[list(kept)].mean(axis=1) if len(kept) >= MIN_TASKS else None
    return Averages(new, table[tasks].mean(axis=1), kept, excluded)


def note(state: dict[str, dict], a: Averages) -> str:
    """The precondition's part of a claim's note: the excluded tasks and why, and whether the claim is testable."""
    parts = [describe(state, a.excluded)]
    if a.new is None:
        parts.append(f"fewer than {MIN_TASKS} competent tasks: not testable here")
    return "; ".join(parts)
