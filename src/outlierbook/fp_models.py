"""The page "The FP models": how each fine-tuned model the full profile uses was chosen, and whether it
clears the ledger's competence precondition.

Generated at book build from ``results/fp_models/<model>/<task>.json`` (written by
``python -m outlierbook select-finetune``, :mod:`outlierbook.models.selection`): the held-out accuracy of
every (learning rate, epochs) tried on a held-out part of the *training* split, the budget chosen from it,
the dev score of the model trained on that budget beside the majority class, and the verdict. Nothing is
typed in. ``python -m outlierbook book`` writes :func:`fragment` to ``book/_generated/fp_models.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .atomic import atomic_write_text
from .paths import repo_root, results_dir

GENERATED = Path("book") / "_generated" / "fp_models.md"


def stored(root: Path | None = None) -> list[dict]:
    """Every stored selection record, ordered by model and task."""
    folder = Path(root or results_dir()) / "fp_models"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*/*.json"))]


def _search_table(record: dict) -> str:
    rows = pd.DataFrame(record["rows"])
    wide = rows.pivot(index="lr", columns="epochs", values="held_out").sort_index()
    head = "| learning rate | " + " | ".join(f"{e} epoch{'s' if e > 1 else ''}" for e in wide.columns) + " |"
    lines = [head, "|" + "---|" * (len(wide.columns) + 1)]
    chosen = record["chosen"]
    for lr, row in wide.iterrows():
        cells = [(f"**{v:.2f}**" if lr == chosen["lr"] and e == chosen["epochs"] else f"{v:.2f}")
                 for e, v in row.items()]
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fixed_budgets(records: list[dict]) -> str:
    """The tasks the full profile trains on the fixed budgets of ``models/tasks.py`` (no stored selection for the
    embedded model), with those budgets."""
    from .models.load import EMBEDDED
    from .models.tasks import BUDGETS, budget

    chosen = {r["task"] for r in records if r["model"] == EMBEDDED}
    rows = []
    for task in BUDGETS["full"]:
        if task not in chosen:
            cfg = budget(task, "full", model=EMBEDDED)
            rows.append(f"| {task} | {cfg.steps} | {cfg.batch_size} | {cfg.lr:g} |")
    if not rows:
        return ""
    return "\n".join([f"The other tasks of the full profile train fixed budgets ({EMBEDDED}; `models/tasks.py`):", "",
                      "| task | steps | batch | learning rate |", "|---|---|---|---|", *rows, ""])


def fragment(root: Path | None = None) -> str:
    """The generated part of the page: a summary table, then each task's search."""
    records = stored(root)
    if not records:
        return ("No fine-tuning budget has been selected yet: every task uses the fixed budgets of "
                "`models/tasks.py`.\n\n" + fixed_budgets(records))
    out = ["| model | task | chosen | held-out | dev | majority class (dev) | competent | run |",
           "|---|---|---|---|---|---|---|---|"]
    for r in records:
        dev, c = r["dev"], r["chosen"]
        best = max(x["held_out"] for x in r["rows"] if x["lr"] == c["lr"] and x["epochs"] == c["epochs"])
        out.append(f"| {r['model']} | {r['task']} | lr {c['lr']:g}, {c['epochs']} epochs | {best:.2f} | "
                   f"{dev['value']:.2f} | {dev['majority']:.2f} | {'yes' if dev['competent'] else '**no**'} | "
                   f"{str(r.get('git_sha', '?'))[:10]}, {str(r.get('finished_utc', '?'))[:10]} |")
    out += ["", fixed_budgets(records)]
    for r in records:
        out += ["", f"## {r['model']}: {r['task']}", "",
                f"Held-out {r['metric']} ({r['n_held_out']} of {r['n_train']} training examples held out; their "
                f"majority class is {r['majority_held_out']:.2f}) after each epoch, per learning rate; the chosen "
                "budget in bold:", "", _search_table(r)]
    return "\n".join(out) + "\n"


def write_fragment(root: Path | None = None) -> Path:
    path = repo_root() / GENERATED
    atomic_write_text(path, fragment(root))
    return path
