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
