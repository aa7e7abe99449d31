"""NAQ library: gradient formulas, low-precision path, the wrappers at their threshold extremes,
masked-position exclusion, MAC counts by hand, and the energy formula."""

import math

import pytest
import torch

from outlierbook.naq.gradients import activation_derivative, softmax_diagonal, softmax_jacobian
from outlierbook.naq.lowprec import low_precision_linear, quantize_fixed, quantize_rows
from outlierbook.naq.macs import encoder_macs, measured_macs, relative_energy
from outlierbook.naq.wrapper import NAQModel

INF = float("inf")


def test_gradients_match_closed_forms():
    x = torch.linspace(-6, 6, 101)
    assert torch.allclose(activation_derivative("relu", x), (x > 0).float())
    s = torch.sigmoid(x)
    assert torch.allclose(activation_derivative("sigmoid", x), s * (1 - s), atol=1e-6)
    assert torch.allclose(activation_derivative("tanh", x), 1 - torch.tanh(x) ** 2, atol=1e-6)
    assert activation_derivative("gelu", torch.tensor([-6.0])).abs() < 1e-6  # flat far on the negative side
    z = torch.randn(7)
    j = softmax_jacobian(z)
    p = torch.softmax(z, -1)
    assert torch.allclose(j.diagonal(), softmax_diagonal(z.exp(), z.exp().sum()), atol=1e-6)
    assert torch.allclose(j.diagonal(), p * (1 - p), atol=1e-6)
    assert torch.allclose(j.sum(-1), torch.zeros(7), atol=1e-6)  # rows of a softmax Jacobian sum to 0
    with pytest.raises(Exception, match="unknown activation"):
        activation_derivative("swish2", x)


def test_low_precision_grid():
    x = torch.tensor([-9.0, -4.0, -0.2, 0.3, 4.0, 9.0])
    q = quantize_fixed(x, bits=4, max_value=4.0)
    step = 4 / 7
    assert torch.allclose(q / step, torch.round(q / step))  # on the grid
    assert q.max() == pytest.approx(4.0) and q.min() == pytest.approx(-8 * step)  # clipped to [-8s, 7s]
    w = torch.tensor([[1.0, -0.5], [0.1, 0.05]])
    wq = quantize_rows(w, bits=4)
    assert wq[0, 0] == pytest.approx(1.0) and wq[1, 0] == pytest.approx(0.1)  # per-row absmax is exact


def _model():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=24, max_position_embeddings=32)).eval()


def _batch():
    ids = torch.randint(1, 40, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_all_full_precision_equals_the_fp_model():
    model, batch = _model(), _batch()
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        naq = NAQModel(model, t_qp=-INF, t_as=-INF, t_sum=INF)
        out = naq(**batch).last_hidden_state
        assert torch.allclose(out, ref, atol=1e-6)
        assert naq.stats.share("ffn") == 0 and naq.stats.share("attention") == 0
        naq.set_thresholds(t_qp=INF, t_as=INF, t_sum=-INF)
        naq.stats.reset()
        low = naq(**batch).last_hidden_state
        assert naq.stats.share("ffn") == 1 and naq.stats.share("attention") == 1
        assert not torch.allclose(low, ref, atol=1e-3)  # the low path really differs
    naq.remove()
    assert model.config._attn_implementation != "outlierbook"
    assert torch.allclose(model(**batch).last_hidden_state, ref, atol=1e-6)  # restored


def test_all_low_precision_equals_plain_4bit_computation():
    from outlierbook.models.attention_function import attention

    model = _model()
    naq = NAQModel(model, t_qp=INF, t_as=INF, t_sum=-INF)
    layer = model.encoder.layer[0]
    h = 3 * torch.randn(2, 5, 16)
    with torch.no_grad():
        dense = layer.intermediate.dense
        expected = torch.nn.functional.gelu(quantize_fixed(h) @ quantize_rows(dense.weight).T + quantize_fixed(dense.bias))
        assert torch.allclose(layer.intermediate(h), expected, atol=1e-6)
        sa = layer.attention.self
        sa.outlierbook_input = h
        heads = lambda x: x.view(2, 5, 2, 8).transpose(1, 2)  # noqa: E731
        q, k, v = heads(sa.query(h)), heads(sa.key(h)), heads(sa.value(h))
        out, probs = attention(sa, q, k, v, None)
        hq = quantize_fixed(h)
        ql, kl = heads(sa.query(hq)), heads(sa.key(hq))
        assert torch.allclose(probs, torch.softmax(ql @ kl.transpose(2, 3) / math.sqrt(8), -1), atol=1e-6)
        assert torch.allclose(out, (probs @ v).transpose(1, 2), atol=1e-6)  # values stay FP
    naq.remove()


def test_counts_exclude_padding_and_masked_positions():
    model, batch = _model(), _batch()
    naq = NAQModel(model, t_qp=INF, t_as=INF, t_sum=-INF)
    with torch.no_grad():
        naq(**batch)
    lengths = batch["attention_mask"].sum(1)
    real_tokens = int(lengths.sum())
    assert naq.stats.counts["ffn"][1] == 2 * real_tokens * 24  # layers × real tokens × FFN width
    real_pairs = int((lengths ** 2).sum())
    assert naq.stats.counts["attention"][1] == 2 * 2 * real_pairs  # layers × heads × real (query, key) pairs
    naq.remove()


def test_mac_counts_by_hand():
    model = _model()
    t = 5
    batch = {"input_ids": torch.randint(1, 40, (1, t)), "attention_mask": torch.ones(1, t, dtype=torch.long)}
    d, dff, L = 16, 24, 2
    by_hand = L * (4 * t * d * d + 2 * t * d * dff + 2 * t * t * d)
    analytic = encoder_macs(model.config, t)
    measured = measured_macs(model, batch)
    assert analytic["total"] == by_hand == measured["total"]
    assert analytic["pre_nonlinearity"] == L * (t * d * dff + t * t * d) == measured["pre_nonlinearity"]


def test_energy_formula_extremes():
    assert relative_energy(30, 70, share_low=0.0) == pytest.approx(1 + 30 * 0.065 / (100 * 1.5))
    assert relative_energy(30, 70, share_low=1.0) == pytest.approx((30 * 0.065 + 70 * 1.5) / 150)
    fp16 = 1 - relative_energy(50, 50, 0.5, "fp16")
    int8 = 1 - relative_energy(50, 50, 0.5, "int8")
    assert fp16 > int8 > 0 and math.isfinite(int8)


def test_naq_executing_restores_the_model_even_when_the_block_fails():
    from outlierbook.naq.wrapper import naq_executing

    model, batch = _model(), _batch()
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        with naq_executing(model, t_qp=INF, t_as=INF, t_sum=-INF) as naq:
            low = naq(**batch).last_hidden_state
            assert naq.stats.share("ffn") == 1
        assert not torch.allclose(low, ref, atol=1e-3)
        with pytest.raises(RuntimeError, match="inside"):
            with naq_executing(model, t_qp=INF, t_as=INF, t_sum=-INF):
                raise RuntimeError("a failure inside the block")
        assert model.config._attn_implementation != "outlierbook"
        assert torch.equal(model(**batch).last_hidden_state, ref)


def test_a_resumed_naq_sweep_recomputes_no_point(monkeypatch, tmp_path):
    """Each threshold point is kept by the memo: a second sweep reads every point back (infinite thresholds
    included) and computes nothing."""
    import types

    from outlierbook.experiments import naq as nx
    from outlierbook.memo import Memo

    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    calls = []

    def point(setup, t_qp, t_as, t_sum, **kw):
        calls.append((t_qp, t_as, t_sum))
        return {"task": setup.task, "t_qp": t_qp, "t_as": t_as, "t_sum": t_sum, "value": 80.0 + t_qp if t_qp > -1e9
                else 80.0, "avoided_share": 0.3}

    monkeypatch.setattr(nx, "naq_point", point)
    setup = types.SimpleNamespace(task="stsb", checkpoint="encoder", eval_data=[0] * 5)
    first = nx.sweep(setup, [-1.0, 0.0], [-1.0], [1600.0], combined_pairs=[(-1.0, 1600.0)], memo=Memo("07_naq", "full"))
    n = len(calls)
    assert n == 5  # two T_QP alone, one (T_AS, T_sum), two combined
    again = nx.sweep(setup, [-1.0, 0.0], [-1.0], [1600.0], combined_pairs=[(-1.0, 1600.0)], memo=Memo("07_naq", "full"))
    assert len(calls) == n and again.equals(first)
    nx.sweep(setup, [-1.0, 0.0], [-1.0], [1600.0], combined_pairs=[(-1.0, 1600.0)], memo=Memo("07_naq", "full"), bits=3)
    assert len(calls) == 2 * n  # another bit-width is another experiment
