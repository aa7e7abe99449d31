"""GLUE tasks used by the book: SST-2, STS-B, MRPC, RTE.

Read from ``<data>/glue/`` (``data/`` in the repository by default, or ``OUTLIERBOOK_DATA``, or a
``data_dir`` argument) or, with network, from ``datasets.load_dataset("glue", task)``
(``source="hub"``). Every loader returns a :class:`TaskData`: parallel lists of first sentences,
optional second sentences and labels (int class or float similarity score).

Every split is validated as it is read, so that a damaged file is an error naming the file and
line, never a number: each row has the format's number of fields, every label is in the task's
label set (an STS-B score is a finite number in [0, 5]), the split is not empty, and the split of
the book's own ``data/`` folder has the official example count (a truncated file is caught even
when it was cut at a line boundary). Folders named by ``OUTLIERBOOK_DATA`` may hold subsets.

Splits: ``train`` and ``dev`` for every task; ``test`` for STS-B and MRPC, whose test files here
carry labels (GLUE's own test splits are unlabelled). CoLA, QNLI, QQP and MNLI are not available
offline.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataNotFoundError, MalformedDataError, UnknownTaskError
from ..paths import data_dir, default_data_dir

csv.field_size_limit(10**7)


@dataclass(frozen=True)
class TaskSpec:
    name: str  # canonical short name (hub config name)
    folder: str
    files: dict  # split -> file name
    kind: str  # "classification" or "regression"
    num_labels: int
    metric: str  # headline metric
    pair: bool
    fields: tuple[int, int | None]  # (least, most) tab-separated fields of a row; None: extra trailing fields allowed
    counts: dict  # split -> official number of examples


# Official example counts of the files in data/glue/ (data/README.md).
COUNTS = {
    "sst2": {"train": 67349, "dev": 872},
    "stsb": {"train": 5749, "dev": 1500, "test": 1379},
    "mrpc": {"train": 3668, "dev": 408, "test": 1725},
    "rte": {"train": 2490, "dev": 277},
}


TASKS = {
    "sst2": TaskSpec("sst2", "SST-2", {"train": "train.tsv", "dev": "dev.tsv"}, "classification", 2, "accuracy", False,
                     (2, 2), COUNTS["sst2"]),
    "stsb": TaskSpec("stsb", "STS-B", {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"},
                     "regression", 1, "spearman", True, (7, None), COUNTS["stsb"]),
    "mrpc": TaskSpec("mrpc", "MRPC", {"train": "train.tsv", "dev": "dev.tsv", "test": "msr_paraphrase_test.txt"},
                     "classification", 2, "accuracy", True, (5, 5), COUNTS["mrpc"]),
    "rte": TaskSpec("rte", "RTE", {"train": "train.tsv", "dev": "dev.tsv"}, "classification", 2, "accuracy", True,
                    (4, 4), COUNTS["rte"]),
}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "sts": "stsb"}
UNAVAILABLE = {"cola", "qnli", "qqp", "mnli", "wnli"}


@dataclass
class TaskData:
    task: str
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.text_a)

    def subset(self, indices) -> "TaskData":
        idx = list(indices)
        return TaskData(self.task, self.split, [self.text_a[i] for i in idx],
                        None if self.text_b is None else [self.text_b[i] for i in idx], [self.labels[i] for i in idx])


def task_spec(task: str) -> TaskSpec:
    key = task.strip().lower()
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    if key in UNAVAILABLE:
        raise UnknownTaskError(
            f"task {task!r} is a GLUE task the book cannot load offline; available offline: {', '.join(TASKS)} "
            "(with network, use source='hub')"
        )
    raise UnknownTaskError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")


_FORMAT = "the file is damaged or not the GLUE format of data/README.md"


def _rows(path: Path, fields: tuple[int, int | None], header: bool):
    least, most = fields
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            yield from _checked_rows(path, csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), least, most, header)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MalformedDataError(f"{path}: cannot be read as tab-separated UTF-8 text ({type(exc).__name__}: "
                                 f"{str(exc)[:80]}); {_FORMAT}") from None


def _checked_rows(path: Path, reader, least: int, most: int | None, header: bool):
    for lineno, row in enumerate(reader, start=1):
        if header and lineno == 1:
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) < least or (most is not None and len(row) > most):
            expected = f"{least}" if most == least else f"at least {least}"
            raise MalformedDataError(f"{path}:{lineno}: expected {expected} tab-separated fields, found {len(row)}; {_FORMAT}")
        yield lineno, row


def _label(path: Path, lineno: int, text: str, spec: TaskSpec):
    """A class id in ``range(num_labels)`` or, for regression, a finite score in [0, 5]."""
    if spec.kind == "regression":
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0.0 <= value <= 5.0):
            raise MalformedDataError(f"{path}:{lineno}: score {text!r} is not a number in [0, 5]; {_FORMAT}")
        return value
    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in range(spec.num_labels):
        raise MalformedDataError(f"{path}:{lineno}: label {text!r} is not one of "
                                 f"{', '.join(map(str, range(spec.num_labels)))}; {_FORMAT}")
    return value


def _text(path: Path, lineno: int, text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise MalformedDataError(f"{path}:{lineno}: {what} is empty; {_FORMAT}")
    return text


def _read_local(spec: TaskSpec, split: str, root: Path) -> TaskData:
    path = root / "glue" / spec.folder / spec.files[split]
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} not found; the {spec.folder} files belong in <data>/glue/{spec.folder}/ "
            "(the layout of data/README.md), set OUTLIERBOOK_DATA, or use source='hub' with network"
        )
    # (column of text_a, column of text_b or None, column of the label); STS-B has no header
    columns = {"sst2": (0, None, 1), "stsb": (5, 6, 4), "mrpc": (3, 4, 0), "rte": (0, 1, 2)}[spec.name]
    a, b, y = [], [], []
    for lineno, row in _rows(path, spec.fields, header=spec.name != "stsb"):
        y.append(_label(path, lineno, row[columns[2]], spec))
        a.append(_text(path, lineno, row[columns[0]], "the first sentence"))
        if columns[1] is not None:
            b.append(_text(path, lineno, row[columns[1]], "the second sentence"))
    if not a:
        raise MalformedDataError(f"{path} holds no examples; the file is empty or damaged")
    official = spec.counts.get(split)
    if official is not None and root.resolve() == default_data_dir().resolve() and len(a) != official:
        raise MalformedDataError(
            f"{path} has {len(a)} examples, the official {spec.folder} {split} split has {official}; the file is "
            "truncated or was replaced: restore it with git checkout -- data/"
        )
    return TaskData(spec.name, split, a, b if columns[1] is not None else None, y)


def _read_hub(spec: TaskSpec, split: str) -> TaskData:  # pragma: no cover - needs network
    import datasets

    if split == "test":
        raise UnknownTaskError(f"GLUE's {spec.name} test split on the hub is unlabelled; use split='dev' with source='hub'")
    hub_split = {"train": "train", "dev": "validation", "test": "test"}[split]
    ds = datasets.load_dataset("glue", spec.name, split=hub_split)
    cols = {"sst2": ("sentence", None), "stsb": ("sentence1", "sentence2"),
            "mrpc": ("sentence1", "sentence2"), "rte": ("sentence1", "sentence2")}[spec.name]
    return TaskData(spec.name, split, list(ds[cols[0]]), None if cols[1] is None else list(ds[cols[1]]), list(ds["label"]))


def load_task(task: str, split: str = "dev", data_dir_override=None, source: str = "local") -> TaskData:
    """Load one split of a GLUE task (``source="local"`` files or ``"hub"`` with network)."""
    spec = task_spec(task)
    if split not in spec.files:
        raise UnknownTaskError(f"task {spec.name} has no split {split!r}; use one of: {', '.join(spec.files)}")
    if source == "hub":
        return _read_hub(spec, split)
    if source != "local":
        raise UnknownTaskError(f"unknown data source {source!r}; use 'local' or 'hub'")
    return _read_local(spec, split, data_dir(data_dir_override))
