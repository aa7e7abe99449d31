"""Language-model outlier statistics and perplexity."""

import math

import torch
from transformers import BertConfig, BertForMaskedLM, OPTConfig, OPTForCausalLM

from outlierbook.analysis.lm_outliers import outlier_stats, per_sequence
from outlierbook.models.lm_eval import perplexity


def test_per_sequence_stats_match_the_definitions():
    x = torch.randn(3, 50, 8)
    x[1, 7, 2] = 40.0
    inf, kurt = per_sequence(x)
    assert inf[1] == 40.0
    flat = x[1].double().flatten()
    expected = ((flat - flat.mean()) ** 4).mean() / (flat.std() ** 4 + 1e-6)
    assert torch.isclose(kurt[1], expected)
    assert kurt[1] > 10 * kurt[0]  # one planted outlier makes the distribution heavy-tailed
    assert 2.0 < kurt[0] < 4.0  # Gaussian: plain kurtosis ≈ 3


def test_outlier_stats_and_perplexity_on_tiny_models():
    torch.manual_seed(0)
    blocks = torch.randint(5, 60, (6, 12))
    bert = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=16))
    opt = OPTForCausalLM(OPTConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                                   max_position_embeddings=16, word_embed_proj_dim=16))
    batch = [{"input_ids": blocks, "attention_mask": torch.ones_like(blocks)}]
    for model in (bert, opt):
        s = outlier_stats(model, batch)
        assert len(s["per_tensor"]) == 2 * 3 and s["max_inf_norm"] > 0 and s["max_kurtosis"] >= s["avg_kurtosis"]

    class Tok:
        mask_token_id = 3

        def __len__(self):
            return 60

    for model, kind in ((bert, "mlm"), (opt, "clm")):
        ppl = perplexity(model, blocks, kind, Tok(), batch_size=4)
        assert math.isfinite(ppl) and 20 < ppl < 200  # an untrained model is near-uniform over 60 tokens
