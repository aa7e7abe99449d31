"""A quick build shows the stored full run's tables as the chapter's results (issue: the book as a reader meets it)."""
import pandas as pd

from outlierbook import compare, results
from outlierbook.headline import SMOKE_TEST, headline_metric, headline_table


def stored_run(root, chapter, metrics):
    rec = results.Recorder(chapter, "full", root=root)
    rec.update(metrics)
    return rec.save()


def quick_table():
    t = pd.DataFrame({"stsb": [80.0, 70.0], "sst2": [90.0, 85.0]}, index=["FP32", "W8A8"])
    t["average"] = t.mean(axis=1)
    return t


def test_without_a_stored_full_run_the_quick_table_is_shown_as_a_smoke_test(tmp_path):
    h = headline_table("04_x", "quick", "table1", quick_table(), root=tmp_path)
    assert h.profile == "quick" and SMOKE_TEST in h.source and not h.from_stored_run
    assert h.table.equals(quick_table())


def test_a_full_run_shows_its_own_table(tmp_path):
    stored_run(tmp_path, "04_x", {"table1/FP32/stsb": 1.0})
    h = headline_table("04_x", "full", "table1", quick_table(), root=tmp_path)
    assert h.profile == "full" and h.table.equals(quick_table())


def test_a_quick_build_shows_the_stored_full_table_in_this_runs_order(tmp_path):
    stored_run(tmp_path, "04_x", {f"table1/{row}/{task}": v for row, base in (("FP32", 86.0), ("W8A8", 80.0),
                                                                             ("W32A8", 81.0))
                                  for task, v in (("average", base), ("mrpc", base + 1), ("rte", base - 30),
                                                  ("sst2", base + 4), ("stsb", base))})
    h = headline_table("04_x", "quick", "table1", quick_table(), column_order=["stsb", "sst2", "mrpc", "rte"],
                       root=tmp_path)
    assert h.profile == "full" and h.from_stored_run and h.source.startswith("full run of commit ")
    assert list(h.table.index) == ["FP32", "W8A8", "W32A8"]  # this run's rows first, then the full run's others
    assert list(h.table.columns) == ["stsb", "sst2", "mrpc", "rte", "average"]  # the average stays last
    assert h.table.loc["W8A8", "rte"] == 50.0 and h.table.loc["FP32", "sst2"] == 90.0
    newer = headline_table("04_x", "quick", "table9", quick_table(), root=tmp_path)  # a table the run lacks
    assert newer.profile == "quick" and "the stored full run predates this table" in newer.source
    # fed to compare, the stored numbers are judged as full-profile numbers, not labelled "not comparable"
    paper = pd.DataFrame({"table": ["T1"], "setting": ["W8A8"], "metric": ["stsb"], "value": [79.5]})
    ours = h.table.drop(columns="average").reset_index(names="setting").melt(id_vars="setting", var_name="metric")
    verdicts = compare.compare(paper, ours, tol=1.0, profile=h.profile).set_index(["setting", "metric"])["verdict"]
    assert verdicts[("W8A8", "stsb")] == "within ±1"


def test_two_level_rows_are_rebuilt_from_slashed_keys(tmp_path):
    current = pd.DataFrame({"stsb": [60.0, 70.0]},
                           index=pd.MultiIndex.from_tuples([("6-6-6", "MinMax"), ("6-6-6", "Ours (GM + TWC)")],
                                                           names=["bits", "label"]))
    stored_run(tmp_path, "05_x", {"table4/8-8-8/MinMax/stsb": 85.0, "table4/6-6-6/Ours (GM + TWC)/stsb": 83.7,
                                  "table4/6-6-6/MinMax/stsb": 61.0})
    h = headline_table("05_x", "quick", "table4", current, root=tmp_path)
    assert list(h.table.index) == [("6-6-6", "MinMax"), ("6-6-6", "Ours (GM + TWC)"), ("8-8-8", "MinMax")]
    assert h.table.index.names == ["bits", "label"] and h.table.loc[("6-6-6", "MinMax"), "stsb"] == 61.0


def test_one_number_comes_from_the_stored_run_when_it_has_it(tmp_path):
    value, h = headline_metric("03_x", "quick", "share", 12.0, root=tmp_path)
    assert value == 12.0 and h.profile == "quick"
    stored_run(tmp_path, "03_x", {"share": 99.5})
    value, h = headline_metric("03_x", "quick", "share", 12.0, root=tmp_path)
    assert value == 99.5 and h.profile == "full" and h.from_stored_run
    assert headline_metric("03_x", "quick", "other", 3.0, root=tmp_path)[0] == 3.0
    assert headline_metric("03_x", "full", "share", 12.0, root=tmp_path)[0] == 12.0


def test_chapter_6_tables_sit_beside_the_papers_rows():
    from outlierbook.experiments import quantizable as qx

    assert qx.table1_setting("vanilla") == "gamma=0, zeta=1 (vanilla)"
    assert qx.table1_setting("γ=-0.03·128/T, ζ=1.03") == "gamma=-0.03, zeta=1.03"
    assert qx.table2_setting("decoder gated attention") == "OPT gated attention"
    rows = [{"label": "encoder vanilla", "ppl_fp": p, "max_inf_norm": 4.0, "avg_kurtosis": 3.0, "ppl_w8a8": p + 1}
            for p in (10.0, 12.0)] + [{"label": "decoder vanilla", "ppl_fp": 30.0, "max_inf_norm": 20.0,
                                       "avg_kurtosis": 6.0, "ppl_w8a8": 31.0}]
    side = qx.beside_paper(qx.mean_std(rows).set_index("label"), compare.load_paper("quantizable", "Table 2"),
                           qx.table2_setting)
    assert side.loc["encoder vanilla", ("FP ppl", "ours")] == "11.00 ± 1.41"  # two seeds: mean ± std
    assert side.loc["decoder vanilla", ("FP ppl", "ours")] == "30.00"  # one seed: the mean alone
    assert side.loc["encoder vanilla", ("max inf-norm", "paper")] == 735.0  # the paper's BERT row


def test_chapter_7_reads_ours_against_the_papers_ranges():
    from outlierbook.experiments import naq as nx

    metrics = {"pre_share/T128": 0.34, "best/stsb/avoided_share": 0.73, "best/stsb/energy_vs_fp16": 0.77,
               "best/stsb/energy_vs_int8": 0.85}
    side = nx.beside_paper(metrics, ["stsb", "sst2"], compare.load_paper("naq"))
    assert side.loc["pre-nonlinearity share of computation", "paper"] == "0.29–0.57"
    assert side.loc["relative energy against an FP16 baseline (GPTQ LLMs)", "paper"] == "lowest reported 0.71"
    assert side.loc["share of FP pre-nonlinearity computation avoided (PTQ4ViT)", "stsb"] == 0.73
    assert side["sst2"].isna().sum() == 4  # a task the run did not store is shown as missing, not invented


def test_figure_data_come_back_from_the_stored_run_with_numeric_index(tmp_path):
    """A figure over hidden dimensions draws the full run's (384-wide, here 12) data in a quick build."""
    from outlierbook.headline import figure_data, figure_metrics

    full = pd.DataFrame({"outliers": [float(i % 5) for i in range(12)]}, index=pd.RangeIndex(12, name="dimension"))
    stored_run(tmp_path, "03_x", figure_metrics("fig_dims", full))
    quick = pd.DataFrame({"outliers": [1.0, 0.0, 2.0]}, index=pd.RangeIndex(3, name="dimension"))
    shown = figure_data("03_x", "quick", "fig_dims", quick, root=tmp_path)
    assert shown.from_stored_run and shown.profile == "full"
    assert list(shown.table.index) == list(range(12)) and shown.table.index.name == "dimension"
    assert shown.table["outliers"].tolist() == full["outliers"].tolist()
    own = figure_data("03_y", "quick", "fig_dims", quick, root=tmp_path)
    assert not own.from_stored_run and own.table.equals(quick)


def test_experiment_rows_come_from_the_stored_full_run_and_melted_tables_come_back_wide(tmp_path):
    from outlierbook.headline import experiment_rows

    current = pd.DataFrame({"layer": [0, 1], "ln": ["MHA-LN", "MHA-LN"], "x_tilde": [90.0, 91.0], "x_prime": [95.0, 96.0]})
    h = experiment_rows("05_x", "quick", "ln_cosine", current, wide=("layer", "ln"), root=tmp_path)
    assert h.profile == "quick" and SMOKE_TEST in h.source and h.table.equals(current)
    rec = results.Recorder("05_x", "full", root=tmp_path)
    full = current.assign(x_tilde=[80.0, 81.0], x_prime=[97.0, 98.0])
    rec.add_rows(full.melt(id_vars=["layer", "ln"], var_name="metric").assign(experiment="ln_cosine"))
    rec.add_rows(pd.DataFrame({"step": [1], "loss": [2.0]}).assign(experiment="curves"))
    rec.save()
    h = experiment_rows("05_x", "quick", "ln_cosine", current, wide=("layer", "ln"), root=tmp_path)
    assert h.from_stored_run and h.profile == "full"
    assert list(h.table.columns) == list(current.columns) and h.table["x_prime"].tolist() == [97.0, 98.0]
    assert h.table["layer"].dtype == current["layer"].dtype  # the CSV stored it as float beside other experiments
    long = experiment_rows("05_x", "quick", "curves", pd.DataFrame({"step": [], "loss": []}), root=tmp_path)
    assert long.table["loss"].tolist() == [2.0]
    missing = experiment_rows("05_x", "quick", "figure9", current, root=tmp_path)
    assert missing.table.equals(current) and "predates" in missing.source
    assert experiment_rows("05_x", "full", "ln_cosine", current, root=tmp_path).table.equals(current)
