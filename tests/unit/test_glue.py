import pytest

from outlierbook.data.glue import load_task, task_spec
from outlierbook.errors import DataNotFoundError, MalformedDataError, UnknownTaskError

# Official example counts (data/README.md).
COUNTS = {("sst2", "train"): 67349, ("sst2", "dev"): 872, ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
          ("stsb", "test"): 1379, ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("mrpc", "test"): 1725,
          ("rte", "train"): 2490, ("rte", "dev"): 277}


@pytest.mark.parametrize("task,split", sorted(COUNTS))
def test_counts_match_the_official_numbers(task, split):
    data = load_task(task, split)
    assert len(data) == COUNTS[(task, split)]
    assert len(data.labels) == len(data)
    assert (data.text_b is None) == (task == "sst2")


def test_label_conventions():
    rte = load_task("rte", "dev")
    assert set(rte.labels) == {0, 1}  # 0 = entailment
    stsb = load_task("stsb", "dev")
    assert 0.0 <= min(stsb.labels) and max(stsb.labels) <= 5.0
    mrpc = load_task("mrpc", "dev")
    assert not mrpc.text_a[0].startswith("\ufeff")


def test_aliases():
    assert task_spec("SST-2").name == "sst2" and task_spec("STS-B").name == "stsb"


def test_unknown_task_names_the_fix():
    with pytest.raises(UnknownTaskError, match="use one of: sst2, stsb, mrpc, rte"):
        load_task("imdb")
    with pytest.raises(UnknownTaskError, match="cannot load offline"):
        load_task("mnli")
    with pytest.raises(UnknownTaskError, match="no split 'test'"):
        load_task("rte", "test")


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataNotFoundError, match="OUTLIERBOOK_DATA"):
        load_task("sst2", "dev", data_dir_override=tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="glue/SST-2"):
        load_task("sst2", "dev", data_dir_override=tmp_path)


def test_env_variable_points_at_the_data(tmp_path, monkeypatch):
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text("text\tlabel\ngood film\t1\nbad film\t0\n")
    monkeypatch.setenv("OUTLIERBOOK_DATA", str(tmp_path))
    assert load_task("sst2", "dev").labels == [1, 0]


def test_malformed_files_name_file_and_line(tmp_path):
    d = tmp_path / "glue" / "SST-2"
    d.mkdir(parents=True)
    (d / "dev.tsv").write_text("text\tlabel\ngood film\tpositive\n")
    with pytest.raises(MalformedDataError, match=r"dev.tsv:2: label 'positive'"):
        load_task("sst2", "dev", data_dir_override=tmp_path)
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    (d / "dev.tsv").write_text("sentence1\tsentence2\tlabel\tidx\nonly one field\n")
    with pytest.raises(MalformedDataError, match="dev.tsv:2: expected 4 tab-separated fields, found 1"):
        load_task("rte", "dev", data_dir_override=tmp_path)
    (d / "train.tsv").write_text("sentence1\tsentence2\tlabel\tidx\n")
    with pytest.raises(MalformedDataError, match="no examples"):
        load_task("rte", "train", data_dir_override=tmp_path)


def _write(root, folder, name, text):
    d = root / "glue" / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)


def test_the_book_reads_its_own_data_folder(monkeypatch):
    from outlierbook.paths import data_dir, repo_root

    monkeypatch.delenv("OUTLIERBOOK_DATA", raising=False)
    assert data_dir() == repo_root() / "data"
    assert (repo_root() / "data" / "glue" / "SST-2" / "dev.tsv").is_file()


@pytest.mark.parametrize("folder,name,text,task,message", [
    # RTE row with a missing tab: before, text_b became the label and the label the index
    ("RTE", "dev.tsv", "sentence1\tsentence2\tlabel\tidx\nA man sleeps. A man is asleep.\t0\t7\n", "rte",
     r"dev.tsv:2: expected 4 tab-separated fields, found 3"),
    ("SST-2", "dev.tsv", "text\tlabel\ngood film\t1\nbad film\t2\n", "sst2", r"dev.tsv:3: label '2' is not one of 0, 1"),
    ("SST-2", "dev.tsv", "text\tlabel\ngood film\t1\nbad fi", "sst2", r"dev.tsv:3: expected 2 tab-separated fields, found 1"),
    ("SST-2", "dev.tsv", "", "sst2", "holds no examples"),
    ("SST-2", "dev.tsv", "text\tlabel\n\t1\n", "sst2", "dev.tsv:2: the first sentence is empty"),
    ("STS-B", "sts-dev.csv", "g\tf\t2012\t1\tnan\tA man.\tA man.\n", "stsb", r"sts-dev.csv:1: score 'nan' is not a number in \[0, 5\]"),
    ("STS-B", "sts-dev.csv", "g\tf\t2012\t1\t7.5\tA man.\tA man.\n", "stsb", r"score '7.5' is not a number in \[0, 5\]"),
    ("MRPC", "dev.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n-1\t1\t2\tA.\tB.\n", "mrpc",
     r"dev.tsv:2: label '-1' is not one of 0, 1"),
])
def test_damaged_rows_are_errors_naming_file_and_line(tmp_path, folder, name, text, task, message):
    _write(tmp_path, folder, name, text)
    with pytest.raises(MalformedDataError, match=message):
        load_task(task, "dev", data_dir_override=tmp_path)


def test_a_binary_file_is_a_data_error_not_a_traceback(tmp_path):
    d = tmp_path / "glue" / "SST-2"
    d.mkdir(parents=True)
    (d / "dev.tsv").write_bytes(b"text\tlabel\n\xff\xfe\x00\x81 good\t1\n")
    with pytest.raises(MalformedDataError, match="cannot be read as tab-separated UTF-8 text"):
        load_task("sst2", "dev", data_dir_override=tmp_path)


def test_a_truncated_file_of_the_books_data_is_caught_at_a_line_boundary(tmp_path, monkeypatch):
    import outlierbook.data.glue as glue

    lines = (glue.default_data_dir() / "glue" / "SST-2" / "dev.tsv").read_text().splitlines(keepends=True)
    _write(tmp_path, "SST-2", "dev.tsv", "".join(lines[:500]))
    monkeypatch.setattr(glue, "default_data_dir", lambda: tmp_path)
    with pytest.raises(MalformedDataError, match=r"has 499 examples, the official SST-2 dev split has 872.*git checkout"):
        load_task("sst2", "dev", data_dir_override=tmp_path)
