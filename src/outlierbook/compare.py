"""Paper numbers beside ours.

Each paper's numbers are transcribed once into ``results/paper/<paper>.csv`` with the columns
``paper, table, page, setting, metric, value, note``. :func:`compare` joins them with our own
tidy rows (``setting, metric, value``) and renders ``paper | ours | Δ | verdict``.
The verdict uses a tolerance chosen by the chapter before it measures (``tol``, in the metric's
units); quick-profile numbers are labelled "not comparable (quick)" instead of judged.
"""

from __future__ import annotations

import pandas as pd

from .errors import ConfigError, DataNotFoundError
from .paths import paper_numbers_dir

PAPER_COLUMNS = ["paper", "table", "page", "setting", "metric", "value", "note"]
PAPERS = ("outlier_suppression", "understanding", "quantizable", "naq", "model_cards")


def load_paper(paper: str, table: str | None = None) -> pd.DataFrame:
    """The transcribed numbers of one paper (optionally one table, e.g. ``"Table 1"``)."""
    if paper not in PAPERS:
        raise ConfigError(f"unknown paper {paper!r}; use one of: {', '.join(PAPERS)}")
    path = paper_numbers_dir() / f"{paper}.csv"
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found; paper numbers live in results/paper/<paper>.csv (committed)")
    df = pd.read_csv(path, dtype={"page": str, "note": str}, keep_default_na=False)
    missing = set(PAPER_COLUMNS) - set(df.columns)
    if missing:
        raise ConfigError(f"{path} lacks column(s) {', '.join(sorted(missing))}; expected {', '.join(PAPER_COLUMNS)}")
    df["value"] = pd.to_numeric(df["value"])
    if table is not None:
        df = df[df["table"] == table]
        if df.empty:
            raise ConfigError(f"{path} has no rows for {table!r}")
    return df.reset_index(drop=True)


def compare(paper: pd.DataFrame, ours: pd.DataFrame, on=("setting", "metric"), tol: float = 1.0,
            profile: str = "full", higher_is_better: bool = True) -> pd.DataFrame:
    """Outer-join paper and ours on ``on``; add Δ = ours − paper and a verdict.

    verdict: "within ±tol", "better by > tol", "worse by > tol", "paper only", "ours only", or
    "not comparable (quick)" for quick-profile runs. Rows keep the paper's order (its transcription
    order), then our rows the paper does not have, in our order.
    """
    on = list(on)
    left = paper[on + ["value", "table"]].rename(columns={"value": "paper"}).assign(_paper_order=range(len(paper)))
    right = ours[on + ["value"]].rename(columns={"value": "ours"}).assign(_our_order=range(len(ours)))
    df = left.merge(right, on=on, how="outer")  # an outer merge sorts its keys: restore the paper's row order
    df = df.sort_values(["_paper_order", "_our_order"], na_position="last", kind="stable").reset_index(drop=True)
    df["Δ"] = df["ours"] - df["paper"]

    def verdict(row) -> str:
        if pd.isna(row["ours"]):
            return "paper only"
        if pd.isna(row["paper"]):
            return "ours only"
        if profile != "full":
            return "not comparable (quick)"
        d = row["Δ"] if higher_is_better else -row["Δ"]
        if abs(d) <= tol:
            return f"within ±{tol:g}"
        return f"better by > {tol:g}" if d > 0 else f"worse by > {tol:g}"

    df["verdict"] = df.apply(verdict, axis=1)
    return df[["table"] + on + ["paper", "ours", "Δ", "verdict"]]


def as_text(df: pd.DataFrame, digits: int = 2) -> str:
    """A plain-text rendering for checked notebook cells (stable across runs, unlike HTML)."""
    return df.to_string(index=False, float_format=lambda v: f"{v:.{digits}f}", na_rep="—")


def styled(df: pd.DataFrame, uid: str, digits: int = 2, caption: str | None = None):
    """A pandas Styler with a fixed uuid (stable HTML) for the rendered book."""
    num = df.select_dtypes("number").columns
    sty = df.style.set_uuid(uid).format({c: f"{{:.{digits}f}}" for c in num}, na_rep="—").hide(axis="index")
    return sty.set_caption(caption) if caption else sty
