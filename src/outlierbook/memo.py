"""Per-experiment memo: a long run that stops loses at most the experiment in progress.

``Memo(chapter, profile)`` keeps one small JSON file per finished experiment under
``<cache>/memo/<chapter>/<profile>/<src hash>/<context digest>/``, named by a digest of the experiment's
key, written atomically. The library's source hash is part of the folder, so a code change never reuses a
result computed by other code; so is ``context``, the run's parameters every experiment depends on (model,
data source, calibration size, seed), so a run with ``--set model=...`` never reuses another model's
results. ``memo(key, compute)`` returns the stored value or computes, stores and returns it;
:func:`kept` is the same for an experiment on one task's FP model, whose key always names the task, the FP
checkpoint and the evaluation size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomic import atomic_write_text
from .paths import cache_dir


class Memo:
    def __init__(self, chapter: str, profile: str, enabled: bool = True, context: dict | None = None):
        from .runner import src_hash

        self.context = dict(context or {})
        self.folder: Path = cache_dir() / "memo" / chapter / profile / src_hash() / _digest(self.context)
        self.enabled = enabled
        self.hits = self.misses = 0

    def _path(self, key: dict) -> Path:
        return self.folder / (_digest(key) + ".json")

    def __call__(self, key: dict, compute):
        path = self._path(key)
        if self.enabled and path.is_file():
            try:
                stored = json.loads(path.read_text())
                if stored.get("key") == json.loads(json.dumps(key, sort_keys=True, default=str)):
                    self.hits += 1
                    return stored["value"]
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged file is recomputed
        value = compute()
        self.misses += 1
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"key": key, "value": value}, sort_keys=True, default=str))
        return value


def kept(memo: Memo | None, setup, key: dict, compute):
    """``compute()``, or with a :class:`Memo` its stored result for ``key`` on ``setup``'s model: the key gains
    the task, the FP checkpoint (:attr:`TaskSetup.checkpoint`) and the evaluation size, so another fine-tune or
    another evaluation split is another experiment."""
    if memo is None:
        return compute()
    return memo({**key, "task": setup.task, "checkpoint": setup.checkpoint, "n_eval": len(setup.eval_data)}, compute)


def _digest(obj: dict) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
