r"""Choosing a fine-tuning budget on held-out *training* data, never on the evaluation split.

A claim that compares quantization methods on a task is only a test when the FP model has learnt the
task (the ledger's *competent FP model* precondition). The full profile's fixed step budgets left RTE at
chance, so the budget of a small task is chosen the way the papers choose theirs, but without looking at
the dev split the book reports:

1. Split the training split into a *fit* part and a *held-out* part (``fraction`` of it, stratified by
   label for classification, seeded).
2. For each maximum learning rate :math:`\eta` in the search space, fine-tune on the fit part with a linear
   warm-up over 10 % of :math:`S = E_{\max}\lceil n_\text{fit}/B\rceil` steps and a linear decay to zero at
   :math:`S`, and score the held-out part at the end of every epoch :math:`e = 1 \dots E_{\max}`.
3. Keep the best :math:`(\eta, e)` (ties: fewer epochs, then the smaller rate).
4. Fine-tune on the *whole* training split with that rate, the same schedule measured in epochs
   (:math:`S' = E_{\max}\lceil n/B\rceil`), stopping after :math:`e\lceil n/B\rceil` steps; score dev once,
   and compare it with the majority class (:mod:`outlierbook.competence`).

``python -m outlierbook select-finetune rte`` runs it and stores ``results/fp_models/<model>/<task>.json``;
from then on :func:`outlierbook.models.tasks.budget` gives that run to the full profile. Each learning
rate's run is memoised, so an interrupted search resumes at the next rate.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..competence import majority_baseline, MARGIN
from ..data.glue import TaskData, load_task, task_spec
from ..errors import ConfigError
from ..paths import results_dir
from .load import EMBEDDED, short_name

LEARNING_RATES = (5e-5, 1e-4, 2e-4)
MAX_EPOCHS = 4
BATCH_SIZE = 32
HOLDOUT = 0.2


def holdout_split(data: TaskData, fraction: float = HOLDOUT, seed: int = 0) -> tuple[TaskData, TaskData]:
    """``(fit, held_out)``: a seeded ``fraction`` of every class (of all examples for regression) held out."""
    if not 0 < fraction < 1:
        raise ConfigError(f"held-out fraction {fraction} must lie strictly between 0 and 1, e.g. 0.2")
    generator = torch.Generator().manual_seed(seed)
    regression = task_spec(data.task).kind == "regression"
    groups = [list(range(len(data)))] if regression else [
        [i for i, y in enumerate(data.labels) if y == c] for c in sorted(set(data.labels))]
    held: list[int] = []
    for members in groups:
        take = round(fraction * len(members))
        order = torch.randperm(len(members), generator=generator)[:take].tolist()
        held += [members[j] for j in order]
    held_set = set(held)
    if not held_set or len(held_set) == len(data):
        raise ConfigError(f"{data.task}: {len(data)} examples cannot be split {fraction:.0%} held out; use more data")
    return data.subset([i for i in range(len(data)) if i not in held_set]), data.subset(sorted(held_set))


def choose(rows: list[dict]) -> dict:
    """The best row by held-out score; ties go to fewer epochs, then to the smaller learning rate."""
    if not rows:
        raise ConfigError("no held-out scores to choose from; the search ran no configuration")
    return max(rows, key=lambda r: (r["held_out"], -r["epochs"], -r["lr"]))


def final_config(task: str, model: str, chosen: dict, n_train: int, max_epochs: int, batch_size: int = BATCH_SIZE,
                 seed: int = 0):
    """The whole-training-split run for ``chosen`` (epochs converted to steps of ``n_train`` examples)."""
    from .tasks import FinetuneConfig

    per_epoch = math.ceil(n_train / batch_size)
    return FinetuneConfig(model=model, task=task_spec(task).name, steps=chosen["epochs"] * per_epoch,
                          schedule_steps=max_epochs * per_epoch, lr=chosen["lr"], batch_size=batch_size, seed=seed)


def selection_path(task: str, model: str = EMBEDDED) -> Path:
    return results_dir() / "fp_models" / short_name(model) / f"{task_spec(task).name}.json"


def load_selection(task: str, model: str = EMBEDDED) -> dict | None:
    path = selection_path(task, model)
    return json.loads(path.read_text()) if path.is_file() else None


def selected_config(task: str, model: str = EMBEDDED):
    """The stored choice for ``task`` and ``model`` as a :class:`FinetuneConfig`, or None when none is stored."""
    from .tasks import FinetuneConfig

    stored = load_selection(task, model)
    if stored is None:
        return None
    return FinetuneConfig(**{**stored["config"], "model": model})


def search(task: str, model: str = EMBEDDED, lrs=LEARNING_RATES, max_epochs: int = MAX_EPOCHS,
           fraction: float = HOLDOUT, seed: int = 0, batch_size: int = BATCH_SIZE, memo=None,
           data_source: str = "local", progress: bool = True) -> dict:
    """Held-out score of every learning rate after every epoch (reads the *training* split only)."""
    from .load import load_tokenizer
    from .tasks import FinetuneConfig, evaluate, finetune

    spec = task_spec(task)
    train = load_task(spec.name, "train", source=data_source)
    fit, held = holdout_split(train, fraction, seed)
    tokenizer = load_tokenizer(model)
    metric = "spearman" if spec.kind == "regression" else "accuracy"
    per_epoch = math.ceil(len(fit) / batch_size)
    rows = []
    for lr in lrs:
        def run(lr=lr):
            scores: list[float] = []

            def after_step(step, m):
                if step % per_epoch == 0:
                    m.eval()
                    scores.append(evaluate(m, tokenizer, held)[metric])
                    m.train()

            cfg = FinetuneConfig(model=model, task=spec.name, steps=max_epochs * per_epoch, lr=lr,
                                 batch_size=batch_size, seed=seed)
            finetune(cfg, train=fit, progress=progress, data_source=data_source, after_step=after_step)
            return scores

        key = {"task": spec.name, "model": short_name(model), "lr": lr, "max_epochs": max_epochs,
               "fraction": fraction, "seed": seed, "batch_size": batch_size}
        scores = memo(key, run) if memo is not None else run()
        rows += [{"lr": lr, "epochs": e + 1, "held_out": s} for e, s in enumerate(scores)]
    return {"task": spec.name, "metric": metric, "rows": rows, "n_train": len(train), "n_fit": len(fit),
            "n_held_out": len(held), "majority_held_out": majority_baseline(spec.name, held.labels),
            "search": {"lrs": list(lrs), "max_epochs": max_epochs, "batch_size": batch_size, "warmup": 0.1,
                       "held_out_fraction": fraction, "seed": seed}}


def select_finetune(task: str, model: str = EMBEDDED, data_source: str = "local", progress: bool = True,
                    **search_kwargs) -> dict:
    """Search, fine-tune the chosen budget on the whole training split, score dev once, store the record."""
    from ..memo import Memo
    from ..results import git_sha, package_versions
    from .tasks import finetune_info, get_finetuned

    started = time.time()
    sha = git_sha()
    memo = Memo("fp_models", short_name(model))
    found = search(task, model, memo=memo, data_source=data_source, progress=progress, **search_kwargs)
    chosen = choose(found["rows"])
    cfg = final_config(task, model, chosen, found["n_train"], found["search"]["max_epochs"],
                       found["search"]["batch_size"], seed=0)
    get_finetuned(cfg, progress=progress, data_source=data_source)
    dev = finetune_info(cfg)["dev"][found["metric"]]
    dev_labels = load_task(found["task"], "dev", source=data_source).labels
    majority = majority_baseline(found["task"], dev_labels)
    config = {k: v for k, v in vars(cfg).items() if k != "model"}
    record = {**found, "model": short_name(model), "chosen": {k: chosen[k] for k in ("lr", "epochs")},
              "config": config,
              "dev": {"metric": found["metric"], "value": dev, "majority": majority, "margin": MARGIN,
                      "competent": dev >= majority + MARGIN},
              "git_sha": sha, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "wall_time_s": round(time.time() - started, 1), "versions": package_versions(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    path = selection_path(task, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record
