"""Outlier statistics on synthetic tensors with known answers."""

import pytest
import torch

from outlierbook.analysis import attention as att
from outlierbook.analysis import outliers as ol
from outlierbook.analysis.clipping import clipped
from outlierbook.errors import ConfigError


def gaussian(n=20000, d=64, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_kurtosis_of_a_normal_sample_is_three_not_zero():
    assert ol.kurtosis(gaussian()) == pytest.approx(3.0, abs=0.05)
    uniform = torch.rand(200000, generator=torch.Generator().manual_seed(1))
    assert ol.kurtosis(uniform) == pytest.approx(1.8, abs=0.02)


def test_planted_outlier_dimension_is_found():
    x = gaussian(2000, 128)
    x[::50, 17] += 40.0  # every 50th token gets a huge value in dim 17
    per_dim, per_tok = ol.outlier_counts(x)
    assert ol.top_dims(per_dim.float(), 1) == [17]
    assert ol.dims_holding(per_dim, 0.9) == 1
    assert int(per_tok.sum()) == int(per_dim.sum()) and int((per_tok > 0).sum()) == 40


def test_token_share_and_top_tokens():
    x = gaussian(6, 8) * 0.1
    x[2, 3] = 50.0
    x[5, 1] = 60.0
    _, per_tok = ol.outlier_counts(x, n_std=2.0)
    tokens = ["[CLS]", "a", "[SEP]", "b", "c", "."]
    share = ol.token_share(per_tok, tokens, {"delims": ("[SEP]", ".")})
    assert share["delims"] == pytest.approx(1.0)
    assert dict(ol.top_tokens(per_tok, tokens)) == {"[SEP]": 1, ".": 1}


def test_sequence_stats_average_per_sequence():
    a, b = torch.zeros(3, 4), torch.zeros(2, 4)
    a[0, 0], b[1, 2] = 2.0, -6.0
    s = ol.sequence_stats(torch.cat([a, b]), [3, 2])
    assert s["inf_norm"] == pytest.approx(4.0) and s["max_inf_norm"] == pytest.approx(6.0)


def test_gamma_overlap_recovers_the_non_scaling_output():
    x_prime = gaussian(500, 32)
    gamma = torch.ones(32)
    gamma[[3, 9]] = 20.0
    beta = torch.full((32,), 0.5)
    g = ol.gamma_overlap(gamma * x_prime + beta, gamma, beta, k=2)
    assert g["shared_dims"] == [3, 9] and g["overlap"] == 2
    assert torch.allclose(g["max_abs_x_prime"], (x_prime + beta / gamma).abs().amax(0), atol=1e-4)
    assert g["ratio_x_tilde"] > 5 * g["ratio_x_prime"]


def test_delimiter_mass_and_head_mapping():
    probs = torch.zeros(1, 2, 3, 3)
    probs[0, 0, :, 2] = 1.0  # head 0 attends to the delimiter at position 2
    probs[0, 1, :, 0] = 1.0
    mass = att.delimiter_mass(probs, torch.tensor([[False, False, True]]), torch.tensor([[True, True, True]]))
    assert mass.tolist() == [1.0, 0.0]
    assert att.head_of_dim(180, 64) == 2  # BERT-base: dim #180 -> head #3 (1-based)


def test_clipping_counts_tokens_and_restores_the_model():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=16)).eval()
    inputs = {"input_ids": torch.randint(0, 30, (2, 5)), "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])}
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
        with clipped(model, "ffn.gelu", 1e-6) as counts:
            changed = model(**inputs).last_hidden_state
        assert counts[0][1] == 8  # real tokens only
        assert not torch.allclose(changed, ref)
        assert torch.equal(model(**inputs).last_hidden_state, ref)
    with pytest.raises(ConfigError):
        with clipped(model, "attention.q", 1.0):
            pass
