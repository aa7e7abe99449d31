import subprocess
import sys

import nbformat
import pytest

from outlierbook import registry, runner
from outlierbook.__main__ import main
from outlierbook.errors import ConfigError

CHAPTER = registry.CHAPTERS[0]


def test_parameters_come_from_the_parameters_cell():
    defaults = runner.parameter_defaults(CHAPTER)
    assert defaults["profile"] == "quick"
    assert runner.parameters_for(CHAPTER, "full")["profile"] == "full"


def test_unknown_parameter_and_profile_are_errors():
    with pytest.raises(ConfigError, match="unknown parameter.*nonsense"):
        runner.parameters_for(CHAPTER, "quick", {"nonsense": 1})
    with pytest.raises(ConfigError, match="unknown profile"):
        runner.parameters_for(CHAPTER, "medium")
    with pytest.raises(ConfigError, match="key=value"):
        runner.parse_overrides(["seed"])
    assert runner.parse_overrides(["seed=3", "name=dev", "x=0.5"]) == {"seed": 3, "name": "dev", "x": 0.5}


def test_dependency_order_and_unknown_chapter():
    assert [c.id for c in registry.in_dependency_order(["all"])] == [c.id for c in registry.CHAPTERS]
    with pytest.raises(ConfigError, match="unknown chapter"):
        registry.in_dependency_order(["99_nothing"])


@pytest.mark.parametrize("argv,message", [
    (["run", "00_how_to_run", "--profile", "medium"], "unknown profile 'medium'"),
    (["run", "99_nothing"], "unknown chapter '99_nothing'"),
    (["run", "00_how_to_run", "--set", "bogus=1"], "unknown parameter(s) bogus"),
    (["run", "00_how_to_run", "--set", "novalue"], "not key=value"),
    (["check", "--profile", "medium"], "unknown profile"),
    (["run", "00_how_to_run", "--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["validate", "--jobs", "-1"], "--jobs must be at least 1, got -1"),
])
def test_cli_bad_input_gives_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_runs_as_a_module_without_traceback():
    out = subprocess.run([sys.executable, "-m", "outlierbook", "run", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "unknown chapter" in out.stderr


def test_staleness_check(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "notebooks_dir", lambda: tmp_path)
    chapter = registry.Chapter(id="x", title="x")
    monkeypatch.setattr(runner, "in_dependency_order", lambda: [chapter])
    chapter.source.write_text('# %% tags=["parameters"]\nprofile = "quick"\n')
    assert "not executed" in runner.problems("quick")[0]
    nb = nbformat.v4.new_notebook()
    nb.metadata[runner.STAMP] = {"profile": "quick", "source_hash": runner.source_hash(chapter),
                                 "src_hash": runner.src_hash(), "error": None}
    nbformat.write(nb, chapter.executed)
    assert runner.problems("quick") == []
    assert "profile 'quick', expected 'full'" in runner.problems("full")[0]
    chapter.source.write_text('# %% tags=["parameters"]\nprofile = "quick"\nx = 1\n')
    assert any("stale" in p for p in runner.problems("quick"))
    nb.metadata[runner.STAMP].update(source_hash=runner.source_hash(chapter), error="PapermillExecutionError: boom")
    nbformat.write(nb, chapter.executed)
    assert any("failed" in p for p in runner.problems("quick"))


@pytest.mark.parametrize("argv,message", [
    # profile is --profile's: a --set profile=full used to overwrite the stored full results with quick numbers
    (["run", "01_quantization_primer", "--set", "profile=full"], "profile is chosen with --profile, not --set"),
    (["run", "07_naq", "--set", "bits=eight"], "parameter bits must be an int, got 'eight'"),
    (["run", "07_naq", "--set", "bits=40"], "bit-width from 2 to 16"),
    (["run", "02_the_problem", "--set", "tasks=sst2"], "parameter tasks must be a list, got 'sst2' (str); write e.g. --set tasks=["),
    (["run", "02_the_problem", "--set", "tasks=[sst2, imdb]"], "unknown task 'imdb'"),
    (["run", "02_the_problem", "--set", "eval_limit=0"], "eval_limit must be at least 1"),
    (["run", "01_quantization_primer", "--set", "focus_kind=ffn.residul"], "'ffn.residul' is not a node kind"),
    (["run", "01_quantization_primer", "--set", "model=./modls/bert"], "no model folder at modls/bert"),
    (["run", "01_quantization_primer", "--set", "model=bert-base-uncased"], "set OUTLIERBOOK_ONLINE=1"),
    (["run", "01_quantization_primer", "--set", "data_source=web"], "must be 'local'"),
    (["run", "06_quantizable", "--set", "act_estimators=[[percentile, {q: 99.9}]]"], "takes no argument 'q'; it takes: p"),
    (["run", "05_outlier_suppression", "--set", "table4_bits=[6-6]"], "are not understood; write them as W8A8"),
    (["run", "08_composing", "--set", "bits=[W8X8]"], "parameter bits: bit-widths 'W8X8' are not understood"),
    (["run", "08_composing", "--set", "bits=[W8A40]"], "parameter bits: bit-width 40 is outside"),
    (["run", "08_composing", "--set", "bits=8"], "parameter bits must be a list"),
    (["run", "04_understanding", "--set", "act_settings=[[mse, 4]]"], "must be [estimator, batches, batch size]"),
    (["run", "05_outlier_suppression", "--set", "qat_steps=epochs"], "a number of steps or 'epoch'"),
])
def test_cli_parameters_are_type_and_domain_checked_before_any_compute(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("OUTLIERBOOK_ONLINE", raising=False)
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "cache"))  # a fine-tune would land here
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "cache" / "finetuned").exists()


def test_a_model_folder_named_from_the_users_folder_reaches_the_notebook_as_an_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "mybert").mkdir()
    (tmp_path / "mybert" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    params = runner.parameters_for(registry.get("01_quantization_primer"), "quick", {"model": "mybert"})
    assert params["model"] == str(tmp_path / "mybert")  # chapters run in notebooks/, not in the user's folder


def test_prepare_reports_a_damaged_data_file_in_one_line(tmp_path, monkeypatch, capsys):
    d = tmp_path / "data" / "glue" / "MRPC"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA.\tB.\n-1\t3\t4\tC.\tD.\n")
    monkeypatch.setenv("OUTLIERBOOK_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "cache"))
    assert main(["prepare", "02_the_problem"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {d / 'train.tsv'}:3: label '-1' is not one of 0, 1; "
                   "the file is damaged or not the GLUE format of data/README.md"]
