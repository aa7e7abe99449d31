"""Clipped softmax and gated attention (Quantizable Transformers) as attention functions."""

import math

import pytest
import torch
from transformers import BertConfig, BertModel, OPTConfig, OPTForCausalLM

from outlierbook.errors import ConfigError
from outlierbook.models.attention_function import users
from outlierbook.models.attention_variants import (AttentionGate, AttentionVariant, clipped_softmax, gamma_for, install,
                                                   live_rows)


def test_clipped_softmax_reduces_to_softmax_and_makes_exact_zeros_and_ones():
    x = torch.randn(4, 9) * 3
    assert torch.allclose(clipped_softmax(x, gamma=0.0, zeta=1.0), torch.softmax(x, -1))
    y = clipped_softmax(x, gamma=-0.05, zeta=1.0)
    p = torch.softmax(x, -1)
    assert torch.equal(y == 0, p < 0.05 / 1.05)  # zeros exactly where softmax < -γ/(ζ-γ)
    peaked = clipped_softmax(torch.tensor([[20.0, 0.0, 0.0]]), gamma=0.0, zeta=1.03)
    assert peaked[0, 0] == 1.0
    assert gamma_for(3.2, 128) == pytest.approx(-0.025)


def test_live_rows_detects_dead_attention():
    probs = clipped_softmax(torch.zeros(2, 3, 8, 8), gamma=gamma_for(2.0, 8))  # uniform 1/8 < 2/8 -> all clipped
    assert live_rows(probs) == 0.0
    assert live_rows(torch.softmax(torch.zeros(2, 3, 8, 8), -1)) == 1.0


@pytest.mark.parametrize("kind", ["linear", "mlp", "all_heads_linear"])
def test_gate_shapes_and_linear_init(kind):
    gate = AttentionGate(kind, hidden=16, heads=4, pi_init=0.25)
    g = gate(torch.randn(2, 5, 16))
    assert g.shape == (2, 4, 5, 1) and ((g > 0) & (g < 1)).all()
    if kind == "linear":
        assert torch.allclose(torch.sigmoid(gate.bias), torch.full((4,), 0.25))


def test_variant_validation():
    with pytest.raises(ConfigError):
        AttentionVariant(softmax="sparsemax")
    with pytest.raises(ConfigError):
        AttentionVariant(gate="conv")
    with pytest.raises(ConfigError):
        AttentionVariant(softmax="clipped", alpha=2.0)  # needs seq_len


def _bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=32, max_position_embeddings=32)).eval()


def _batch():
    ids = torch.randint(1, 40, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_vanilla_variant_equals_the_library_attention_on_bert_and_opt():
    batch = _batch()
    bert = _bert()
    ref = bert(**batch).last_hidden_state
    install(bert, AttentionVariant())
    out = bert(**batch).last_hidden_state
    m = batch["attention_mask"].bool()
    assert torch.allclose(out[m], ref[m], atol=1e-5)
    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=4,
                                   max_position_embeddings=32, word_embed_proj_dim=16)).eval()
    ref = opt(**batch).logits
    install(opt, AttentionVariant())
    assert torch.allclose(opt(**batch).logits[m], ref[m], atol=1e-5)


def test_gates_forced_to_one_equal_the_vanilla_model():
    batch = _batch()
    bert = _bert()
    ref = bert(**batch).last_hidden_state
    install(bert, AttentionVariant(gate="linear", pi_init=0.5))
    with torch.no_grad():
        for layer in bert.encoder.layer:
            g = layer.attention.self.outlierbook_gate
            g.weight.zero_()
            g.bias.fill_(100.0)  # σ(100) == 1 in float32
    m = batch["attention_mask"].bool()
    assert torch.allclose(bert(**batch).last_hidden_state[m], ref[m], atol=1e-5)
    names = [n for n, _ in bert.named_parameters() if "outlierbook_gate" in n]
    assert len(names) == 2 * 2  # weight and bias per layer: trainable, saved with the model


def test_clipped_variant_changes_the_output_and_alpha_sets_gamma():
    v = AttentionVariant(softmax="clipped", alpha=1.0, seq_len=16)
    assert v.effective_gamma == pytest.approx(-1 / 16)
    batch = _batch()
    bert = _bert()
    ref = bert(**batch).last_hidden_state
    install(bert, v)
    assert not torch.allclose(bert(**batch).last_hidden_state, ref, atol=1e-4)
    assert math.isfinite(float(bert(**batch).last_hidden_state.detach().sum()))


def test_quantized_wrapper_keeps_the_variant_and_supports_opt():
    from outlierbook.quant.calibrate import calibrate
    from outlierbook.quant.nodes import quantize_model

    batch = _batch()
    for make in (_bert, lambda: OPTForCausalLM(OPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                                         num_attention_heads=4, max_position_embeddings=32,
                                                         word_embed_proj_dim=16)).eval()):
        torch.manual_seed(0)
        model = make()
        install(model, AttentionVariant(softmax="clipped", gamma=-0.05, gate="linear"))
        out = lambda m: (m(**batch).logits if hasattr(m(**batch), "logits") else m(**batch).last_hidden_state)  # noqa: E731
        with torch.no_grad():
            ref = out(model)
            qm = quantize_model(model, weight_bits=8, act_bits=8)
            assert torch.allclose(out(qm), ref, atol=1e-5)  # FP mode: same function, variant kept
            calibrate(qm, [batch])
            qm.set_mode(True, True)
            q = out(qm)
            m = batch["attention_mask"].bool()
            assert not torch.equal(q, ref) and torch.allclose(q[m], ref[m], atol=0.3 * ref[m].abs().max())
        names = qm.node_names()
        if model.config.model_type == "opt":
            assert {"layer0.ffn.act", "layer1.layer.output", "final.ln", "layer0.attention.probs"} <= set(names)
            assert "weight:lm_head" not in qm.weight_nodes and "weight:model.decoder.layers.0.fc1" in qm.weight_nodes
        qm.remove()
        assert model.config._attn_implementation == "outlierbook"  # the variant still needs the one function
        assert users(model) == ["variant"]


def test_opt_os_placement_quantizes_the_matmul_inputs_only():
    from outlierbook.quant.nodes import OPT_PLACEMENTS, quantize_model

    opt = OPTForCausalLM(OPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=4,
                                   max_position_embeddings=32, word_embed_proj_dim=16)).eval()
    qm = quantize_model(opt, placement="os")
    names = qm.node_names()
    assert len(names) == 2 * (len(OPT_PLACEMENTS["os"]) - 1) + 1
    assert "layer0.ffn.output" not in names and "layer1.ffn.act" in names
    qm.remove()


def test_gamma_scale_zero_gives_softmax_and_one_the_configured_gamma():
    from outlierbook.models.attention_variants import set_gamma_scale

    batch = _batch()
    m = batch["attention_mask"].bool()
    vanilla = _bert()
    ref = vanilla(**batch).last_hidden_state
    bert = install(_bert(), AttentionVariant(softmax="clipped", gamma=-0.2, zeta=1.0))
    clipped = bert(**batch).last_hidden_state
    assert not torch.allclose(clipped[m], ref[m], atol=1e-4)
    set_gamma_scale(bert, 0.0)
    assert torch.allclose(bert(**batch).last_hidden_state[m], ref[m], atol=1e-5)
    set_gamma_scale(bert, 1.0)
    assert torch.allclose(bert(**batch).last_hidden_state, clipped, atol=0)
    with pytest.raises(ConfigError):
        set_gamma_scale(bert, 1.5)


def test_softmax_plus_one_is_softmax_with_a_zero_logit_zero_value_key():
    """softmax₁ over the keys = softmax over the keys plus one extra key (logit 0, value 0), that key dropped:
    probabilities and the context they weight, on large and small logits and with masked keys."""
    from outlierbook.models.attention_variants import softmax_plus_one

    torch.manual_seed(0)
    for scale in (0.1, 3.0, 60.0):  # 60: e^x overflows float32 without the max shift
        x = torch.randn(2, 3, 5, 7) * scale
        x[0, :, :, 5:] = torch.finfo(torch.float32).min  # masked keys, as the additive mask writes them
        v = torch.randn(2, 3, 7, 4)
        sink = torch.cat([x, torch.zeros(2, 3, 5, 1)], dim=-1)
        reference = torch.softmax(sink.double(), dim=-1)
        p = softmax_plus_one(x)
        assert torch.allclose(p.double(), reference[..., :7], rtol=1e-5, atol=1e-7)
        v_sink = torch.cat([v, torch.zeros(2, 3, 1, 4)], dim=-2)
        assert torch.allclose((p @ v).double(), reference @ v_sink.double(), rtol=1e-4, atol=1e-6)
        assert (p.sum(-1) <= 1 + 1e-6).all() and torch.isfinite(p).all()
        if scale < 1:
            assert (p.sum(-1) < 0.95).all()  # small logits: the sink keeps a visible share of the mass
    dead = softmax_plus_one(torch.full((1, 4), torch.finfo(torch.float32).min))
    assert torch.equal(dead, torch.zeros(1, 4))  # a fully masked row gives zeros, not NaN


def test_the_plus_one_variant_runs_in_the_model_and_lowers_attention_mass():
    batch = _batch()
    bert = _bert()
    ref = bert(**batch).last_hidden_state
    install(bert, AttentionVariant(softmax="plus_one"))
    from outlierbook.models.attention_variants import live_row_shares

    out = bert(**batch).last_hidden_state
    assert torch.isfinite(out).all() and not torch.allclose(out, ref)
    with live_row_shares(bert) as shares:
        bert(**batch)
    assert shares and all(s == 1.0 for s in shares)  # nothing is clipped: every row keeps some mass
    with pytest.raises(ConfigError, match="unknown softmax 'plus_two'"):
        AttentionVariant(softmax="plus_two")


def test_a_nearly_open_gate_starts_at_the_pretrained_function():
    """The retrofit gate (the authors' fine-tuning set-up): zero weights, bias logit(0.5), output scaled by 2;
    at step 0 the model's output is the pretrained model's, and the gate can still close a head."""
    from outlierbook.models.attention_variants import nearly_open_gate

    batch = _batch()
    bert = _bert()
    m = batch["attention_mask"].bool()
    ref = bert(**batch).last_hidden_state[m]
    variant = nearly_open_gate()
    assert variant.gate == "linear" and variant.gate_init_std == 0.0 and variant.gate_scale == 2.0
    install(bert, variant)
    out = bert(**batch).last_hidden_state[m]
    assert (out - ref).abs().max() <= 1e-3
    gates = [layer.attention.self.outlierbook_gate for layer in bert.encoder.layer]
    assert all(torch.equal(g.weight, torch.zeros_like(g.weight)) and g.weight.requires_grad for g in gates)
    g = gates[0](torch.randn(2, 3, 16))
    assert torch.equal(g, torch.ones_like(g))
    closed = AttentionGate("linear", hidden=16, heads=4, pi_init=0.5, init_std=0.0, scale=2.0)
    with torch.no_grad():
        closed.bias.fill_(-50.0)
    assert closed(torch.randn(1, 2, 16)).max() < 1e-6
    with pytest.raises(ConfigError, match="nearly open gate"):
        nearly_open_gate(1.0)
    with pytest.raises(ConfigError, match="gate_init_std must be >= 0"):
        AttentionVariant(gate="linear", gate_init_std=-1.0)
    with pytest.raises(ConfigError, match="gate_scale must be positive"):
        AttentionVariant(gate="linear", gate_scale=0.0)


def test_pretraining_keys_do_not_move_for_the_default_gate_noise():
    from outlierbook.models.pretrain import PretrainConfig

    default = PretrainConfig(variant=AttentionVariant(gate="linear"))
    assert PretrainConfig(variant=AttentionVariant(gate="linear", gate_init_std=0.01)).key() == default.key()
    assert PretrainConfig(variant=AttentionVariant(gate="linear", gate_init_std=0.0)).key() != default.key()
    assert PretrainConfig(variant=AttentionVariant(gate="linear", gate_scale=1.0)).key() == default.key()
