"""The book's ground rules: layout, pins, and the registry as the single source of truth."""

import re

import pytest
import yaml

from outlierbook import registry
from outlierbook.paths import repo_root

ROOT = repo_root()


def toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        for value in node.values():
            out += toc_files(value)
    elif isinstance(node, list):
        for item in node:
            out += toc_files(item)
    return out


def test_jupyter_book_1_layout():
    assert (ROOT / "_config.yml").is_file() and (ROOT / "_toc.yml").is_file()
    assert not (ROOT / "myst.yml").exists(), "myst.yml is Jupyter Book 2; this book is JB 1.x"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"


def test_toc_lists_exactly_the_registered_chapters_in_order():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [f.split("/", 1)[1] for f in toc_files(toc) if f.startswith("notebooks/")]
    assert chapters == [c.id for c in registry.CHAPTERS]
    for f in toc_files(toc) + [toc["root"]]:
        if not f.startswith("notebooks/"):
            assert (ROOT / f"{f}.md").is_file(), f


def test_every_chapter_has_source_parameters_and_checked_cell():
    for chapter in registry.CHAPTERS:
        text = chapter.source.read_text()
        assert 'tags=["parameters"]' in text, chapter.id
        assert "nbval-check-output" in text, chapter.id
        assert "kernelspec" in text, chapter.id
        for dep in chapter.depends_on:
            assert [c.id for c in registry.CHAPTERS].index(dep) < registry.CHAPTERS.index(chapter)
        assert set(chapter.profiles) <= set(registry.PROFILES)


def test_each_chapter_has_one_title_and_no_stray_heading():
    """A markdown line that starts with ``# `` after the jupytext prefix renders as a first-level heading, even
    mid-paragraph (an ATX heading interrupts a paragraph), so only the chapter's title may be one."""
    for chapter in registry.CHAPTERS:
        titles = [n for n, line in enumerate(chapter.source.read_text().splitlines(), 1) if line.startswith("# # ")]
        assert len(titles) == 1, f"{chapter.id}: first-level headings on lines {titles}; only the title is one"


def test_requirements_are_exact_pins():
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert "torch==2.13.0" in lines
    assert any(re.fullmatch(r"jupyter-book==1\.\d+\.\d+(\.post\d+)?", l) for l in lines)
    for line in lines:
        assert line == "-e ." or "==" in line, f"not an exact pin: {line}"


def test_readme_names_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make book" in readme and "make test" in readme
    assert "make test" in ci


def test_a_clone_needs_nothing_beside_it():
    """Data, ledger and prose live in the repository: nothing the book reads or links is in ../shared."""
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "notebooks").glob("*.py"), *(ROOT / "book").rglob("*.md"),
                 ROOT / "README.md", ROOT / "Makefile", ROOT / "_config.yml", ROOT / "_toc.yml"]:
        assert "../shared" not in path.read_text(encoding="utf-8"), path
    data = ROOT / "data"
    for name in ("README.md", "claims.md", "glue/SST-2/train.tsv", "glue/STS-B/sts-test.csv", "glue/MRPC/LICENSE.htm",
                 "glue/RTE/dev.tsv", "wikitext-2/wiki.test.raw"):
        assert (data / name).is_file(), name


STEERING_LEDGER = ROOT.parent / "shared" / "claims.md"


@pytest.mark.skipif(not STEERING_LEDGER.is_file(), reason="a stand-alone clone: no steering ledger beside it")
def test_the_books_ledger_is_the_steering_ledger():
    data = ROOT / "data"
    steering = STEERING_LEDGER
    assert (data / "claims.md").read_text(encoding="utf-8") == steering.read_text(encoding="utf-8"), (
        "data/claims.md differs from the project's steering ledger: copy it in (rule changes are dated there)")


def test_the_teaching_page_lists_every_chapters_exercises_without_solutions(tmp_path):
    from outlierbook import teaching

    for chapter in registry.CHAPTERS:
        items = teaching.exercises(chapter)
        assert len(items) >= 2, chapter.id
        assert not any("Solution" in item or "```" in item for item in items), chapter.id
    text = teaching.fragment()
    assert text.count("{doc}`/notebooks/") >= 2 * len(registry.CHAPTERS)
    assert (ROOT / "book" / "teaching.md").read_text().count("_generated/teaching.md") == 1


def test_the_teaching_page_reads_profile_time_and_threads_from_the_runners_stamp(tmp_path):
    import types

    import nbformat

    from outlierbook import teaching

    nb = nbformat.v4.new_notebook()
    nb.metadata["outlierbook"] = {"profile": "quick", "seconds": 90.0, "threads": 1}
    nbformat.write(nb, tmp_path / "x.ipynb")
    assert teaching.run_seconds(types.SimpleNamespace(executed=tmp_path / "x.ipynb")) == ("quick", 90.0, 1)
    assert teaching.run_seconds(types.SimpleNamespace(executed=tmp_path / "none.ipynb")) == (None, None, None)


def test_only_the_model_anatomy_knows_hugging_face_module_paths():
    """Methods speak of roles (``layer.ffn_in``); the module paths of the families live in one module."""
    paths = re.compile(r"attention\.self\b|\.intermediate\b|output\.LayerNorm|\bself_attn\b|\.fc[12]\b|encoder\.layer\b"
                       r"|output\.dense\b|\bq_lin\b|sa_layer_norm|\.query_key_value\b")
    allowed = {"anatomy.py"}
    offenders = []
    for path in sorted((ROOT / "src" / "outlierbook").rglob("*.py")) + sorted((ROOT / "notebooks").glob("*.py")):
        if path.name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if paths.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "Hugging Face module paths outside models/anatomy.py:\n" + "\n".join(offenders)
