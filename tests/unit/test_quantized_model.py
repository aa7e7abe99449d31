"""The quantized wrapper on a tiny random BERT (fast) and on the embedded model (slow)."""

import pytest
import torch

from outlierbook.errors import ConfigError, OutlierBookError
from outlierbook.quant.calibrate import calibrate
from outlierbook.quant.fake_quant import NaNActivationError
from outlierbook.quant.nodes import KINDS, PLACEMENTS, quantize_model
from tiny_models import tiny_classifier as tiny_bert




def batch(seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[0, 5:] = 0
        mask[1, 7:] = 0
        ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_fp_mode_equals_the_plain_model_and_remove_restores_it():
    model = tiny_bert()
    b = batch()
    with torch.no_grad():
        ref = model(**b).logits
        qm = quantize_model(model)
        assert torch.allclose(qm(**b).logits, ref, atol=1e-5)
        qm.remove()
        assert torch.equal(model(**b).logits, ref)


def test_node_names_per_placement():
    qm = quantize_model(tiny_bert(), placement="os")
    names = qm.node_names()
    assert "layer1.attention.probs" in names and "layer0.ffn.gelu" in names
    assert "layer0.ffn.residual" not in names  # not an FT/OS position
    assert len(names) == 1 + 2 * (len(PLACEMENTS["os"]) - 1)
    full = quantize_model(tiny_bert(), placement="bondarenko").node_names()
    assert len(full) == 2 + 2 * 13 + 2 and {"pooler.output", "classifier.output", "embeddings.sum"} <= set(full)
    assert set(PLACEMENTS["os"]) <= set(KINDS)


def test_config_selectors_set_bits_fp32_and_estimators():
    qm = quantize_model(tiny_bert(), act_bits=8, config={
        "ffn.residual": 16, "layer1": "fp32", "layer0.attention.probs": {"estimator": "running_minmax"},
        "weight:*": 4, "weight:bert.embeddings.word_embeddings": 2})
    assert qm.node("layer0.ffn.residual").quantizer.grid.bits == 16
    assert qm.node("layer1.ffn.residual").quantizer is None  # later selector wins
    assert qm.node("layer0.attention.probs").quantizer.estimator.name == "running_minmax"
    assert qm.weight_nodes["weight:bert.embeddings.word_embeddings"].quantizer.grid.bits == 2
    assert qm.weight_nodes["weight:classifier"].quantizer.grid.bits == 4


@pytest.mark.parametrize("config,match", [
    ({"layer9.ffn.gelu": 8}, "no node, kind or layer"),
    ({"ffn.bogus": 8}, "no node, kind or layer"),
    ({"*": 20}, "2–16"),
    ({"*": {"colour": "red"}}, "unknown node setting"),
])
def test_bad_node_configs_are_clear(config, match):
    with pytest.raises(ConfigError, match=match):
        quantize_model(tiny_bert(), config=config)


def test_unknown_node_and_placement():
    qm = quantize_model(tiny_bert())
    with pytest.raises(ConfigError, match="no activation node"):
        qm.node("layer0.nothing")
    with pytest.raises(ConfigError, match="unknown placement"):
        quantize_model(tiny_bert(), placement="fastest")


def test_calibration_errors():
    qm = quantize_model(tiny_bert())
    with pytest.raises(OutlierBookError, match="empty calibration set"):
        calibrate(qm, [])
    qm.set_mode(True, True)
    with pytest.raises(OutlierBookError, match="calibrate"):
        qm(**batch())
    emb = torch.full((2, 4, 16), float("nan"))
    with pytest.raises(NaNActivationError, match="NaN"):
        calibrate(qm, [{"inputs_embeds": emb, "attention_mask": torch.ones(2, 4, dtype=torch.long)}])


def test_calibration_ignores_padding_tokens():
    padded = batch(pad=True)
    lengths = padded["attention_mask"].sum(1).tolist()
    singles = [{"input_ids": padded["input_ids"][i:i + 1, :n], "attention_mask": padded["attention_mask"][i:i + 1, :n]}
               for i, n in enumerate(lengths)]
    a = calibrate(quantize_model(tiny_bert(), act_estimator="all_minmax"), [padded])
    b = calibrate(quantize_model(tiny_bert(), act_estimator="all_minmax"), singles)
    for name in a.node_names():
        qa, qb = a.node(name).quantizer, b.node(name).quantizer
        assert torch.allclose(qa.scale, qb.scale, atol=1e-6), name
        assert torch.equal(qa.zero, qb.zero), name


def test_modes_w_only_a_only_and_quantization_changes_outputs():
    model = tiny_bert()
    b = batch()
    with torch.no_grad():
        ref = model(**b).logits
        qm = calibrate(quantize_model(model, weight_bits=4, act_bits=4), [b])
        outs = {}
        for mode in [(False, False), (True, False), (False, True), (True, True)]:
            outs[mode] = qm.set_mode(*mode)(**b).logits
    assert torch.allclose(outs[(False, False)], ref, atol=1e-5)
    for mode in [(True, False), (False, True), (True, True)]:
        assert not torch.allclose(outs[mode], ref, atol=1e-4), mode


def test_capture_records_node_outputs():
    qm = quantize_model(tiny_bert())
    node = qm.node("layer1.ffn.residual")
    node.capture = []
    with torch.no_grad():
        qm(**batch())
    assert len(node.capture) == 1 and node.capture[0].shape == (5 + 7 + 9, 16)  # real tokens only


def test_qat_gradients_reach_weights_and_ranges():
    model = tiny_bert().train()
    b = batch()
    qm = calibrate(quantize_model(model, weight_bits=4, act_bits=8), [b])
    for q in qm.activation_quantizers() + qm.weight_quantizers():
        q.make_learnable()
    qm.set_mode(True, True).train()
    out = qm(**b, labels=torch.tensor([0, 1, 0]))
    out.loss.backward()
    w = model.bert.encoder.layer[0].intermediate.dense.parametrizations.weight.original
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert qm.node("layer0.ffn.gelu").quantizer.scale_param.grad is not None


@pytest.mark.slow
def test_embedded_model_fp_mode_is_exact():
    from outlierbook.models import load

    enc, tok = load.load_encoder(), load.load_tokenizer()
    inputs = tok(["A man is playing a guitar.", "The quick brown fox jumps over the lazy dog, twice."],
                 padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = enc(**inputs).last_hidden_state
        qm = quantize_model(enc)
        out = qm(**inputs).last_hidden_state
    mask = inputs["attention_mask"].bool()
    assert (out - ref)[mask].abs().max() < 1e-4


def test_roberta_family_is_wrapped_too():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40, num_labels=2)
    model = RobertaForSequenceClassification(cfg).eval()
    b = batch()
    b["input_ids"] = b["input_ids"] + 2  # keep clear of RoBERTa's padding index
    with torch.no_grad():
        ref = model(**b).logits
        qm = quantize_model(model)
        assert torch.allclose(qm(**b).logits, ref, atol=1e-5)
        calibrate(qm, [b])
        assert not torch.allclose(qm.set_mode(True, True)(**b).logits, ref, atol=1e-6)
    assert "classifier.output" in qm.node_names() and "layer1.ffn.residual" in qm.node_names()


def test_not_a_bert_family_model_is_refused():
    with pytest.raises(ConfigError, match="is not supported; the book.s methods support these families"):
        quantize_model(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_node_cosine_covers_every_quantized_node_and_restores_the_mode():
    from outlierbook.analysis.sensitivity import node_cosine

    qm = calibrate(quantize_model(tiny_bert(), placement="os", act_bits=4), [batch()]).set_mode(True, True)
    cos = node_cosine(qm, [batch()])
    assert sorted(cos.node) == sorted(qm.node_names(quantized_only=True))
    assert cos.cos_sim.between(0, 100.0001).all() and cos.cos_sim.is_monotonic_increasing
    assert qm.mode == (True, True) and all(n.capture is None for n in qm.act_nodes.values())


def test_an_axis_the_activation_lacks_is_a_one_line_config_error():
    """Before, {"axis": 5} failed deep in torch.movedim with an IndexError."""
    qm = quantize_model(tiny_bert(), config={"ffn.gelu": {"axis": 5}})
    with pytest.raises(ConfigError, match=r"node layer0.ffn.gelu: axis 5 does not exist in a 2-d tensor.*-1: the hidden dimension"):
        calibrate(qm, [batch()])
    with pytest.raises(ConfigError, match="axis must be an int"):
        quantize_model(tiny_bert(), config={"ffn.gelu": {"axis": "hidden"}})
