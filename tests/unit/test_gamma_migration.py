"""Gamma Migration is an equivalent transformation in FP (OS-4: max |Δ output| ≤ 1e-4)."""

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from outlierbook.errors import ConfigError, OutlierBookError
from outlierbook.methods.gamma_migration import NonScalingLayerNorm, migrate_gamma
from outlierbook.quant.calibrate import calibrate
from outlierbook.quant.nodes import quantize_model


def random_bert_with_random_gamma(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 4 + 0.1) * torch.sign(torch.randn(m.weight.shape, generator=g)))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_migrated_random_bert_equals_the_original():
    model = random_bert_with_random_gamma()
    migrated = copy.deepcopy(model)
    names = migrate_gamma(migrated)
    assert names[0] == "embeddings.ln" and "layer2.attention.ln" in names and "layer2.ffn.ln" not in names
    assert len(names) == 1 + 3 + 2
    with torch.no_grad():
        a, b = model(**inputs(), output_hidden_states=True), migrated(**inputs(), output_hidden_states=True)
    assert (a.logits - b.logits).abs().max() <= 1e-4
    # intermediate hidden states are X' (not X~) after migration; the final layer output is unchanged
    assert (a.hidden_states[-1] - b.hidden_states[-1]).abs().max() <= 1e-4


def test_non_scaling_layernorm_times_gamma_is_layernorm():
    ln = torch.nn.LayerNorm(8)
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(-2, 3, 8) + 0.05)
        ln.bias.copy_(torch.linspace(1, -1, 8))
    x = torch.randn(5, 8)
    ns = NonScalingLayerNorm(ln)
    assert torch.allclose(ns(x) * ns.gamma, ln(x), atol=1e-5)


def test_zero_gamma_and_double_migration_are_refused():
    model = random_bert_with_random_gamma()
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.weight[0] = 0.0
    with pytest.raises(OutlierBookError, match="γ"):
        migrate_gamma(copy.deepcopy(model))
    model = random_bert_with_random_gamma()
    migrate_gamma(model)
    with pytest.raises(OutlierBookError, match="already"):
        migrate_gamma(model)


def test_quantization_nodes_attach_to_the_migrated_model():
    model = random_bert_with_random_gamma()
    migrate_gamma(model)
    qm = quantize_model(model, placement="os")
    with torch.no_grad():
        ref = model(**inputs()).logits
        assert torch.allclose(qm(**inputs()).logits, ref, atol=1e-5)
        calibrate(qm, [inputs()])
        node = qm.node("layer0.attention.ln")
        assert node.quantizer.calibrated


@pytest.mark.slow
def test_migrated_embedded_model_equals_the_original_on_real_inputs():
    from outlierbook.models import load

    enc, tok = load.load_encoder(), load.load_tokenizer()
    batch = tok(["A man is playing a guitar.", "Stocks fell sharply on Monday, analysts said.", "ok"],
                padding=True, return_tensors="pt")
    migrated = copy.deepcopy(enc)
    migrate_gamma(migrated)
    with torch.no_grad():
        a, b = enc(**batch).last_hidden_state, migrated(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert (a - b)[mask].abs().max() <= 1e-4


def test_non_scaling_output_quantizes_better_when_gamma_has_outlier_dims():
    from outlierbook.methods.gamma_migration import migration_cosines, weight_cosines

    g = torch.Generator().manual_seed(0)
    x_hat = torch.randn(400, 32, generator=g)
    gamma = torch.ones(32)
    gamma[[5, 17]] = 25.0
    beta = torch.zeros(32)
    cos = migration_cosines(gamma * x_hat + beta, gamma, beta, bits=6)
    assert cos["x_prime"] > cos["x_tilde"]
    lin = torch.nn.Linear(32, 8)
    w = weight_cosines(lin, torch.ones(32), bits=6)
    assert w["original"] == pytest.approx(w["gamma_scaled"])


def test_selective_migration_moves_only_the_layernorms_whose_gamma_amplifies_the_outliers(tiny_bert):
    """The rule fixed in advance: migrate an LN iff mean |γ| over its top-10 outlier dims exceeds 1."""
    import copy

    import torch

    from outlierbook.methods.gamma_migration import NonScalingLayerNorm, outlier_gammas
    from outlierbook.models.anatomy import anatomy
    from outlierbook.recipe import GammaMigration, Recipe
    from outlierbook.recipe.quantize import transformed

    model, batch = tiny_bert
    model = copy.deepcopy(model)
    anat = anatomy(model)
    with torch.no_grad():
        for i, layer in enumerate(anat.layers):  # γ > 1 on every MHA-LN, γ < 1 on every FFN-LN
            layer.attention_ln.weight.fill_(1.5)
            layer.ffn_ln.weight.fill_(0.5)
        anat.embeddings_ln.weight.fill_(0.5)
    batches = [batch]
    found = {r["layernorm"]: r for r in outlier_gammas(model, batches)}
    assert all(r["amplifies"] == ("attention" in ln) for ln, r in found.items())
    assert found["layer0.attention.ln"]["mean |γ| at outlier dims"] == pytest.approx(1.5)
    migrated = transformed(model, Recipe(transforms=(GammaMigration(selective=True),)), batches)
    new = anatomy(migrated)
    assert all(isinstance(layer.attention_ln, NonScalingLayerNorm) for layer in new.layers)
    assert not any(isinstance(layer.ffn_ln, NonScalingLayerNorm) for layer in new.layers)
    assert not isinstance(new.embeddings_ln, NonScalingLayerNorm)
    with torch.no_grad():  # still the same function, and the caller's model untouched
        a, b = model(**batch).logits, migrated(**batch).logits
    assert (a - b).abs().max() < 1e-4 and not isinstance(anatomy(model).layers[0].attention_ln, NonScalingLayerNorm)
    with pytest.raises(ConfigError):
        transformed(model, Recipe(transforms=(GammaMigration(selective=True),)), None)
