"""Export of a calibrated recipe to ONNX Runtime's integer kernels: same function, the recipe's own scales,
integer weights, and one-line refusals of what integer kernels cannot run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import transformers as tf
from onnx import numpy_helper

from outlierbook import deploy
from outlierbook.errors import ConfigError, OutlierBookError
from outlierbook.methods.peg import peg_config
from outlierbook.quant.fake_quant import FakeQuantizer
from outlierbook.recipe import PegPermutation, Ranges, Recipe, quantize

SMALL = dict(vocab_size=512, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
             max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _encoder():
    torch.manual_seed(0)
    return tf.BertModel(tf.BertConfig(**SMALL), add_pooling_layer=False).eval()


def _batch(seed=0, b=4, t=16):
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(5, 512, (b, t), generator=g), "attention_mask": torch.ones(b, t, dtype=torch.long)}
    batch["attention_mask"][1, t // 2:] = 0
    return batch


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _encoder()
    qm = quantize(model, Recipe(bits="W8A8", placement="os"), [_batch(0), _batch(1)])
    path = deploy.export(qm, _batch(0), tmp_path_factory.mktemp("onnx") / "w8a8.onnx")
    return model, qm, path


def _simulated(qm, batch):
    with torch.no_grad():
        return qm(**batch).last_hidden_state.numpy()


def test_the_runtime_computes_the_simulated_function(exported, tmp_path):
    _, qm, path = exported
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in (_batch(0), _batch(2, b=3, t=24)):  # dynamic batch and sequence axes
        ref = _simulated(qm, batch)
        assert np.abs(deploy.run(plain, batch) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_integer_kernels_run_every_product(exported):
    _, qm, path = exported
    kernels = deploy.integer_kernels(path)
    assert sum(kernels[k] for k in deploy.onnx_export.INTEGER_OPS) == 2 * 8  # per layer: q, k, v, output, FFN in,
    assert kernels["MatMul"] == 0 and kernels.get("Gemm", 0) == 0  # FFN out, scores, context: none left in float


def test_an_integer_product_is_the_simulated_product():
    """One quantized Linear whose output the next node quantizes (as in the model): the runtime fuses it into
    one integer kernel, whose int32 accumulation differs from fp32 sums only by rounding, so at most an
    element on a rounding boundary of the output grid lands one step away."""
    from outlierbook.quant.granularity import Granularity
    from outlierbook.quant.quantizer import Grid

    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24)
    x = torch.randn(2, 16, 48) * 3

    def quantizer(grid, lo, hi, granularity=None):
        q = FakeQuantizer(grid, granularity=granularity)
        q.set_range(lo, hi)
        q.quantizing = True
        return q

    w = linear.weight.detach()
    act = quantizer(Grid(8), x.min(), x.max())
    weight = quantizer(Grid(8, symmetric=True), -w.abs().amax(1, keepdim=True), w.abs().amax(1, keepdim=True),
                       Granularity(axis=0))
    with torch.no_grad():
        y = linear(act(x))
    out_q = quantizer(Grid(8), y.min(), y.max())

    class Product(torch.nn.Module):
        def __init__(self, a, b, c):
            super().__init__()
            self.a, self.b, self.c, self.linear = a, b, c, linear

        def forward(self, x):
            return self.c(torch.nn.functional.linear(self.a(x), self.b(self.linear.weight), self.linear.bias))

    import tempfile

    with torch.no_grad():
        simulated = Product(act, weight, out_q)(x).numpy()
    qdq = Product(deploy.QuantDequant(act), deploy.QuantDequant(weight), deploy.QuantDequant(out_q))
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/p.onnx"
        with torch.no_grad():
            torch.onnx.export(qdq, (x,), path, dynamo=False, opset_version=17, input_names=["x"])
        onnx.save(deploy.fold_weights(onnx.load(path)), path)
        kernels = deploy.integer_kernels(path)
        out = deploy.session(path).run(None, {"x": x.numpy()})[0]
    assert sum(kernels[k] for k in deploy.onnx_export.INTEGER_OPS) == 1 and kernels.get("Gemm", 0) == 0
    steps = np.abs(out - simulated) / float(out_q.scale)
    assert steps.max() <= 1 + 1e-4 and (steps < 1e-4).mean() >= 0.99


def test_the_whole_model_agrees_within_one_step_of_the_last_node(exported):
    """Integer accumulation is exact where fp32 sums round, so a value on a rounding boundary may land one step
    away: differences are whole steps of the grid, at most one, and rare."""
    _, qm, path = exported
    batch = _batch(3)
    out, ref = deploy.run(deploy.session(path), batch), _simulated(qm, batch)
    step = float(qm.node(qm.node_names(quantized_only=True)[-1]).quantizer.scale)
    steps = np.abs(out - ref) / step
    assert np.abs(steps - np.round(steps)).max() < 1e-3  # both outputs lie on the last node's grid
    assert steps.max() <= 1 + 1e-3 and (steps < 1e-3).mean() >= 0.99


def test_the_graph_carries_the_recipes_own_scales_and_integer_weights(exported):
    _, qm, path = exported
    graph = onnx.load(str(path)).graph
    consts = deploy.onnx_export._constants(graph)
    q_pairs = {(float(consts[n.input[1]]), int(consts[n.input[2]])) for n in graph.node if n.op_type == "QuantizeLinear"}
    acts = {(float(np.float32(n.quantizer.scale.reshape(()))), int(n.quantizer.zero.reshape(())))
            for n in qm.act_nodes.values() if n.quantizer is not None and n.quantizer.quantizing}
    assert q_pairs == acts
    dq_scales = [consts[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear"
                 and consts.get(n.input[0]) is not None and consts[n.input[0]].dtype == np.uint8
                 and (consts[n.input[2]] == 128).all()]  # signed weights stored as uint8 - 128
    for node in qm.weight_nodes.values():
        want = node.quantizer.scale.reshape(-1).numpy()
        assert any(s.shape == want.shape and np.array_equal(s, want) for s in dq_scales), node.name
    stored = deploy.initializer_bytes(path)
    assert stored["UINT8"] > 3 * stored.get("FLOAT", 0)  # the weights are stored as one byte each


def test_export_leaves_the_callers_model_as_it_was(exported):
    _, qm, _ = exported
    assert all(isinstance(n.quantizer, FakeQuantizer) for n in qm.act_nodes.values() if n.quantizer is not None)
    before = _simulated(qm, _batch(4))
    deploy.export(qm, _batch(0), deploy.onnx_export.Path(pytest.importorskip("tempfile").mkdtemp()) / "again.onnx")
    assert np.array_equal(_simulated(qm, _batch(4)), before)


def test_fold_weights_is_quantize_linear():
    w = np.array([[0.5, -1.0, 0.26], [2.0, 0.0, -2.0]], np.float32)
    scale, zero = np.array([0.01, 0.02], np.float32), np.zeros(2, np.int8)
    q = deploy.onnx_export.quantize_linear(w, scale, zero, axis=0)
    assert q.dtype == np.int8 and q.tolist() == [[50, -100, 26], [100, 0, -100]]
    assert deploy.onnx_export.quantize_linear(np.array([3.0], np.float32), np.array(0.01, np.float32),
                                              np.array(0, np.int8)).tolist() == [127]  # saturates


PEG_KINDS = ("attention.ln", "ffn.ln")


@pytest.fixture(scope="module")
def peg_exported(tmp_path_factory):
    """PEG with K = 6 groups and the range-based permutation on both LayerNorm outputs, W8A8."""
    recipe = Recipe(bits="W8A8", placement="os", overrides=peg_config(6, PEG_KINDS),
                    calibrators=(PegPermutation(PEG_KINDS), Ranges()))
    qm = quantize(_encoder(), recipe, [_batch(0), _batch(1)])
    return qm, deploy.export(qm, _batch(0), tmp_path_factory.mktemp("onnx") / "peg.onnx")


def test_peg_runs_as_one_integer_product_per_group(peg_exported):
    """Every Linear that reads a per-group node becomes K integer products: layer 0's FFN input (K) and, in
    layer 1, the query, key and value (3K, reading layer 0's FFN-LN) and the FFN input (K); the other products
    stay one kernel each. Nothing runs as a float product."""
    qm, path = peg_exported
    kernels = deploy.integer_kernels(path)
    k = 6  # per layer: q, k, v; attention output; FFN in; FFN out; the two attention products
    expected = (3 + 1 + k + 1 + 2) + (3 * k + 1 + k + 1 + 2)
    assert sum(kernels[op] for op in deploy.onnx_export.INTEGER_OPS) == expected
    assert kernels["MatMul"] == 0 and kernels.get("Gemm", 0) == 0


def test_peg_integer_model_is_the_simulated_one(peg_exported):
    qm, path = peg_exported
    batch = _batch(3)
    out, ref = deploy.run(deploy.session(path), batch), _simulated(qm, batch)
    step = float(qm.node("layer1.ffn.ln").quantizer.scale.max())
    steps = np.abs(out - ref) / step
    assert steps.max() <= 1 + 1e-3 and (steps < 1e-3).mean() >= 0.99
    from outlierbook.deploy.agreement import node_agreement

    table = node_agreement(qm, path, _batch(5))
    assert table.loc["layer0.attention.ln", "max steps"] == 0 and table["max steps"].max() <= 1


def test_peg_groups_carry_the_recipes_own_scales(peg_exported):
    """Each per-group node is a per-channel pair whose channel c carries its group's (s, z), permutation
    included, and each of its groups is quantized again per tensor with exactly that (s, z)."""
    qm, path = peg_exported
    graph = onnx.load(str(path)).graph
    consts = deploy.onnx_export._constants(graph)
    per_channel = [(consts[n.input[1]], consts[n.input[2]]) for n in graph.node
                   if n.op_type == "QuantizeLinear" and consts[n.input[1]].size > 1]
    per_tensor = {(float(consts[n.input[1]]), int(consts[n.input[2]])) for n in graph.node
                  if n.op_type == "QuantizeLinear" and consts[n.input[1]].size == 1}
    grouped = [n for n in qm.act_nodes.values() if n.kind in PEG_KINDS]
    assert len(per_channel) == len(grouped) == 4
    x = torch.empty(1, 48)
    for node in grouped:
        q = node.quantizer
        assert q.granularity.permutation is not None
        want_s = q.granularity.expand(q.scale.reshape(-1), x).reshape(-1).numpy()
        want_z = q.granularity.expand(q.zero.reshape(-1), x).reshape(-1).numpy()
        assert any(np.array_equal(s, want_s) and np.array_equal(z.astype(np.float32), want_z) for s, z in per_channel)
        if node.name != "layer1.ffn.ln":  # the last one feeds no Linear (no pooler here)
            groups = {(float(np.float32(s)), int(z)) for s, z in zip(q.scale.reshape(-1), q.zero.reshape(-1))}
            assert groups <= per_tensor, node.name


def test_the_grouped_linear_is_the_grouped_quantizer_followed_by_the_linear():
    from outlierbook.deploy.grouped import GroupedLinear
    from outlierbook.methods.peg import grouped_linear_forward
    from outlierbook.quant.granularity import Granularity
    from outlierbook.quant.quantizer import Grid

    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24)
    x = torch.randn(3, 5, 48) * torch.linspace(0.1, 8, 48)[torch.randperm(48)]
    act = FakeQuantizer(Grid(8), granularity=Granularity(axis=-1, groups=6, permutation=torch.randperm(48)))
    act.observe(x.reshape(-1, 48))
    act.fix()
    act.quantizing = True
    assert act.scale.numel() == 6
    with torch.no_grad():
        want = linear(act(x))
        assert torch.allclose(GroupedLinear(linear.weight, linear.bias, None, act)(act(x)), want, atol=1e-5)
        assert torch.allclose(grouped_linear_forward(linear, x, act), want, atol=1e-5)


@pytest.mark.parametrize("recipe, message", [
    (Recipe(bits="W6A6", placement="os"), "6-bit; integer kernels take 8-bit"),
    (Recipe(bits="W8A8", placement="os", overrides={"weight:*": {"axis": 1, "groups": 4}}), "weight.*per-group"),
])
def test_what_integer_kernels_cannot_run_is_refused_in_one_line(recipe, message, tmp_path):
    qm = quantize(_encoder(), recipe, [_batch(0)])
    with pytest.raises(ConfigError, match=message):
        deploy.export(qm, _batch(0), tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_node_without_a_range_is_refused(tmp_path):
    qm = quantize(_encoder(), Recipe(bits="W8A8", placement="os"), [_batch(0)])
    q = qm.node("layer1.ffn.gelu").quantizer
    q.scale = q.zero = None  # as a node that was switched on but never saw data
    assert q.quantizing and not q.calibrated
    with pytest.raises(OutlierBookError, match="calibrate"):
        deploy.export(qm, _batch(0), tmp_path / "x.onnx")


def test_a_batch_without_an_attention_mask_is_refused(exported, tmp_path):
    _, qm, _ = exported
    with pytest.raises(ConfigError, match="attention_mask"):
        deploy.export(qm, {"input_ids": _batch(0)["input_ids"]}, tmp_path / "x.onnx")


def test_node_agreement_names_every_node_in_forward_order_and_finds_no_difference_here(exported):
    from outlierbook.deploy.agreement import node_agreement, output_agreement

    _, qm, path = exported
    table = node_agreement(qm, path, _batch(5))
    assert list(table.index) == qm.node_names(quantized_only=True)
    assert (table["differing"] == 0).all() and (table["max steps"] == 0).all()
    assert table.loc["layer0.attention.q", "elements"] == (16 + 8 + 16 + 16) * 48  # real tokens only
    assert output_agreement(qm, path, _batch(5))["max"] == 0.0


def test_node_agreement_sees_a_wrong_scale(exported, tmp_path):
    from outlierbook.deploy.agreement import node_agreement

    model, qm, _ = exported
    q = qm.node("layer1.ffn.gelu").quantizer
    original = q.scale
    q.scale = original * 1.5
    try:
        path = deploy.export(qm, _batch(0), tmp_path / "shifted.onnx")
    finally:
        q.scale = original
    table = node_agreement(qm, path, _batch(5))
    assert table.loc["layer1.ffn.gelu", "differing"] > 0.1 and table.loc["layer1.attention.ln", "differing"] == 0


def test_every_deployable_variant_runs_like_the_model(exported, tmp_path):
    from outlierbook.deploy.runtime import at_threads, baselines, recipe_variant

    model, qm, _ = exported
    batches = [_batch(0), _batch(1)]
    variants = baselines(model, batches, tmp_path)
    variants["book"] = recipe_variant(qm, batches[0], tmp_path, "book")
    assert set(variants) == {"PyTorch FP32", "PyTorch dynamic INT8", "ORT FP32", "ORT dynamic INT8",
                             "ORT static INT8 (its MinMax)", "book"}
    with torch.no_grad():
        fp = model(**_batch(6)).last_hidden_state
    for name, v in at_threads(variants, 1).items():
        out = v.model(**_batch(6)).last_hidden_state
        assert out.shape == fp.shape, name
        assert torch.nn.functional.cosine_similarity(out.flatten(), fp.flatten(), dim=0) > 0.9, name
    assert variants["ORT FP32"].integer_products == 0 and variants["book"].integer_products == 16
    assert variants["ORT static INT8 (its MinMax)"].integer_products > 0
    quantized_weights = sum(qm.parts.weights[name[len("weight:"):]].weight.numel() for name, node in
                            qm.weight_nodes.items() if node.quantizer is not None and node.quantizer.quantizing)
    fp, book = (deploy.initializer_bytes(variants[k].path) for k in ("ORT FP32", "book"))
    scales = sum(node.quantizer.scale.numel() for node in qm.weight_nodes.values())
    assert book["FLOAT"] <= fp["FLOAT"] - 4 * quantized_weights + 4 * scales  # FP32 left: biases, LNs, scales
    assert quantized_weights <= book["UINT8"] <= 1.05 * quantized_weights  # one byte per weight (+ zero points)


def test_peak_memory_counts_what_a_variant_loads_in_a_fresh_process(exported, tmp_path):
    """The INT8 benchmark's memory column: a variant with 50 MiB more weights shows about 50 MiB more."""
    from transformers import BertConfig, BertModel

    from outlierbook.benchmarks.int8 import peak_memory_mb
    from outlierbook.deploy.runtime import Variant

    def variant(vocab):
        cfg = BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)
        return Variant(f"bert {vocab}", BertModel(cfg).eval(), 0)

    small, large = (peak_memory_mb(variant(v), tmp_path, 1, 2, 16) for v in (2000, 202000))
    assert 0 <= small < 30 and large - small > 40  # 200 000 × 64 float32 = 48.8 MiB more
    onnx = peak_memory_mb(Variant("w8a8", None, 0, path=exported[2]), tmp_path, 1, 2, 16)  # an ONNX Runtime file
    assert 0 < onnx < 200


def test_peak_memory_rebuilds_a_dynamic_int8_model_from_tensors_only(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    from outlierbook.benchmarks.int8 import peak_memory_mb
    from outlierbook.deploy.runtime import Variant

    cfg = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    q = torch.ao.quantization.quantize_dynamic(BertModel(cfg).eval(), {torch.nn.Linear}, dtype=torch.qint8)
    assert 0 <= peak_memory_mb(Variant("dynamic", q, 0), tmp_path, 1, 2, 16) < 60


def test_sentence_pairs_keep_their_segment_ids(tmp_path):
    """BERT reads which sentence a token belongs to: the export takes token_type_ids when the tokenizer gives
    them, the runtime model passes them on, and without them (one sentence) the output is another."""
    from outlierbook.deploy.runtime import RuntimeModel

    model = _encoder()
    batch = _batch(0)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    batch["token_type_ids"][:, 6:] = 1
    path = deploy.export(model, batch, tmp_path / "pairs.onnx")
    sess = deploy.session(path)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    runtime = RuntimeModel(sess, model.config, "last_hidden_state")
    with torch.no_grad():
        want = model(**batch).last_hidden_state
        one_sentence = model(**{k: v for k, v in batch.items() if k != "token_type_ids"}).last_hidden_state
    assert (one_sentence - want).abs().max() > 0.1
    assert torch.allclose(runtime(**batch).last_hidden_state, want, atol=1e-4)
    assert torch.allclose(runtime(batch["input_ids"], batch["attention_mask"]).last_hidden_state, one_sentence,
                          atol=1e-4)


def test_output_agreement_of_a_classifier_counts_the_same_predictions(tmp_path):
    from outlierbook.deploy.agreement import output_agreement

    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(tf.BertConfig(**SMALL, num_labels=3)).eval()
    path = deploy.export(model, _batch(0), tmp_path / "fp.onnx")
    found = output_agreement(model, path, _batch(1))
    assert found["same_prediction"] == 1.0 and found["max"] < 1e-4 * max(found["scale"], 1.0)
    encoder_path = deploy.export(_encoder(), _batch(0), tmp_path / "encoder.onnx")
    assert "same_prediction" not in output_agreement(_encoder(), encoder_path, _batch(1))  # hidden states, no classes
