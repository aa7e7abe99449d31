"""The scorecard page: every ledger claim exactly once, with ledger changes applied to stored verdicts."""

from outlierbook import scorecard
from outlierbook.claims import ledger
from outlierbook.paths import claims_file


def test_named_ids_expand_ranges():
    assert scorecard.named_ids("QT-1: the rule changes") == {"QT-1"}
    assert scorecard.named_ids("Outliers present (QT-3 … QT-7).") == {"QT-3", "QT-4", "QT-5", "QT-6", "QT-7"}


def test_the_ledgers_changes_are_read_with_the_claims_they_touch():
    changes = scorecard.ledger_changes(claims_file().read_text(encoding="utf-8"))
    assert changes, "the ledger lists its rule changes"
    first = changes[0]
    assert first.multi_task and {"QT-3", "QT-7"} <= first.ids  # the two preconditions
    assert any(c.ids == {"QT-1"} for c in changes) and any("PEG-5" in c.ids for c in changes)


def test_the_scorecard_lists_every_ledger_claim_exactly_once():
    table = scorecard.rows()
    ids = [r["id"] for r in table]
    assert ids == list(ledger())
    assert sum(scorecard.counts(table).values()) == len(ids)
    text = scorecard.fragment()
    for claim_id in ids:
        assert text.count(f"| {claim_id} |") == 1


def _ledger_with(change_line: str) -> str:
    text = claims_file().read_text(encoding="utf-8")
    marker = "### Ledger changes"
    start = text.index(marker)
    end = text.index("\n## ", start)
    return text[:start] + marker + " (test)\n" + change_line + "\n" + text[end:]


def test_a_verdict_stored_before_a_change_naming_its_claim_is_shown_as_the_old_rules():
    stored = scorecard.stored_claims()
    before = {r["id"]: r for r in scorecard.rows(ledger_text=_ledger_with("- 2000-01-01 — OS-1: an old change."))}
    assert before["OS-1"]["verdict"] == {True: "holds", False: "does not hold", None: "not testable here"}[
        stored["OS-1"]["holds"]] and before["OS-1"]["old_rule"] == ""
    after = {r["id"]: r for r in scorecard.rows(ledger_text=_ledger_with("- 2999-01-01 — OS-1: a future change."))}
    assert after["OS-1"]["status"] == "re-run pending" and after["OS-1"]["old_rule"] == before["OS-1"]["verdict"]
    assert after["OS-2"]["status"] == before["OS-2"]["status"]  # a change touches only the claims it names


def test_the_competence_precondition_touches_claims_that_average_over_tasks_only():
    assert scorecard.averages_tasks("ordering ... on the average", {"note": ""})
    assert scorecard.averages_tasks("x", {"note": "mean over stsb, sst2, mrpc, rte"})
    assert not scorecard.averages_tasks("max |Δ output| ≤ 1e-4", {"note": "max |Δ output| on calibration inputs"})


def test_a_rerun_under_a_changed_rule_shows_both_verdicts(tmp_path, capsys):
    """A claim re-run after a ledger change records the old rule's verdict beside the new one."""
    from outlierbook import claims, results

    rec = results.Recorder("05_outlier_suppression", "full", root=tmp_path)
    record = claims.check(rec, "OS-7", ours={"MinMax": 1.0}, paper="x", holds=True, old_rule=False, note="n")
    assert record["holds_old_rule"] is False and "old rule: does not hold" in capsys.readouterr().out
    assert "holds_old_rule" not in claims.check(None, "OS-4", 0.0, "x", True)
    rec.save()
    row = {r["id"]: r for r in scorecard.rows(root=tmp_path)}["OS-7"]
    assert row["verdict"] == "holds" and row["old_rule"] == "does not hold"


def test_claims_on_another_model_get_their_own_column_and_never_replace_the_defaults(tmp_path):
    """A chapter run with ``model=...`` records its claims under that model: the scorecard's main verdict stays
    the default model's, and the other model's verdict appears in its own column."""
    from outlierbook import claims, results

    default = results.Recorder("05_outlier_suppression", "full", params={"model": "all-MiniLM-L6-v2"}, root=tmp_path)
    assert claims.check(default, "OS-7", ours={"x": 1.0}, paper="p", holds=True)["model"] == "all-MiniLM-L6-v2"
    default.save()
    base = results.Recorder("10_base_size", "full", params={"model": "sentence-transformers/all-mpnet-base-v2"},
                            root=tmp_path)
    assert claims.check(base, "OS-7", ours={"x": 2.0}, paper="p", holds=False)["model"] == "all-mpnet-base-v2"
    base.save()
    assert scorecard.models_checked(tmp_path) == ["all-MiniLM-L6-v2", "all-mpnet-base-v2"]
    assert {r["id"]: r for r in scorecard.rows(root=tmp_path)}["OS-7"]["verdict"] == "holds"
    other = {r["id"]: r for r in scorecard.rows(root=tmp_path, model="all-mpnet-base-v2")}
    assert other["OS-7"]["verdict"] == "does not hold" and other["OS-1"]["status"] == "not yet checked"
    text = scorecard.fragment(tmp_path)
    header = next(line for line in text.splitlines() if line.startswith("| id |"))
    assert header.endswith("| all-mpnet-base-v2 |")
    os7 = next(line for line in text.splitlines() if line.startswith("| OS-7 |"))
    assert "| holds |" in os7 and os7.endswith("| does not hold ({doc}`/notebooks/10_base_size` (full)) |")
    assert "On **all-mpnet-base-v2** (1 claims checked" in text


def test_claims_of_a_chapter_that_trains_its_own_models_never_count_as_the_default_models(tmp_path, monkeypatch):
    """Chapter 6 measures QT claims on small models it pre-trains: new records name them, and records stored
    before models were recorded are attributed by the chapter, so a retrofit run on the default model and the
    pre-training run each keep their own verdict."""
    from outlierbook import claims, registry, results

    assert claims.model_of(results.Recorder("06_quantizable", "full", root=tmp_path)) == registry.PRETRAINED_HERE
    with monkeypatch.context() as m:  # a run stored before claims named their model
        m.setattr(claims, "model_of", lambda recorder: None)
        legacy = results.Recorder("06_quantizable", "full", params={}, root=tmp_path)
        assert claims.check(legacy, "QT-3", ours={"x": 1.0}, paper="p", holds=False)["model"] is None
        legacy.save()
    assert scorecard.models_checked(tmp_path) == ["all-MiniLM-L6-v2", registry.PRETRAINED_HERE]
    assert {r["id"]: r for r in scorecard.rows(root=tmp_path)}["QT-3"]["status"] == "not yet checked"
    other = {r["id"]: r for r in scorecard.rows(root=tmp_path, model=registry.PRETRAINED_HERE)}
    assert other["QT-3"]["verdict"] == "does not hold"
    retrofit = results.Recorder("05_outlier_suppression", "full", params={}, root=tmp_path)
    claims.check(retrofit, "QT-3", ours={"x": 2.0}, paper="p", holds=True)
    retrofit.save()
    assert {r["id"]: r for r in scorecard.rows(root=tmp_path)}["QT-3"]["verdict"] == "holds"
    assert {r["id"]: r for r in scorecard.rows(root=tmp_path, model=registry.PRETRAINED_HERE)}["QT-3"][
        "verdict"] == "does not hold"
