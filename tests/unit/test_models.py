import numpy as np
import pytest

from outlierbook.errors import ConfigError, ModelNotAvailableError
from outlierbook.models import load, tasks


def test_metrics_for_known_predictions():
    m = tasks.metrics_for("mrpc", np.array([1, 1, 0, 0]), [1, 0, 0, 1])
    assert m["accuracy"] == 50.0 and m["f1"] == pytest.approx(50.0)
    s = tasks.metrics_for("stsb", np.array([0.1, 0.2, 0.3]), [1.0, 2.0, 5.0])
    assert s["spearman"] == pytest.approx(100.0)


def test_mean_pool_ignores_padding():
    import torch

    h = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert tasks.mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 2.0]]


def test_finetune_key_is_stable_and_budget_checks_profile():
    a, b = tasks.budget("sst2", "quick"), tasks.budget("SST-2", "quick")
    assert a.key() == b.key() and a.key() != tasks.budget("sst2", "full").key()
    assert tasks.budget("sst2", "quick", seed=1).key() != a.key()
    with pytest.raises(ConfigError):
        tasks.budget("sst2", "medium")


def test_unknown_model_offline_names_the_fix():
    with pytest.raises(ModelNotAvailableError, match="embedded default"):
        load.load_tokenizer("no-such-org/no-such-model")


@pytest.mark.slow
def test_embedded_model_reproduces_published_stsb_score():
    """all-MiniLM-L6-v2 publishes STS-B test Spearman 82.03; the dev split gives about 86.7."""
    enc, tok = load.load_encoder(), load.load_tokenizer()
    assert tasks.stsb_zero_shot(enc, tok, split="test")["spearman"] == pytest.approx(82.03, abs=0.05)
    assert tasks.stsb_zero_shot(enc, tok, split="dev")["spearman"] == pytest.approx(86.7, abs=0.1)


def test_a_misspelt_model_folder_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotAvailableError, match="no model folder at modls/bert"):
        load.load_tokenizer("./modls/bert")  # before: told to use the embedded default
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="holds no config.json"):
        load.load_encoder(str(tmp_path / "empty"))


def test_a_hub_id_offline_fails_at_once_with_the_fix(monkeypatch):
    monkeypatch.delenv("OUTLIERBOOK_ONLINE", raising=False)
    calls = []
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: calls.append(a))
    with pytest.raises(ModelNotAvailableError, match="hub ids need the network.*OUTLIERBOOK_ONLINE=1"):
        load.load_tokenizer("bert-base-uncased")
    assert calls == []  # never reached the hub client (which retried DNS for ~23 s)


def test_a_model_with_non_finite_weights_is_refused(tmp_path):
    import torch

    from tiny_models import tiny_classifier

    model = tiny_classifier()
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan-model")
    with pytest.raises(ModelNotAvailableError, match=r"non-finite values .* in bert.encoder.layer.1.output.dense.weight"):
        load.load_classifier(str(tmp_path / "nan-model"))


def test_a_sequence_longer_than_the_models_positions_is_refused_before_the_model_runs():
    tokenizer = load.load_tokenizer()  # the embedded model: 512 positions (before: a raw size mismatch inside it)
    with pytest.raises(ConfigError, match="max_length 600 is longer than the model's 512 positions"):
        tasks.encode(tokenizer, ["a sentence"], max_length=600)
    assert tasks.encode(tokenizer, ["a sentence"], max_length=512)["input_ids"].shape[1] == 4
