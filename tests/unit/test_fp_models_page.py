"""The FP models page is generated from the stored selections, never typed in."""
import json

from outlierbook import fp_models


def record(task, competent, dev):
    rows = [{"lr": lr, "epochs": e, "held_out": 50 + e + (lr == 1e-4)} for lr in (5e-5, 1e-4) for e in (1, 2)]
    return {"model": "m", "task": task, "metric": "accuracy", "rows": rows, "chosen": {"lr": 1e-4, "epochs": 2},
            "dev": {"value": dev, "majority": 52.7, "competent": competent}, "n_held_out": 10, "n_train": 50,
            "majority_held_out": 50.0, "git_sha": "abcdef1234567", "finished_utc": "2026-11-30T06:17:18Z"}


def test_the_page_lists_every_stored_selection_with_its_verdict(tmp_path):
    assert "No fine-tuning budget has been selected yet" in fp_models.fragment(tmp_path)
    folder = tmp_path / "fp_models" / "m"
    folder.mkdir(parents=True)
    (folder / "rte.json").write_text(json.dumps(record("rte", False, 54.51)))
    (folder / "mrpc.json").write_text(json.dumps(record("mrpc", True, 79.17)))
    text = fp_models.fragment(tmp_path)
    assert text.index("| m | mrpc |") < text.index("| m | rte |")
    assert "| 54.51 | 52.70 | **no** |" in text and "| 79.17 | 52.70 | yes |" in text
    assert "| 0.0001 | 52.00 | **53.00** |" in text  # the chosen (lr, epochs) in bold, in the search table


def test_the_stored_records_render():
    text = fp_models.fragment()
    for r in fp_models.stored():
        assert f"| {r['model']} | {r['task']} |" in text


def test_tasks_without_a_selection_are_listed_with_their_fixed_budget(tmp_path):
    from outlierbook.models.tasks import BUDGETS

    folder = tmp_path / "fp_models" / "all-MiniLM-L6-v2"
    folder.mkdir(parents=True)
    (folder / "rte.json").write_text(json.dumps({**record("rte", False, 54.51), "model": "all-MiniLM-L6-v2"}))
    text = fp_models.fragment(tmp_path)
    assert f"| sst2 | {BUDGETS['full']['sst2']} | 32 |" in text
    assert "| rte | " not in text.split("fixed budgets")[1].split("##")[0]  # a selected task is not listed as fixed
