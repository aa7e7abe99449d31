import json

import pandas as pd
import pytest

from outlierbook import atomic, claims, compare, results
from outlierbook.atomic import atomic_write_text
from outlierbook.errors import ConfigError, OutlierBookError


def test_rounding_is_recursive_and_stable():
    value = {"b": 1.234567, "a": [0.000049, 2], "c": {"z": float("nan")}}
    assert results.dumps(value) == '{"a": [0.0, 2], "b": 1.2346, "c": {"z": "nan"}}'


def test_recorder_writes_and_loads(tmp_path):
    rec = results.Recorder("demo", "quick", params={"x": 1}, root=tmp_path)
    rec.update({"acc": 91.234567, "n": 3})
    rec.add_rows([{"setting": "W8A8", "metric": "acc", "value": 90.1}])
    out = rec.save()
    assert json.loads((out / "metrics.json").read_text()) == {"acc": 91.2346, "n": 3}
    run = json.loads((out / "run.json").read_text())
    assert run["params"] == {"x": 1} and run["profile"] == "quick" and "torch" in run["versions"]
    loaded = results.load("demo", "full", fallback="quick", root=tmp_path)
    assert loaded["profile"] == "quick" and loaded["table"]["value"].tolist() == [90.1]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_run_json_records_the_commit_the_run_started_from(tmp_path, monkeypatch):
    shas = iter(["start", "start", "later-dirty"])
    monkeypatch.setattr(results, "git_sha", lambda: next(shas))
    rec = results.Recorder("demo", "full", root=tmp_path)
    run = json.loads((rec.save() / "run.json").read_text())
    assert run["git_sha"] == "start" and "git_sha_at_finish" not in run  # unchanged during the run
    run = json.loads((rec.save() / "run.json").read_text())
    assert run["git_sha"] == "start" and run["git_sha_at_finish"] == "later-dirty"


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_missing_results_and_profiles_are_clear(tmp_path):
    with pytest.raises(OutlierBookError, match="run it first"):
        results.load("nothing", "quick", root=tmp_path)
    with pytest.raises(ConfigError, match="unknown profile"):
        results.Recorder("x", "medium", root=tmp_path)


def test_ledger_has_every_claim_id():
    ids = set(claims.ledger())
    expected = {f"OS-{i}" for i in range(1, 11)} | {f"PEG-{i}" for i in range(1, 8)} | \
               {f"QT-{i}" for i in range(1, 8)} | {f"NAQ-{i}" for i in range(1, 5)}
    assert ids == expected
    assert "1e-4" in claims.get("OS-4").rule


def test_claim_check_records_failures_without_raising(tmp_path, capsys):
    rec = results.Recorder("demo", "quick", root=tmp_path)
    record = claims.check(rec, "OS-4", ours=3e-3, paper="exact", holds=lambda d: d <= 1e-4, note="toy")
    assert record["holds"] is False
    assert "[OS-4] DOES NOT HOLD" in capsys.readouterr().out
    claims.check(rec, "OS-9", ours=None, paper=135.7, holds=None, note="no timing here")
    assert not rec.dir.exists()  # nothing is written before the run's results are saved as one set
    saved = json.loads((rec.save() / "claims.json").read_text())
    assert [c["id"] for c in saved] == ["OS-4", "OS-9"] and saved[1]["holds"] is None
    with pytest.raises(ConfigError, match="unknown claim id"):
        claims.check(rec, "XX-1", 1, 1, True)


def test_compare_verdicts():
    paper = pd.DataFrame({"table": ["T1"] * 3, "setting": ["a", "b", "c"], "metric": ["m"] * 3, "value": [90.0, 80.0, 70.0]})
    ours = pd.DataFrame({"setting": ["a", "b", "d"], "metric": ["m"] * 3, "value": [90.5, 75.0, 1.0]})
    df = compare.compare(paper, ours, tol=1.0).set_index("setting")
    assert df.loc["a", "verdict"] == "within ±1" and df.loc["b", "verdict"] == "worse by > 1"
    assert df.loc["c", "verdict"] == "paper only" and df.loc["d", "verdict"] == "ours only"
    assert df.loc["b", "Δ"] == pytest.approx(-5.0)
    quick = compare.compare(paper, ours, tol=1.0, profile="quick").set_index("setting")
    assert quick.loc["a", "verdict"] == "not comparable (quick)"
    assert "90.50" in compare.as_text(df.reset_index())


def test_transcribed_paper_files_are_well_formed():
    for paper in ("model_cards", "understanding", "quantizable", "outlier_suppression", "naq"):
        df = compare.load_paper(paper)
        assert not df.empty and df["value"].notna().all()
    assert compare.load_paper("understanding", "Table 1").shape[0] == 36
    with pytest.raises(ConfigError):
        compare.load_paper("unknown")


def stored_run(root, chapter, metrics=None, claim_records=()):
    """A full-profile folder as a finished run leaves it (through Recorder.save)."""
    rec = results.Recorder(chapter, "full", root=root)
    rec.update(metrics or {})
    for record in claim_records:
        rec.add_claim(record)
    return rec.save()


def test_full_profile_claims_reads_the_stored_run_or_says_none(tmp_path):
    from outlierbook.results import full_profile_claims

    assert full_profile_claims("05_x", root=tmp_path) is None
    stored_run(tmp_path, "05_x", claim_records=[{"id": "OS-4", "holds": True, "ours": {"sst2": 1e-6}},
                                                {"id": "OS-9", "holds": False, "ours": 3}])
    t = full_profile_claims("05_x", root=tmp_path)
    assert list(t.index) == ["OS-4", "OS-9"] and t.loc["OS-9", "holds"] == False  # noqa: E712
    assert json.loads(t.loc["OS-4", "ours"]) == {"sst2": 1e-6}


def test_full_profile_verdicts_text_for_each_profile_and_state(tmp_path):
    from outlierbook.results import full_profile_verdicts

    assert full_profile_verdicts("05_x", "quick", root=tmp_path) == "the full profile has not been run yet"
    stored_run(tmp_path, "05_x", claim_records=[{"id": "OS-4", "holds": True, "ours": 1e-6},
                                                {"id": "OS-9", "holds": False, "ours": {"twc_s": 88.1}}])
    text = full_profile_verdicts("05_x", "quick", replace={"OS-9": "timings elsewhere", "OS-99": "absent"},
                                 root=tmp_path)
    assert "OS-4" in text and "1e-06" in text and "timings elsewhere" in text and "88.1" not in text
    assert "OS-99" not in text
    lines = text.splitlines()  # provenance, then the plain statement of what held, then the table
    assert lines[0].startswith("full run of commit ") and "every file checked against run.json" in lines[0]
    assert lines[1:4] == ["held: OS-4", "did not hold: OS-9", "not testable here: none"]
    assert full_profile_verdicts("05_x", "full", root=tmp_path).startswith("this is the full-profile run")


def test_full_profile_table_rebuilds_a_table_from_metric_keys(tmp_path):
    from outlierbook.results import full_profile_table

    assert full_profile_table("04_x", "table5", root=tmp_path) is None
    stored_run(tmp_path, "04_x", {"table5/1 (=per-tensor)/stsb": 84.5, "table5/1 (=per-tensor)/rte": 52.0,
                                  "table5/6 + P (only FFN)/stsb": 86.1, "table50/x/y": 1.0, "fp32/stsb": 86.7})
    t = full_profile_table("04_x", "table5", root=tmp_path)
    assert t.loc["6 + P (only FFN)", "stsb"] == 86.1 and t.loc["1 (=per-tensor)", "rte"] == 52.0
    assert t.shape == (2, 2) and pd.isna(t.loc["6 + P (only FFN)", "rte"])
    assert full_profile_table("04_x", "table7", root=tmp_path) is None


def test_compare_keeps_the_papers_row_order():
    """An outer merge sorts its keys; the comparison tables read in the paper's order (chapter 5's Table 3)."""
    paper = pd.DataFrame({"table": ["T3"] * 3, "setting": ["MinMax", "MinMax + GM", "FP32"], "metric": ["m"] * 3,
                          "value": [60.0, 70.0, 80.0]})
    ours = pd.DataFrame({"setting": ["FP32", "Extra", "MinMax"], "metric": ["m"] * 3, "value": [79.0, 1.0, 61.0]})
    assert compare.compare(paper, ours)["setting"].tolist() == ["MinMax", "MinMax + GM", "FP32", "Extra"]


def test_quick_claim_checks_are_labelled_smoke_tests(tmp_path, capsys):
    for profile, labelled in (("quick", True), ("full", False)):
        claims.check(results.Recorder("demo", profile, root=tmp_path), "OS-4", 1e-6, "exact", True)
        assert ("smoke test" in capsys.readouterr().out) is labelled
