"""Choosing a fine-tuning budget on held-out training data, and the competent-FP-model precondition."""

import json

import pytest

from outlierbook import competence
from outlierbook.data.glue import TaskData
from outlierbook.errors import ConfigError
from outlierbook.models import selection
from outlierbook.models.tasks import BUDGETS, FinetuneConfig, budget


def _data(n=40, task="rte", split="train"):
    return TaskData(task, split, [f"premise number {i} is here" for i in range(n)],
                    [f"hypothesis {i}" for i in range(n)], [int(i % 3 == 0) for i in range(n)])


def test_holdout_split_is_disjoint_complete_stratified_and_seeded():
    data = _data(300)
    fit, held = selection.holdout_split(data, 0.2, seed=0)
    assert len(fit) + len(held) == len(data)
    assert not set(fit.text_a) & set(held.text_a)
    share = sum(held.labels) / len(held)
    assert abs(share - sum(data.labels) / len(data)) < 0.01  # each class held out in proportion
    assert selection.holdout_split(data, 0.2, seed=0)[1].text_a == held.text_a
    assert selection.holdout_split(data, 0.2, seed=1)[1].text_a != held.text_a
    with pytest.raises(ConfigError, match="between 0 and 1"):
        selection.holdout_split(data, 1.0)


def test_choose_takes_the_best_held_out_score_and_breaks_ties_towards_less_training():
    rows = [{"lr": 1e-4, "epochs": 3, "held_out": 60.0}, {"lr": 5e-5, "epochs": 4, "held_out": 60.0},
            {"lr": 5e-5, "epochs": 3, "held_out": 60.0}, {"lr": 2e-4, "epochs": 1, "held_out": 59.9}]
    assert selection.choose(rows) == {"lr": 5e-5, "epochs": 3, "held_out": 60.0}
    with pytest.raises(ConfigError):
        selection.choose([])


def test_final_config_converts_epochs_to_steps_of_the_whole_training_split():
    cfg = selection.final_config("rte", "all-MiniLM-L6-v2", {"lr": 2e-4, "epochs": 3}, n_train=2490, max_epochs=4)
    assert (cfg.steps, cfg.schedule_steps, cfg.lr, cfg.batch_size) == (3 * 78, 4 * 78, 2e-4, 32)
    assert cfg.key() != FinetuneConfig(task="rte", steps=234, lr=2e-4).key()  # a stopped run is another model
    assert FinetuneConfig(task="rte", steps=234).key() == "steps234-seed0-" + FinetuneConfig(task="rte", steps=234).key()[-10:]


def test_the_search_reads_only_the_training_split_and_scores_every_epoch(monkeypatch):
    asked = []

    def fake_load(task, split, source="local"):
        asked.append(split)
        return _data(40, task, split)

    monkeypatch.setattr(selection, "load_task", fake_load)
    found = selection.search("rte", lrs=(1e-4, 2e-4), max_epochs=2, fraction=0.25, batch_size=8, progress=False)
    assert asked == ["train"]
    assert [(r["lr"], r["epochs"]) for r in found["rows"]] == [(1e-4, 1), (1e-4, 2), (2e-4, 1), (2e-4, 2)]
    assert all(0 <= r["held_out"] <= 100 for r in found["rows"])
    assert (found["n_fit"], found["n_held_out"]) == (30, 10)


def test_a_stored_selection_becomes_the_full_budget_and_only_for_its_model(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTLIERBOOK_RESULTS", str(tmp_path))
    before = budget("rte", "full")
    cfg = selection.final_config("rte", "all-MiniLM-L6-v2", {"lr": 2e-4, "epochs": 3}, n_train=2490, max_epochs=4)
    path = selection.selection_path("rte")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"config": {k: v for k, v in vars(cfg).items() if k != "model"}}))
    assert budget("rte", "full") == cfg
    assert budget("rte", "full", seed=1).seed == 1
    assert budget("rte", "quick").steps == BUDGETS["quick"]["rte"]  # the quick profile keeps its smoke-test budget
    assert budget("rte", "full", model="some/other-model") == FinetuneConfig(model="some/other-model", task="rte",
                                                                             steps=before.steps)


def test_competence_is_the_ledger_rule():
    labels = [1] * 53 + [0] * 47
    assert competence.majority_baseline("rte", labels) == pytest.approx(53.0)
    assert competence.is_competent("rte", 58.0, labels) and not competence.is_competent("rte", 57.9, labels)
    assert competence.majority_baseline("stsb", [0.5, 4.0]) == 50.0
    assert competence.competent_tasks({"stsb": 86.7, "rte": 55.2}, {"stsb": [1.0], "rte": labels}) == {
        "stsb": True, "rte": False}


def test_averages_under_the_precondition_exclude_incompetent_tasks_and_keep_the_old_rule_beside():
    import pandas as pd

    labels = {"stsb": [1.0], "sst2": [1] * 50 + [0] * 50, "rte": [1] * 53 + [0] * 47}
    state = competence.status({"stsb": 86.0, "sst2": 88.0, "rte": 55.0}, labels)
    assert [t for t, s in state.items() if not s["competent"]] == ["rte"]
    assert "rte not competent (FP 55.00 < majority 53.00 + 5)" == competence.describe(state)
    table = pd.DataFrame({"stsb": [86.0, 80.0], "sst2": [88.0, 84.0], "rte": [55.0, 60.0], "average": [0.0, 0.0]},
                         index=["FP32", "W8A8"])
    a = competence.averages(table, state)
    assert a.tasks == ("stsb", "sst2") and list(a.excluded) == ["rte"]
    assert a.new["W8A8"] == pytest.approx(82.0) and a.old["W8A8"] == pytest.approx((80 + 84 + 60) / 3)
    one = competence.averages(table[["stsb", "rte"]], state)  # one competent task: not testable
    assert one.new is None and one.old["FP32"] == pytest.approx(70.5)


def test_the_note_says_which_tasks_were_excluded_and_when_a_claim_is_not_testable():
    import pandas as pd

    state = competence.status({"stsb": 86.0, "rte": 55.0}, {"stsb": [1.0], "rte": [1] * 53 + [0] * 47})
    a = competence.averages(pd.DataFrame({"stsb": [1.0], "rte": [2.0]}), state)
    assert competence.note(state, a) == ("rte not competent (FP 55.00 < majority 53.00 + 5); "
                                         "fewer than 2 competent tasks: not testable here")
    b = competence.averages(pd.DataFrame({"stsb": [1.0]}), state)
    assert competence.note(state, b).startswith("every task competent")
