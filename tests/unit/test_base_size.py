"""The base-size chapter's library: its budget, the anatomy on a planted outlier, and the MiniLM/paper columns."""

import types

import pandas as pd
import pytest
import torch

from outlierbook.errors import ConfigError
from outlierbook.experiments import base_size as bs
from outlierbook.models.tasks import FinetuneConfig, task_setup


def test_the_head_budget_is_the_base_size_models_own():
    cfg = bs.head_config("sst2", "full")
    assert (cfg.model, cfg.task, cfg.steps, cfg.batch_size) == (bs.MODEL, "sst2", 500, 16)
    assert cfg.key() != FinetuneConfig(model=bs.MODEL, task="sst2").key()
    with pytest.raises(ConfigError, match="unknown profile 'medium'"):
        bs.head_config("sst2", "medium")


def test_a_head_for_another_model_is_refused_before_anything_loads():
    with pytest.raises(ConfigError, match="head fine-tunes all-mpnet-base-v2 on sst2, but the setup is "
                                          "all-MiniLM-L6-v2 on sst2"):
        task_setup("sst2", "quick", head=bs.head_config("sst2", "quick"))


def test_delimiters_are_read_from_the_tokenizer():
    bert = types.SimpleNamespace(sep_token="[SEP]", cls_token="[CLS]")
    mpnet = types.SimpleNamespace(sep_token="</s>", cls_token="<s>")
    assert bs.delimiters(bert)["delimiters"] == ("[SEP]", ".", ",")
    assert bs.delimiters(mpnet)["delimiters + start"] == ("</s>", "<s>", ".", ",")


class _Tokens:
    sep_token, cls_token = "[SEP]", "[CLS]"

    def convert_ids_to_tokens(self, ids):
        return ["[SEP]" if i == 2 else f"w{i}" for i in ids]


@torch.no_grad()
def test_the_anatomy_finds_a_planted_outlier_dimension_on_its_token(tiny_bert):
    """One FFN output dimension made huge on the [SEP] token (through its embedding): the anatomy must put
    90 % of the outliers in one dimension in every layer, and in layer 0 (before attention mixes the
    trigger into other tokens' LayerNorm inputs) all of them on the delimiter."""
    model, batch = tiny_bert
    ids = batch["input_ids"].clone()
    ids[ids == 2] = 3
    ids[:, 5] = 2
    model.bert.embeddings.word_embeddings.weight[2].zero_()
    for layer in model.bert.encoder.layer:  # the FFN output's dimension 3 fires only where the input has a
        w = layer.output.dense.weight  # large value in dimension 0 of the intermediate activation
        w.zero_()
        w[3, 0] = 1.0
        layer.intermediate.dense.weight.zero_()
        layer.intermediate.dense.bias.zero_()
        layer.intermediate.dense.weight[0, 7] = 50.0
        layer.output.dense.bias.zero_()
    model.bert.embeddings.word_embeddings.weight[2, 7] = 100.0  # [SEP] carries the trigger into layer 0
    batches = [{"input_ids": ids, "attention_mask": batch["attention_mask"]}]
    table, summary = bs.outlier_anatomy(model, _Tokens(), batches)
    assert len(table) == 2 and summary["layers"] == 2 and summary["hidden"] == 16
    fired = table[table["outliers"] > 0]
    assert len(fired) >= 1
    assert (fired["dims holding 90 %"] == 1).all()
    assert table.loc[0, "outliers"] > 0 and table.loc[0, "share on delimiters (%)"] == 100.0
    assert summary["max share of dims holding 90 % (%)"] == pytest.approx(100 / 16)
    assert summary["max inf-norm"] > 5 and len(summary["range ratio, last two layers"]) == 2


def test_rows_are_read_in_the_reference_models_terms():
    assert bs.relabel("768 (=per-embd., 16 seq.)", 768, 12, 384, 6) == "384 (=per-embd., 16 seq.)"
    assert (bs.relabel("same as above, but for layers 10, 11 only", 768, 12, 384, 6)
            == "same as above, but for layers 4, 5 only")
    assert bs.reference_key("8-8-8", "GM + TWC", "stsb") == ("05_outlier_suppression", "table4/8-8-8/Ours (GM + TWC)/stsb")
    assert bs.reference_key("8-8-8", "TWC", "stsb") is None  # chapter 5 ran TWC alone only at 6-6-6
    with pytest.raises(ConfigError, match="unknown experiment"):
        bs.reference_key("table9", "x", "stsb")


def test_beside_puts_minilm_and_the_paper_next_to_ours():
    ours = pd.DataFrame({"stsb": [88.0, 86.0, 85.0]},
                        index=["FP32", "768 (=per-embd., 16 seq.)", "same as above, but for layers 10, 11 only"])
    stored = {"04_understanding": {"table5/FP32/stsb": 86.5, "table5/384 (=per-embd., 16 seq.)/stsb": 84.0}}
    side = bs.beside(ours, "table5", ["stsb"], stored.get, hidden=768, layers=12)
    assert list(side.columns) == [("stsb", "MPNet"), ("stsb", "MiniLM"), ("stsb", "paper")]
    assert side.loc["768 (=per-embd., 16 seq.)", ("stsb", "MiniLM")] == 84.0
    assert side.loc["768 (=per-embd., 16 seq.)", ("stsb", "paper")] == 87.87  # Table 5's per-embedding row
    assert side.loc["FP32", ("stsb", "paper")] == 89.09
    assert pd.isna(side.loc["same as above, but for layers 10, 11 only", ("stsb", "MiniLM")])
    missing = bs.beside(ours, "table5", ["stsb"], lambda chapter: None, hidden=768, layers=12)
    assert missing[("stsb", "MiniLM")].isna().all()  # no stored MiniLM run: shown as missing, never invented


def test_the_fp_rows_find_their_minilm_and_paper_numbers_in_every_table():
    assert bs.reference_key("8-8-8", "FP32", "sst2") == ("05_outlier_suppression", "table4/32-32-32/FP32/sst2")
    fp = pd.DataFrame({"sst2": [93.0], "stsb": [88.0]}, index=["FP32"])
    for experiment, task, paper in (("sweep", "sst2", 93.12), ("table4", "stsb", 89.09), ("6-6-6", "sst2", 95.18),
                                    ("8-8-8", "sst2", 93.35)):
        side = bs.beside(fp, experiment, ["sst2", "stsb"], lambda chapter: None, hidden=768, layers=12)
        assert side.loc["FP32", (task, "paper")] == paper, experiment
    table4 = bs.beside(fp, "table4", ["sst2"], lambda chapter: None, hidden=768, layers=12)
    assert pd.isna(table4.loc["FP32", ("sst2", "paper")])  # the paper's Table 4 ran only its problem tasks
