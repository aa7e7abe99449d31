"""Kill a real chapter run at several points: its results folder is as it was, or complete."""

import os
import signal
import subprocess
import sys
import time

import pytest

from outlierbook import results
from outlierbook.paths import notebooks_dir

CHAPTER = "01_quantization_primer"  # needs no fine-tuned head: the run is the chapter alone


def _kill_when(proc, condition, timeout=600.0):
    start = time.monotonic()
    while not condition(time.monotonic() - start):
        if proc.poll() is not None or time.monotonic() - start > timeout:
            break
        time.sleep(0.002)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, papermill and the kernel
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.slow
def test_killing_a_chapter_run_leaves_its_results_as_they_were_or_complete(tmp_path):
    root = tmp_path / "results"
    earlier = results.Recorder(CHAPTER, "quick", root=root)
    earlier.update({"marker": 1.0})
    earlier.save()
    folder = root / CHAPTER / "quick"
    env = {**os.environ, "OUTLIERBOOK_RESULTS": str(root), "OUTLIERBOOK_TEST": "1"}
    running = notebooks_dir() / f".{CHAPTER}.running.ipynb"  # papermill rewrites it after every cell

    def cells_done(n):
        try:
            return f'"execution_count": {n},' in running.read_text()
        except (OSError, UnicodeDecodeError):
            return False

    points = {
        "while the kernel starts": lambda t: t > 2.0,
        "while the chapter computes": lambda t: cells_done(4),
        "while the results are saved": lambda t: any(folder.parent.glob(".quick.tmp-*")),
    }
    outcomes = []
    try:
        for point, condition in points.items():
            proc = subprocess.Popen([sys.executable, "-m", "outlierbook", "run", CHAPTER, "--profile", "quick"],
                                    env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            _kill_when(proc, condition)
            loaded = results.load(CHAPTER, "quick", root=root)  # raises if the files were mixed
            as_it_was = loaded["metrics"] == {"marker": 1.0}
            assert as_it_was or (loaded["verified"] and "marker" not in loaded["metrics"]), point
            outcomes.append(as_it_was)
        assert outcomes[:2] == [True, True]  # nothing is written before the chapter's last cell
    finally:
        for leftover in notebooks_dir().glob(f".{CHAPTER}.running.ipynb"):
            leftover.unlink()
