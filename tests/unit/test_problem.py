"""The problem chapter's bit-width sweep: mean ± std over calibration seeds, resumable per (wrapper, seed)."""

import math
import types

import pytest
import torch

from outlierbook import seeds as seedstats
from outlierbook.experiments import problem
from outlierbook.memo import Memo


def test_summaries_over_seeds():
    s = seedstats.summarize([70.0, 72.0, 74.0])
    assert s == {"mean": 72.0, "std": 2.0, "median": 72.0, "n_seeds": 3}
    one = seedstats.summarize([71.0])
    assert math.isnan(one["std"]) and one["mean"] == 71.0  # one seed shows no spread, not a spread of 0
    assert seedstats.mean_pm_std(72.0, 2.0) == "72.00 ± 2.00" and seedstats.mean_pm_std(71.0, math.nan) == "71.00"
    with pytest.raises(ValueError, match="at least one seed"):
        seedstats.summarize([])


def _setup(tiny_bert):
    model, batch = tiny_bert

    def score(m=None):
        with torch.no_grad():
            return float((m or model)(**batch).logits.sum())

    return types.SimpleNamespace(task="sst2", metric="accuracy", model=model, score=score, calibration=None,
                                 tokenizer=None, checkpoint="ck", eval_data=[0] * 4), batch


def test_the_sweep_reports_each_settings_mean_and_spread_over_seeds(tiny_bert, monkeypatch, tmp_path):
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    setup, batch = _setup(tiny_bert)
    made = []

    def batches(pool, tokenizer, n, batch_size, seed):  # a different calibration subset per seed
        made.append(seed)
        return [{k: v[seed:seed + 2] for k, v in batch.items()}]

    monkeypatch.setattr(problem, "calibration_batches", batches)
    one = {s: problem.weight_act_sweep(setup, seeds=[s]).set_index("setting") for s in (0, 1)}
    both = problem.weight_act_sweep(setup, seeds=[0, 1], memo=Memo("02_the_problem", "full")).set_index("setting")
    for name in ("W8A8", "W32A8", "W8A32", "W4A4"):
        v = [one[s].loc[name, "value"] for s in (0, 1)]
        assert both.loc[name, "value"] == pytest.approx(sum(v) / 2, rel=1e-9)
        assert both.loc[name, "std"] == pytest.approx(abs(v[0] - v[1]) / math.sqrt(2), rel=1e-6, abs=1e-12)
        assert both.loc[name, "n_seeds"] == 2 and math.isnan(one[0].loc[name, "std"])
    assert both.loc["FP32", "n_seeds"] == 1
    n = len(made)
    resumed = problem.weight_act_sweep(setup, seeds=[0, 1], memo=Memo("02_the_problem", "full")).set_index("setting")
    assert len(made) == n  # every (wrapper, seed) came from the memo
    assert resumed[["value", "std"]].fillna(-1).equals(both[["value", "std"]].fillna(-1))


def test_the_sweep_runs_only_the_wrappers_asked_for_and_refuses_unknown_ones(tiny_bert, monkeypatch):
    setup, batch = _setup(tiny_bert)
    monkeypatch.setattr(problem, "calibration_batches", lambda *a, **k: [batch])
    some = problem.weight_act_sweep(setup, wrappers=[[8, 8], (4, 8)])
    assert list(some["setting"]) == ["FP32", "W8A8", "W32A8", "W8A32", "W4A8", "W4A32"]
    with pytest.raises(problem.ConfigError, match=r"unknown wrapper\(s\) \[\(5, 5\)\]"):
        problem.weight_act_sweep(setup, wrappers=[(5, 5)])
