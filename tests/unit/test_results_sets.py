"""A run's results are one set: written together, refused when mixed, never half-written by a kill."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from outlierbook import atomic, results
from outlierbook.errors import OutlierBookError
from outlierbook.results import InconsistentResultsError, Recorder


def save_run(root, chapter="ch", profile="full", i=0):
    rec = Recorder(chapter, profile, root=root)
    rec.update({"i": i, "acc": 90.0 + i})
    rec.add_rows([{"setting": "W8A8", "metric": "acc", "value": 90.0 + i}])
    rec.add_claim({"id": "OS-4", "holds": True, "ours": i, "profile": profile})
    return rec.save()


def test_run_json_vouches_for_every_file_and_files_get_an_ordinary_mode(tmp_path):
    old = os.umask(0o022)
    try:
        folder = save_run(tmp_path)
    finally:
        os.umask(old)
    run = json.loads((folder / "run.json").read_text())
    assert sorted(run["files"]) == ["claims.json", "metrics.json", "table.csv"]
    assert results.load("ch", "full", root=tmp_path)["verified"] is True
    for f in folder.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f  # mkstemp's 0600 before
    assert folder.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.joinpath("ch").iterdir()) == ["full"]  # no temporary leftovers


@pytest.mark.parametrize("mix", ["metrics from another run", "claims cut to nothing", "table missing",
                                 "run.json of the quick profile"])
def test_a_folder_whose_files_come_from_different_runs_is_refused(tmp_path, mix):
    first, second = save_run(tmp_path / "a", i=1), save_run(tmp_path / "b", i=2)
    if mix == "metrics from another run":
        (second / "metrics.json").replace(first / "metrics.json")
    elif mix == "claims cut to nothing":
        (first / "claims.json").write_text("[]\n")
    elif mix == "table missing":
        (first / "table.csv").unlink()
    else:
        run = json.loads((first / "run.json").read_text())
        (first / "run.json").write_text(json.dumps({**run, "profile": "quick"}))
    with pytest.raises(InconsistentResultsError, match="re-run it"):
        results.load("ch", "full", root=tmp_path / "a")
    with pytest.raises(InconsistentResultsError):  # quick builds show the full run's verdicts through this
        results.full_profile_claims("ch", root=tmp_path / "a")


def test_folders_stored_before_the_manifest_are_checked_for_what_they_record(tmp_path):
    d = tmp_path / "ch" / "full"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text("{}")
    (d / "run.json").write_text(json.dumps({"chapter": "ch", "profile": "full"}))
    (d / "claims.json").write_text(json.dumps([{"id": "OS-4", "holds": True, "profile": "full"}]))
    assert results.load("ch", "full", root=tmp_path)["verified"] is False
    (d / "claims.json").write_text(json.dumps([{"id": "OS-4", "holds": True, "profile": "quick"}]))
    with pytest.raises(InconsistentResultsError, match="quick-profile claims"):
        results.load("ch", "full", root=tmp_path)
    (d / "run.json").unlink()
    with pytest.raises(InconsistentResultsError, match="no run.json"):
        results.load("ch", "full", root=tmp_path)


def test_nothing_is_written_until_save_and_nan_metrics_are_refused(tmp_path):
    import numpy as np
    import torch

    rec = Recorder("ch", "quick", root=tmp_path)
    rec.add_claim({"id": "OS-4", "holds": True})
    assert not rec.dir.exists()
    for bad in (float("nan"), np.float32("nan"), torch.tensor(float("nan"))):
        with pytest.raises(OutlierBookError, match="metric acc is NaN"):
            rec.update({"acc": bad})
    assert "acc" not in rec.metrics
    rec.update({"threshold": float("-inf")})  # a setting (a disabled threshold) is kept, stored as "-inf"
    assert json.loads((rec.save() / "metrics.json").read_text()) == {"threshold": "-inf"}


def test_an_unwritable_results_folder_fails_before_any_compute(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(OutlierBookError, match="cannot write results into .*OUTLIERBOOK_RESULTS"):
        Recorder("ch", "quick", root=blocker)
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        (ro / "ch").mkdir(parents=True)
        ro.joinpath("ch").chmod(0o555)
        with pytest.raises(OutlierBookError, match="cannot write results"):
            Recorder("ch", "quick", root=ro)


def test_the_cli_checks_the_results_folder_before_preparing_anything(tmp_path, monkeypatch, capsys):
    from outlierbook.__main__ import main

    blocker = tmp_path / "results"
    blocker.write_text("")
    monkeypatch.setenv("OUTLIERBOOK_RESULTS", str(blocker))
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "cache"))  # a fine-tune would land here
    assert main(["run", "00_how_to_run"]) == 2
    assert "cannot write results" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "finetuned").exists()


def test_leftovers_of_killed_runs_are_removed_and_a_cut_swap_is_undone(tmp_path):
    target = save_run(tmp_path, i=1)
    dead = 2**22 + 12345  # above the default pid_max of 4 194 304: no such process
    stale = target.with_name(f".full.tmp-{dead}-abc")
    stale.mkdir()
    (stale / "metrics.json").write_text("{}")
    save_run(tmp_path, i=2)
    assert not stale.exists()
    # a swap cut between its two renames (the fallback where renameat2 is missing): the old set is aside
    target.rename(target.with_name(f".full.old-{dead}"))
    loaded = results.load("ch", "full", root=tmp_path)
    assert loaded["metrics"]["i"] == 2 and target.is_dir()


def test_the_two_rename_fallback_replaces_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    save_run(tmp_path, i=1)
    save_run(tmp_path, i=2)
    assert results.load("ch", "full", root=tmp_path)["metrics"]["i"] == 2
    assert sorted(p.name for p in (tmp_path / "ch").iterdir()) == ["full"]


WRITER = textwrap.dedent("""
    import sys
    from outlierbook.results import Recorder
    root, start = sys.argv[1], int(sys.argv[2])
    for i in range(start, start + 100000):
        rec = Recorder("ch", "full", root=root)
        rec.update({"i": i, "acc": 90.0 + i})
        rec.add_rows([{"setting": "W8A8", "metric": "acc", "value": 90.0 + i}] * 200)
        rec.add_claim({"id": "OS-4", "holds": True, "ours": i, "profile": "full"})
        rec.save()
        if i == start:
            print("saved", flush=True)
""")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_a_kill_at_any_point_leaves_the_folder_as_it_was_or_complete(tmp_path, exchange):
    """SIGKILL a process that saves results in a loop, at 12 random moments: every time, the folder
    loads as one consistent run (the old one or a newer one), never a mix."""
    import random

    script = tmp_path / "writer.py"
    script.write_text(WRITER if exchange else WRITER.replace(
        "from outlierbook.results import Recorder",
        "from outlierbook import atomic\natomic._exchange = lambda a, b: False\nfrom outlierbook.results import Recorder"))
    rng = random.Random(0)
    last = -1
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "r"), str(last + 1)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "saved"
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = results.load("ch", "full", root=tmp_path / "r")  # raises if the files were mixed
        assert loaded["verified"] and loaded["metrics"]["i"] > last
        assert loaded["table"]["value"].iloc[0] == 90.0 + loaded["metrics"]["i"]
        last = loaded["metrics"]["i"]
