import pytest

from outlierbook.data.glue import load_task, task_spec
from outlierbook.errors import DataNotFoundError, MalformedDataError, UnknownTaskError

# Official example counts (../shared/data/README.md).
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
    with pytest.raises(MalformedDataError, match="dev.tsv:2: expected at least 3"):
        load_task("rte", "dev", data_dir_override=tmp_path)
    (d / "train.tsv").write_text("sentence1\tsentence2\tlabel\tidx\n")
    with pytest.raises(MalformedDataError, match="no examples"):
        load_task("rte", "train", data_dir_override=tmp_path)
