r"""Running chapters (papermill) and their nbval re-runs side by side, ``jobs`` processes at a time.

Worth it when a machine has more cores than one chapter uses well. On the book's 2-core machine the quick
chapters ran on average 1.7 times slower at one thread than at two, so two side by side at one thread each
finished the quick build only ~5 % sooner than one after the other at two (about 22 against 23.7 minutes, measured on
a fresh clone); the Makefile runs one at a time there (``JOBS=1``). Each job is its own process with its own
thread count; the count is recorded in the executed notebook, and nbval re-runs a notebook at the count it was
executed with, since float reductions differ between thread counts and nbval compares outputs.

Scheduling is greedy: the longest job first (by the seconds its last execution took, when known), and the next
job starts as soon as one ends. Each job's output goes to its own log, printed whole when the job ends, so the
logs of two jobs never interleave.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass


def thread_env(threads: int) -> dict[str, str]:
    """The environment that fixes a job's thread count: the book's own setting and the math libraries'."""
    if threads < 1:
        raise ValueError(f"a job needs at least one thread, got {threads}")
    n = str(threads)
    return {"OUTLIERBOOK_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def threads_per_job(total: int, jobs: int) -> int:
    """Threads for each of ``jobs`` side-by-side jobs sharing ``total`` threads (at least one each)."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    return max(1, total // jobs)


def longest_first(names: list[str], seconds: dict[str, float]) -> list[str]:
    """``names`` with the known-longest first; names without a known time keep their order, after the known ones."""
    known = sorted((n for n in names if n in seconds), key=lambda n: -seconds[n])
    return known + [n for n in names if n not in seconds]


@dataclass
class Job:
    name: str
    command: list[str]


def run_jobs(jobs: list[Job], parallel: int, env: dict[str, str], label: str = "run") -> dict[str, int]:
    """Run ``jobs`` in order, at most ``parallel`` at a time, each with ``env`` added to this environment.

    Returns each job's exit code. A failing job does not stop the others (every failure is reported at once)."""
    if parallel < 1:
        raise ValueError(f"--jobs must be at least 1, got {parallel}")
    pending = list(jobs)
    running: list[tuple[Job, subprocess.Popen, object, float]] = []
    codes: dict[str, int] = {}
    full_env = {**os.environ, **env}
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            log = tempfile.TemporaryFile(mode="w+")
            print(f"[{label}] {job.name}: started", flush=True)
            proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=full_env)
            running.append((job, proc, log, time.perf_counter()))
        time.sleep(0.5)
        for item in list(running):
            job, proc, log, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            codes[job.name] = proc.returncode
            log.seek(0)
            sys.stdout.write(log.read())
            log.close()
            state = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(f"[{label}] {job.name}: {state} after {time.perf_counter() - t0:.0f} s", flush=True)
    return codes
