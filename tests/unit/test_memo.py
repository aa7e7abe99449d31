"""The per-experiment memo: a stopped run resumes without recomputing finished experiments."""

import json

from outlierbook.memo import Memo


def test_a_finished_experiment_is_not_recomputed_and_a_damaged_one_is(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"value": 1.5}

    memo = Memo("08_composing", "full")
    key = {"task": "stsb", "bits": "W6A6", "recipe": "GM + TWC", "seed": 0}
    assert memo(key, compute) == {"value": 1.5} and memo(key, compute) == {"value": 1.5}
    assert len(calls) == 1
    again = Memo("08_composing", "full")  # a new run (a resumed one) finds it
    assert again(key, compute) == {"value": 1.5} and len(calls) == 1 and again.hits == 1
    assert again({**key, "seed": 1}, compute) and len(calls) == 2  # another key is another experiment
    [path] = [p for p in memo.folder.iterdir() if json.loads(p.read_text())["key"]["seed"] == 0]
    path.write_text("{ cut off")  # a damaged file (cannot happen through the atomic write, but still)
    assert again(key, compute) == {"value": 1.5} and len(calls) == 3
    assert not any(p.name.startswith(".") for p in memo.folder.iterdir())  # no temporary files left


def test_memo_folders_are_per_chapter_profile_and_code(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    a, b = Memo("08_composing", "quick"), Memo("08_composing", "full")
    assert a.folder != b.folder and a.folder.parent.parent.parent == b.folder.parent.parent.parent
    from outlierbook.runner import src_hash

    assert a.folder.parent.name == src_hash()


def test_a_run_with_another_context_does_not_reuse_results(tmp_path, monkeypatch):
    """Results of one model (or calibration size) are never served to a run with another."""
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    key = {"task": "sst2", "method": "minmax"}
    a = Memo("05_outlier_suppression", "full", context={"model": "a", "n_calib": 256})
    assert a(key, lambda: 1.0) == 1.0
    same = Memo("05_outlier_suppression", "full", context={"n_calib": 256, "model": "a"})
    other = Memo("05_outlier_suppression", "full", context={"model": "b", "n_calib": 256})
    assert same(key, lambda: 2.0) == 1.0 and same.hits == 1
    assert other(key, lambda: 2.0) == 2.0 and other.misses == 1


def test_an_experiment_on_a_task_is_keyed_by_its_checkpoint_and_evaluation_size(tmp_path, monkeypatch):
    import types

    from outlierbook.memo import kept

    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return len(calls)

    setup = types.SimpleNamespace(task="sst2", checkpoint="steps2105-seed0", eval_data=[0] * 872)
    memo = Memo("05_outlier_suppression", "full")
    assert kept(memo, setup, {"method": "gm"}, compute) == 1 and kept(memo, setup, {"method": "gm"}, compute) == 1
    [stored] = [json.loads(p.read_text())["key"] for p in memo.folder.iterdir()]
    assert stored == {"method": "gm", "task": "sst2", "checkpoint": "steps2105-seed0", "n_eval": 872}
    other_head = types.SimpleNamespace(**{**vars(setup), "checkpoint": "steps200-seed0"})
    fewer = types.SimpleNamespace(**{**vars(setup), "eval_data": [0] * 100})
    assert kept(memo, other_head, {"method": "gm"}, compute) == 2 and kept(memo, fewer, {"method": "gm"}, compute) == 3
    assert kept(None, setup, {"method": "gm"}, compute) == 4  # no memo: computed every time
