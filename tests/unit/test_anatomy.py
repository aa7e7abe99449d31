"""The model anatomy and the one attention function, on every supported family (random small configs).

For each family: the wrapper's nodes, 16-bit ≈ FP, ``remove()`` restores the FP model exactly, Gamma
Migration is exact (post-LN), NAQ with every element at full precision is the FP model, and the three
users of attention (quantization nodes, attention variants, NAQ) work together on one model.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

from outlierbook.errors import ConfigError
from outlierbook.methods.gamma_migration import migrate_gamma
from outlierbook.models.anatomy import FAMILIES, anatomy
from outlierbook.models.attention_function import users
from outlierbook.models.attention_variants import AttentionVariant, install
from outlierbook.naq.wrapper import NAQModel
from outlierbook.quant.calibrate import calibrate
from outlierbook.quant.nodes import quantize_model

SMALL = dict(vocab_size=64, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
             max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)


def _make(family: str):
    torch.manual_seed(0)
    if family == "bert":
        return tf.BertForSequenceClassification(tf.BertConfig(**SMALL))
    if family == "roberta":
        return tf.RobertaForSequenceClassification(tf.RobertaConfig(**SMALL, pad_token_id=1))
    if family == "xlm-roberta":
        return tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(**SMALL, pad_token_id=1))
    if family == "electra":  # embedding width 12 < hidden 24: an embedding projection
        return tf.ElectraForSequenceClassification(tf.ElectraConfig(**SMALL, embedding_size=12))
    if family == "mpnet":
        return tf.MPNetForSequenceClassification(tf.MPNetConfig(**SMALL, relative_attention_num_buckets=32))
    if family == "distilbert":
        return tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=64, dim=24, n_layers=2, n_heads=2, hidden_dim=40, max_position_embeddings=40, dropout=0.0,
            attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=2))
    if family == "opt":
        return tf.OPTForCausalLM(tf.OPTConfig(vocab_size=64, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                              ffn_dim=40, max_position_embeddings=40, word_embed_proj_dim=24,
                                              dropout=0.0, attention_dropout=0.0, pad_token_id=1))
    raise AssertionError(family)


def _model(family: str):
    model = _make(family).eval()
    with torch.no_grad():  # non-trivial LayerNorms, so Gamma Migration has something to migrate
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0.0, 0.2)
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _out(model, batch):
    return model(**batch).logits


def _hidden(model, batch):
    """The last layer's output (the logits of a small random model can snap to the same 8-bit grid points)."""
    return model(**batch, output_hidden_states=True).hidden_states[-1]


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def test_every_family_has_its_roles(family):
    model = _model(family)
    anat = anatomy(model)
    assert anat.family == family and len(anat.layers) == 2 and anat.heads == 2
    for layer in anat.layers:
        for lin in (layer.query, layer.key, layer.value, layer.out, layer.ffn_in, layer.ffn_out):
            assert isinstance(lin, torch.nn.Linear)
        assert isinstance(layer.attention_ln, torch.nn.LayerNorm) and isinstance(layer.ffn_ln, torch.nn.LayerNorm)
    assert anat.post_ln == (family != "opt")
    assert (anat.embeddings_projection is not None) == (family == "electra")
    assert anat.attention_style == ("mpnet" if family == "mpnet" else "interface")


@torch.no_grad()
def test_wrap_sixteen_bits_is_fp_and_remove_restores_it(family):
    model, batch = _model(family), _batch()
    ref = _out(model, batch)
    previous = model.config._attn_implementation
    qm = quantize_model(model, weight_bits=16, act_bits=16)
    kinds = {n.split(".", 1)[1] for n in qm.node_names() if n.startswith("layer1.")}
    expected = {"attention.q", "attention.k", "attention.v", "attention.scores", "attention.probs",
                "attention.context", "attention.output", "attention.ln", "ffn.output"}
    assert expected <= kinds
    assert ({"ffn.gelu", "ffn.residual", "attention.residual"} <= kinds) if family != "opt" else ("layer.output" in kinds)
    calibrate(qm, [batch])
    qm.set_mode(True, True)
    probs_calls = []
    node = qm.node("layer0.attention.probs")
    handle = node.register_forward_hook(lambda *a: probs_calls.append(1))
    out = _out(qm, batch)
    handle.remove()
    assert probs_calls == [1]  # the scores/probs nodes really run, once per forward
    m = batch["attention_mask"].bool() if family == "opt" else slice(None)
    rel = (out[m] - ref[m]).abs().max() / ref[m].abs().max()
    assert rel <= 1e-3, f"{family}: 16-bit differs from FP by {rel:.2e}"
    qm.remove()
    assert users(model) == [] and model.config._attn_implementation == previous
    assert torch.equal(_out(model, batch), ref)
    assert not any(hasattr(mod, "parametrizations") for mod in model.modules())


@torch.no_grad()
def test_gamma_migration_is_exact_on_every_post_ln_family(family):
    model, batch = _model(family), _batch()
    if family == "opt":
        with pytest.raises(ConfigError, match="post-LN"):
            migrate_gamma(model)
        return
    ref = _out(model, batch)
    migrated = copy.deepcopy(model)
    labels = migrate_gamma(migrated)
    assert len(labels) == 1 + 2 + 1  # embedding LN, two MHA-LNs, the first FFN-LN
    scale = ref.abs().max()
    assert (_out(migrated, batch) - ref).abs().max() <= 1e-4 * max(1.0, float(scale))
    # the migrated model wraps and, at 16 bits, still computes the same function
    qm = quantize_model(migrated, weight_bits=16, act_bits=16)
    calibrate(qm, [batch])
    qm.set_mode(True, True)
    assert ((_out(qm, batch) - ref).abs().max() / scale) <= 2e-3


@torch.no_grad()
def test_naq_at_full_precision_is_the_fp_model(family):
    model, batch = _model(family), _batch()
    ref = _out(model, batch)
    inf = float("inf")
    naq = NAQModel(model, t_qp=-inf, t_as=-inf, t_sum=inf)
    out = _out(naq, batch)
    assert naq.stats.share("ffn") == 0 and naq.stats.share("attention") == 0
    assert naq.stats.counts["ffn"][1] > 0 and naq.stats.counts["attention"][1] > 0
    m = batch["attention_mask"].bool() if family == "opt" else slice(None)
    assert torch.allclose(out[m], ref[m], atol=1e-5)
    naq.remove()
    assert torch.equal(_out(model, batch), ref) and users(model) == []


@torch.no_grad()
def test_quantization_variant_and_naq_share_one_attention_function(family):
    model, batch = _model(family), _batch()
    install(model, AttentionVariant(softmax="clipped", gamma=-0.05))
    with_variant = _out(model, batch)
    qm = quantize_model(model, weight_bits=8, act_bits=8)
    calibrate(qm, [batch])
    qm.set_mode(True, True)
    quantized = _hidden(qm, batch)
    inf = float("inf")
    naq = NAQModel(model, t_qp=inf, t_as=inf, t_sum=-inf)  # everything low precision, on the quantized model
    calls = []
    handle = qm.node("layer1.attention.probs").register_forward_hook(lambda mod, a, out: calls.append(out))
    both = _hidden(qm, batch)
    handle.remove()
    assert len(calls) == 1 and (calls[0] == 0).any()  # the probs node ran once and saw clipped-softmax zeros
    assert naq.stats.share("attention") == 1 and not torch.equal(both, quantized)
    assert set(users(model)) == {"variant", "quantization", "naq"}
    naq.remove()
    assert torch.equal(_hidden(qm, batch), quantized)  # NAQ removed: quantized model as before
    qm.remove()
    assert users(model) == ["variant"]
    assert torch.equal(_out(model, batch), with_variant)  # the clipped softmax survives remove()


def test_an_unsupported_family_is_refused_before_any_change():
    config = tf.DebertaV2Config(vocab_size=64, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=40, max_position_embeddings=40)
    model = tf.DebertaV2ForSequenceClassification(config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for call in (lambda: quantize_model(model), lambda: NAQModel(model), lambda: migrate_gamma(model),
                 lambda: install(model, AttentionVariant(softmax="clipped", gamma=-0.05))):
        with pytest.raises(ConfigError, match=r"DebertaV2ForSequenceClassification .*deberta-v2.* not supported.*bert"):
            call()
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(before) == set(model.state_dict())


@torch.no_grad()
def test_smoothquant_is_exact_with_the_shortcut_rescaled_and_not_without(family):
    from outlierbook.recipe import SmoothQuant

    model, batch = _model(family), _batch()
    if family == "opt":
        with pytest.raises(ConfigError, match="post-LN"):
            SmoothQuant()(model, [batch])
        return
    ref = _hidden(model, batch)
    exact = SmoothQuant()(model, [batch])
    m = batch["attention_mask"].bool()
    assert (_hidden(exact, batch) - ref)[m].abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))
    if family != "electra":  # ELECTRA's embedding LN has no shortcut (the projection reads it alone)
        broken = SmoothQuant(rescale_shortcut=False)(model, [batch])
        assert (_hidden(broken, batch) - ref)[m].abs().max() > 1e-2
    assert users(model) == [] and not any(m_._forward_pre_hooks for m_ in model.modules())  # the input is untouched


@torch.no_grad()
def test_every_recipe_of_the_composing_chapter_runs_on_every_post_ln_family(family):
    """Gamma Migration, PEG with its permutation, Token-Wise Clipping and the clipped softmax compose on each
    encoder family (MPNet included) through the model anatomy alone: each calibrated model gives finite outputs,
    and the wrapped model's attention nodes run."""
    from outlierbook.experiments.composing import recipes
    from outlierbook.recipe import quantize

    if family == "opt":
        return  # Gamma Migration and PEG's LN groups are post-LN methods; OPT is refused by them (tested above)
    model, batch = _model(family), _batch()
    for name, recipe in recipes("W8A8", 24, twc_max_candidates=2).items():
        qm = quantize(model, recipe, [batch])
        out = _hidden(qm, batch)
        assert torch.isfinite(out).all(), f"{family}: {name} gives non-finite outputs"
        assert qm.node("layer1.attention.probs") is not None


@torch.no_grad()
@pytest.mark.parametrize("groups", [3, 6])
def test_peg_groups_with_the_range_permutation_are_fp_at_sixteen_bits(family, groups):
    """PEG's per-group nodes (with and without the range-based permutation) at 16 bits compute the FP
    model, on every post-LN family: a permutation applied in the wrong order or undone at the wrong
    place would move the output far more than 16-bit rounding does."""
    from outlierbook.experiments.understanding import recipe
    from outlierbook.methods.peg import FFN_KINDS, peg_config
    from outlierbook.recipe import quantize

    if family == "opt":
        pytest.skip("PEG's LN groups are a post-LN method; OPT is refused by it (tested above)")
    model, batch = _model(family), _batch()
    ref = _out(model, batch)
    for kinds in (None, FFN_KINDS):
        qm = quantize(model, recipe(16, 16, config=peg_config(groups, FFN_KINDS), peg_kinds=kinds), [batch])
        if kinds:
            assert any(n.quantizer.granularity.permutation is not None for n in qm.act_nodes.values()
                       if n.quantizer is not None and n.kind in FFN_KINDS)
        rel = (_out(qm, batch) - ref).abs().max() / ref.abs().max()
        assert rel <= 1e-3, f"{family}, K={groups}, permuted {bool(kinds)}: 16-bit differs from FP by {rel:.2e}"
