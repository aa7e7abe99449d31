"""Notebook setup: one call at the top of every chapter makes its numbers reproducible.

``setup_notebook()`` must run before ``transformers`` is imported (the Hugging Face offline flags
are read at import time). It

- seeds ``random``, NumPy and torch, turns on deterministic torch algorithms and fixes the
  thread count (float reductions differ between thread counts);
- sets the Hugging Face offline flags unless ``OUTLIERBOOK_ONLINE=1`` (the full-scale path);
- under test (``OUTLIERBOOK_TEST=1``, set by ``make test``) and in notebooks the runner executes
  for the rendered book (``OUTLIERBOOK_EXECUTING=1``) disables progress bars, so checked outputs
  are identical run to run and pages hold no bar residue. People running a notebook or the CLI by
  hand keep their progress bars.
"""

from __future__ import annotations

import logging
import os
import random
import warnings

DEFAULT_THREADS = int(os.environ.get("OUTLIERBOOK_THREADS", "2"))


def under_test() -> bool:
    return os.environ.get("OUTLIERBOOK_TEST", "") not in ("", "0")


def executing() -> bool:
    """True inside a notebook executed by the book's runner (its output is a document)."""
    return os.environ.get("OUTLIERBOOK_EXECUTING", "") not in ("", "0")


def progress_enabled() -> bool:
    """Progress bars for people: off under test, in runner-executed notebooks, or with TQDM_DISABLE."""
    return not (under_test() or executing() or os.environ.get("TQDM_DISABLE", "") not in ("", "0"))


def online() -> bool:
    return os.environ.get("OUTLIERBOOK_ONLINE", "") not in ("", "0")


def set_environment() -> None:
    """Environment flags that libraries read at import time."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if not online():
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if under_test() or executing():
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["ACCELERATE_DISABLE_RICH"] = "1"


def seed_everything(seed: int = 0, threads: int = DEFAULT_THREADS) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def quiet_libraries() -> None:
    """Silence path-dependent, run-to-run noise from libraries (not our own output)."""
    warnings.filterwarnings("ignore", message=".*IProgress not found.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    for name in ("transformers", "accelerate", "datasets", "huggingface_hub", "papermill"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        if not progress_enabled():
            transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def setup_notebook(seed: int = 0, threads: int = DEFAULT_THREADS) -> dict:
    """Seed, fix threads, set offline flags and quiet logging. Returns the settings for run.json."""
    set_environment()
    seed_everything(seed, threads)
    quiet_libraries()
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 110, "figure.figsize": (6.4, 3.6), "axes.grid": True})
    return {"seed": seed, "threads": threads, "under_test": under_test(), "online": online()}
