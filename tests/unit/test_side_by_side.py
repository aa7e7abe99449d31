"""Chapters and nbval side by side: scheduling, thread counts, logs that do not interleave, failures reported."""

import sys

import pytest

from outlierbook import side_by_side as sbs


def test_threads_are_shared_between_jobs_and_fixed_for_every_library():
    assert sbs.threads_per_job(2, 2) == 1 and sbs.threads_per_job(2, 1) == 2 and sbs.threads_per_job(2, 4) == 1
    assert sbs.thread_env(1) == {"OUTLIERBOOK_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        sbs.threads_per_job(2, 0)


def test_the_longest_known_job_goes_first_and_unknown_ones_keep_their_order():
    assert sbs.longest_first(["a", "b", "c", "d"], {"b": 10.0, "d": 50.0}) == ["d", "b", "a", "c"]


def test_jobs_run_side_by_side_with_their_env_and_each_log_is_printed_whole(capsys):
    script = ("import os, sys, time; n = sys.argv[1]; print(n, 'threads', os.environ['OUTLIERBOOK_THREADS']);"
              "time.sleep(0.3); print(n, 'done'); sys.exit(3 if n == 'bad' else 0)")
    jobs = [sbs.Job(n, [sys.executable, "-c", script, n]) for n in ("one", "bad", "two")]
    codes = sbs.run_jobs(jobs, 2, sbs.thread_env(1))
    assert codes == {"one": 0, "bad": 3, "two": 0}  # a failure does not stop the others
    out = capsys.readouterr().out
    for n in ("one", "bad", "two"):
        assert f"{n} threads 1\n{n} done\n" in out  # each job's log in one piece
    assert "[run] bad: FAILED (exit 3)" in out and "[run] one: ok" in out


def test_nbval_refuses_notebooks_executed_at_different_thread_counts():
    from outlierbook.errors import OutlierBookError
    from outlierbook.runner import executed_threads

    assert executed_threads({"a": {"threads": 1}, "b": {"threads": 1}}) == 1
    assert executed_threads({"a": {}}) == 2  # stamped before the count was recorded: the old fixed two
    with pytest.raises(OutlierBookError, match=r"different thread counts \(a: 1, b: 2\)"):
        executed_threads({"a": {"threads": 1}, "b": {"threads": 2}})
