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
