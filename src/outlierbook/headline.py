"""The numbers a chapter shows as its results.

A chapter computes its tables in whatever profile it runs. The **quick** profile is a smoke test
(short budgets, a hundred examples, one seed): its numbers prove the code runs, not what the paper's
claims say. The **full** profile's run is stored with the book (``results/<chapter>/full/``), so a
quick build can show the real run's tables where the reader looks for results — in the section that
derives them, beside the paper's numbers — and keep its own numbers as the labelled smoke test.

:func:`headline_table` chooses, for one table, between the table this run computed and the same table
rebuilt from the stored full run's ``metrics.json`` keys ``prefix/row/…/column``
(:func:`outlierbook.results.full_profile_table`). The full run's table keeps the row and column order
of this run's table (the paper's order), followed by the rows and columns only the full run has.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .results import full_profile_table, provenance, stored_full_run

SMOKE_TEST = "quick profile: a smoke test, not comparable with the paper"


@dataclass(frozen=True)
class Headline:
    """One result table and where its numbers come from.

    ``profile`` is the profile of the numbers in ``table`` (``"full"`` when a stored full run is shown
    in a quick build), so :func:`outlierbook.compare.compare` judges them, or labels them "not
    comparable", by what they are, not by how the book was built. ``source`` is one line for a caption.
    """

    table: pd.DataFrame
    profile: str
    source: str

    @property
    def from_stored_run(self) -> bool:
        return self.source.startswith("full run of commit")

    def caption(self, text: str) -> str:
        return f"{text}. Ours: {self.source}"

    def styled(self, uid: str, caption: str, digits: int = 2):
        """The table for the rendered book (fixed uuid for stable HTML), captioned with its source."""
        num = self.table.select_dtypes("number").columns
        return (self.table.style.set_uuid(uid).format({c: f"{{:.{digits}f}}" for c in num}, na_rep="—")
                .set_caption(self.caption(caption)))


def _ordered(labels, first, last=()) -> list:
    """``labels`` with those in ``first`` first (in ``first``'s order), those in ``last`` last, the rest between."""
    labels = list(labels)
    tail = [x for x in last if x in labels]
    head = [x for x in first if x in labels and x not in tail]
    return head + [x for x in labels if x not in head and x not in tail] + tail


def headline_table(chapter: str, profile: str, prefix: str, current: pd.DataFrame,
                   column_order=(), last_columns=("average",), root=None) -> Headline:
    """The table chapter ``chapter`` shows as its result for the metrics stored under ``prefix``.

    - In the full profile, ``current`` (this run's numbers are the full run's).
    - In a quick build whose chapter has a stored full run with ``prefix`` rows, that run's table:
      row keys ``a/b`` become tuples when ``current`` has a two-level row index; rows in ``current``'s
      order, then the others; columns in ``current``'s order, then ``column_order``, with
      ``last_columns`` (e.g. the task average) at the end.
    - Otherwise ``current``, labelled as the smoke test it is.
    """
    if profile == "full":
        return Headline(current, "full", "this run (full profile)")
    stored = stored_full_run(chapter, root)
    table = full_profile_table(chapter, prefix, root) if stored else None
    if table is None:
        why = "the stored full run predates this table" if stored else "the full profile has not been stored"
        return Headline(current, profile, f"this run ({SMOKE_TEST}; {why})")
    levels = current.index.nlevels
    if levels > 1:
        table.index = pd.MultiIndex.from_tuples([tuple(str(k).split("/", levels - 1)) for k in table.index],
                                                names=current.index.names)
    else:
        table.index.name = current.index.name
    rows = _ordered(table.index, list(current.index))
    columns = _ordered(table.columns, list(current.columns) + [c for c in column_order if c not in current.columns],
                       last_columns)
    table = table.loc[rows, columns]
    table.columns.name = current.columns.name
    return Headline(table, "full", provenance(stored))


def figure_data(chapter: str, profile: str, prefix: str, current: pd.DataFrame, root=None) -> Headline:
    """The data a figure draws, indexed by numbers (hidden dimension, token position, clip value):
    like :func:`headline_table` (stored as ``prefix/<index>/<column>`` metrics), with the stored run's
    index turned back into numbers and sorted. ``Headline.source`` names the run for the figure's title."""
    shown = headline_table(chapter, profile, prefix, current.rename(index=str), root=root)
    if not shown.from_stored_run:
        return Headline(current, shown.profile, shown.source)
    table = shown.table.copy()
    numbers = pd.to_numeric(table.index)
    table.index = pd.Index(numbers, name=current.index.name)
    return Headline(table.sort_index()[list(current.columns)], shown.profile, shown.source)


def experiment_rows(chapter: str, profile: str, experiment: str, current: pd.DataFrame, wide: tuple[str, ...] = (),
                    root=None) -> Headline:
    """The rows a figure or table draws for one experiment (stored in ``table.csv`` with ``experiment``):
    the stored full run's in a quick build that has them, else ``current``. ``wide``: the id columns of a
    table that was stored melted (``metric``/``value`` columns) and is turned back into ``current``'s shape."""
    stored = None if profile == "full" else stored_full_run(chapter, root)
    table = None if stored is None else stored["table"]
    if table is not None and "experiment" in table and (table["experiment"] == experiment).any():
        rows = table[table["experiment"] == experiment].reset_index(drop=True)
        if wide:
            rows = rows.pivot_table(index=list(wide), columns="metric", values="value", sort=False).reset_index()
            rows.columns.name = None
            rows = rows[[c for c in current.columns if c in rows.columns]]
            for c in wide:  # the CSV widened id columns to float where other experiments left them empty
                if c in current.columns:
                    rows[c] = rows[c].astype(current[c].dtype)
        return Headline(rows, "full", provenance(stored))
    if profile == "full":
        return Headline(current, "full", "this run (full profile)")
    why = "the stored full run predates this experiment" if stored else "the full profile has not been stored"
    return Headline(current, profile, f"this run ({SMOKE_TEST}; {why})")


def figure_metrics(prefix: str, frame: pd.DataFrame) -> dict:
    """The ``prefix/<index>/<column>`` metrics that :func:`figure_data` reads back."""
    return {f"{prefix}/{i}/{c}": float(v) for i, row in frame.iterrows() for c, v in row.items()}


def headline_metric(chapter: str, profile: str, name: str, current: float, root=None) -> tuple[float, Headline]:
    """One number a chapter shows as its result: the stored full run's ``metrics.json[name]`` in a quick
    build that has it, else ``current``; returned with a one-cell :class:`Headline` naming its source."""
    stored = None if profile == "full" else stored_full_run(chapter, root)
    if stored is not None and name in stored["metrics"]:
        value = float(stored["metrics"][name])
        return value, Headline(pd.DataFrame({"value": [value]}, index=[name]), "full", provenance(stored))
    label = "this run (full profile)" if profile == "full" else \
        f"this run ({SMOKE_TEST}; the full profile has not been stored)"
    return current, Headline(pd.DataFrame({"value": [current]}, index=[name]), profile, label)


def run_label(profile: str) -> str:
    """The line above a cell that prints this run's own numbers: in a quick build, says it is the smoke test."""
    return "this run (full profile)" if profile == "full" else \
        f"this run ({SMOKE_TEST}; the stored full run's table, where there is one, follows)"
