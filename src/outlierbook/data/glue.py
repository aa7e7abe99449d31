"""GLUE tasks used by the book: SST-2, STS-B, MRPC, RTE.

Read from ``<data>/glue/`` (``../shared/data`` by default, or ``OUTLIERBOOK_DATA``, or a
``data_dir`` argument) or, with network, from ``datasets.load_dataset("glue", task)``
(``source="hub"``). Every loader returns a :class:`TaskData`: parallel lists of first sentences,
optional second sentences and labels (int class or float similarity score).

Splits: ``train`` and ``dev`` for every task; ``test`` for STS-B and MRPC, whose test files here
carry labels (GLUE's own test splits are unlabelled). CoLA, QNLI, QQP and MNLI are not available
offline.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataNotFoundError, MalformedDataError, UnknownTaskError
from ..paths import data_dir

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


TASKS = {
    "sst2": TaskSpec("sst2", "SST-2", {"train": "train.tsv", "dev": "dev.tsv"}, "classification", 2, "accuracy", False),
    "stsb": TaskSpec("stsb", "STS-B", {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"},
                     "regression", 1, "spearman", True),
    "mrpc": TaskSpec("mrpc", "MRPC", {"train": "train.tsv", "dev": "dev.tsv", "test": "msr_paraphrase_test.txt"},
                     "classification", 2, "accuracy", True),
    "rte": TaskSpec("rte", "RTE", {"train": "train.tsv", "dev": "dev.tsv"}, "classification", 2, "accuracy", True),
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


def _rows(path: Path, min_fields: int, header: bool):
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(reader, start=1):
            if header and lineno == 1:
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < min_fields:
                raise MalformedDataError(
                    f"{path}:{lineno}: expected at least {min_fields} tab-separated fields, found {len(row)}; "
                    "the file is damaged or not the GLUE format described in ../shared/data/README.md"
                )
            yield lineno, row


def _label(path: Path, lineno: int, text: str, cast):
    try:
        return cast(text)
    except ValueError:
        raise MalformedDataError(f"{path}:{lineno}: label {text!r} is not a valid {cast.__name__}; "
                                 "the file is damaged or in another format") from None


def _read_local(spec: TaskSpec, split: str, root: Path) -> TaskData:
    path = root / "glue" / spec.folder / spec.files[split]
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} not found; the {spec.folder} files belong in <data>/glue/{spec.folder}/ "
            "(see ../shared/data/README.md), set OUTLIERBOOK_DATA, or use source='hub' with network"
        )
    a, b, y = [], [], []
    if spec.name == "sst2":
        for lineno, row in _rows(path, 2, header=True):
            a.append(row[0].strip())
            y.append(_label(path, lineno, row[1], int))
        return TaskData(spec.name, split, a, None, y)
    if spec.name == "stsb":  # genre, file, year, id, score, s1, s2 (some lines have extra fields)
        for lineno, row in _rows(path, 7, header=False):
            y.append(_label(path, lineno, row[4], float))
            a.append(row[5].strip())
            b.append(row[6].strip())
    elif spec.name == "mrpc":  # Quality, #1 ID, #2 ID, #1 String, #2 String
        for lineno, row in _rows(path, 5, header=True):
            y.append(_label(path, lineno, row[0], int))
            a.append(row[3].strip())
            b.append(row[4].strip())
    elif spec.name == "rte":  # sentence1, sentence2, label (0 = entailment), idx
        for lineno, row in _rows(path, 3, header=True):
            a.append(row[0].strip())
            b.append(row[1].strip())
            y.append(_label(path, lineno, row[2], int))
    if not a:
        raise MalformedDataError(f"{path} holds no examples; the file is empty or damaged")
    return TaskData(spec.name, split, a, b, y)


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
