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
