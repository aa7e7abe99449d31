"""The QT rules and the outliers-present precondition, on rows built by hand."""

import pytest

from outlierbook import outlier_precondition as pre
from outlierbook.experiments import qt_rules as rules

VANILLA = {"ppl_fp": 10.0, "ppl_w8a8": 14.0, "max_inf_norm": 100.0, "avg_kurtosis": 300.0}


def test_fixes_needs_every_clause():
    good = {"ppl_fp": 10.4, "ppl_w8a8": 11.0, "max_inf_norm": 20.0, "avg_kurtosis": 30.0}
    assert rules.fixes(good, VANILLA)
    assert not rules.fixes({**good, "ppl_fp": 10.6, "ppl_w8a8": 11.2}, VANILLA)  # FP more than 5 % worse
    assert not rules.fixes({**good, "max_inf_norm": 100.0}, VANILLA)  # not lower
    assert not rules.fixes({**good, "avg_kurtosis": 301.0}, VANILLA)
    assert not rules.fixes({**good, "ppl_w8a8": 14.5}, VANILLA)  # W8A8 gap 4.1 ≥ vanilla's 4


def test_closer_to_vanilla_compares_log_ratios_of_both_statistics():
    zeta = {"max_inf_norm": 110.0, "avg_kurtosis": 280.0}
    gamma = {"max_inf_norm": 30.0, "avg_kurtosis": 600.0}
    assert rules.closer_to_vanilla(zeta, gamma, VANILLA)
    assert not rules.closer_to_vanilla({**zeta, "avg_kurtosis": 1000.0}, gamma, VANILLA)


def test_one_alpha_counts_lengths_and_respects_the_testable_ones():
    vanilla = {32: {"max_inf_norm": 50.0}, 64: {"max_inf_norm": 40.0}, 128: {"max_inf_norm": 30.0}}
    rows = [{"alpha": 2.0, "seq_len": 32, "max_inf_norm": 10.0}, {"alpha": 2.0, "seq_len": 64, "max_inf_norm": 10.0},
            {"alpha": 2.0, "seq_len": 128, "max_inf_norm": 31.0}, {"alpha": 4.0, "seq_len": 128, "max_inf_norm": 1.0}]
    lowered = rules.lowered_at(rows, vanilla)
    assert lowered == {2.0: [32, 64], 4.0: [128]}
    assert rules.one_alpha(lowered) == [2.0]
    assert rules.one_alpha(lowered, lengths=[64, 128]) == []


def test_robust_pi_inits():
    rows = [{"pi_init": 0.25, "max_inf_norm": 50.0, "ppl_fp": 10.2}, {"pi_init": 0.5, "max_inf_norm": 150.0, "ppl_fp": 9.0},
            {"pi_init": 0.9, "max_inf_norm": 50.0, "ppl_fp": 11.0}]
    assert rules.robust_pi_inits(rows, VANILLA) == [0.25]


def test_precondition_thresholds_and_gating():
    assert pre.present({"max_inf_norm": 20.0, "avg_kurtosis": 20.0})
    assert not pre.present({"max_inf_norm": 4.2, "avg_kurtosis": 3.8})
    assert not pre.present({"max_inf_norm": 735.0, "avg_kurtosis": 19.9})
    with_outliers, without = {"max_inf_norm": 735.0, "avg_kurtosis": 3076.0}, {"max_inf_norm": 4.2, "avg_kurtosis": 3.8}
    assert pre.gated(False, {"a": with_outliers}) is False
    assert pre.gated(True, {"a": with_outliers, "b": without}) is None
    assert "no outliers to fix" in pre.describe(without, "encoder vanilla")
    with pytest.raises(KeyError, match="outlier_stats"):
        pre.present({"max_inf_norm": 30.0})
    with pytest.raises(ValueError):
        pre.gated(True, {})
