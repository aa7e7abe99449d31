"""The PEG and OS rules, and the competence precondition's two verdicts, on tables built by hand."""

import pandas as pd

from outlierbook import competence
from outlierbook.experiments import os_rules, peg_rules


def test_peg_rules():
    assert peg_rules.peg1(pd.Series({"FP32": 80.0, "W8A32": 79.6, "W32A8": 70.0}))
    assert not peg_rules.peg1(pd.Series({"FP32": 80.0, "W8A32": 79.0, "W32A8": 70.0}))  # weights cost 1 point
    loo = pd.Series({"none (FP32 model)": 80.0, "all": 60.0, peg_rules.FFN_RESIDUAL_KEPT: 75.0, "attention": 65.0})
    assert peg_rules.peg2(loo) and peg_rules.recoveries(loo)[peg_rules.FFN_RESIDUAL_KEPT] == 15.0
    assert not peg_rules.peg2(loo.replace({65.0: 79.0}))
    assert peg_rules.peg4(pd.Series({"FP32": 80.0, peg_rules.MIXED_PRECISION: 79.0}))
    assert not peg_rules.peg4(pd.Series({"FP32": 80.0, peg_rules.MIXED_PRECISION: 78.9}))
    v = pd.Series({"FP32": 80.0, peg_rules.PER_TENSOR: 60.0, peg_rules.PEG6_K: 78.5, "per-embedding": 79.0,
                   peg_rules.PEG3_K: 77.0, peg_rules.PEG3_BARE: 70.0})
    assert peg_rules.peg5(v, "per-embedding") and peg_rules.peg5_old(v)  # 18.5 / 20 = 92.5 % of the gap
    assert not peg_rules.peg5(v.replace({79.0: 80.0}), "per-embedding")
    assert not peg_rules.peg5_old(v.replace({78.5: 77.0}))  # 85 % of the gap
    assert peg_rules.gap_recovered(v) == 0.925
    assert not peg_rules.peg5_old(v.replace({60.0: 80.0}))  # no gap to recover: the old rule cannot hold
    assert peg_rules.peg7(pd.Series({"FP32": 80.0, "W4A8 QAT": 78.0, "W4A8, 2-bit embd. QAT": 77.0}))
    assert not peg_rules.peg7(pd.Series({"FP32": 80.0, "W4A8 QAT": 78.0, "W4A8, 2-bit embd. QAT": 76.9}))


def test_os_rules():
    assert os_rules.os7(pd.Series({"MinMax": 50.0, "MinMax + GM": 60.0, "TWC": 70.0, "GM + TWC": 71.0}))
    assert not os_rules.os7(pd.Series({"MinMax": 50.0, "MinMax + GM": 60.0, "TWC": 71.0, "GM + TWC": 71.0}))
    idx = pd.MultiIndex.from_tuples([("32-32-32", "FP32"), ("6-6-6", "MinMax"), ("6-6-6", os_rules.OURS),
                                     ("8-8-8", os_rules.OURS)], names=["bits", "method"])
    v = pd.Series([80.0, 70.0, 75.0, 79.5], index=idx)
    assert os_rules.os8(v) and os_rules.os8_evidence(v)["gap to FP (8-8-8 ours)"] == 0.5
    assert not os_rules.os8(v.replace({79.5: 78.0}))
    assert not os_rules.os8(v.replace({70.0: 76.0}))
    six_only = v.drop(("8-8-8", os_rules.OURS))
    assert os_rules.os8(six_only) and "gap to FP (8-8-8 ours)" not in os_rules.os8_evidence(six_only)


def test_averages_give_the_new_and_the_old_verdict_and_show_the_excluded_tasks():
    table = pd.DataFrame({"a": [80.0, 79.0], "b": [70.0, 69.0], "c": [50.0, 60.0]}, index=["FP32", "W"])
    state = {t: {"fp": 0.0, "majority": 0.0, "competent": t != "c"} for t in table}
    avg = competence.averages(table, state)
    assert avg.verdicts(lambda v: v["FP32"] > v["W"]) == (True, False)  # c's 60 > 50 tips the old average
    shown = avg.shown(["FP32"])
    assert shown == {"FP32": 75.0, "c (excluded)": {"FP32": 50.0}}
    state["b"]["competent"] = False
    assert competence.averages(table, state).verdicts(lambda v: True) == (None, True)
