"""Outlier Suppression chapter pieces: PACT ranges, EasyQuant, W-E-A bits, method recipes."""

import copy

import pytest
import torch

from outlierbook.analysis.sensitivity import cosine
from outlierbook.errors import ConfigError
from outlierbook.experiments import outlier_suppression as osx
from outlierbook.methods.easyquant import _quantize_weight, _weight, easyquant, linear_consumers
from outlierbook.quant.calibrate import calibrate
from outlierbook.quant.fake_quant import FakeQuantizer
from outlierbook.quant.quantizer import Grid, fake_quantize


def test_pact_bounds_get_gradient_only_from_clipped_values():
    q = FakeQuantizer(Grid(4, False))
    q.observe(torch.tensor([-1.0, 1.0]))
    q.fix()
    q.make_pact()
    q.quantizing = True
    x = torch.tensor([-3.0, -0.5, 0.2, 0.7, 2.0, 5.0], requires_grad=True)
    y = q(x)
    y.sum().backward()
    assert q.hi_param.grad.item() == pytest.approx(2.0)  # two values above u
    assert q.lo_param.grad.item() == pytest.approx(1.0)  # one value below l
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 0, 0]))  # STE inside the range
    s, z = q.current_qparams(x)
    inside = x.detach().clamp(q.lo_param.item(), q.hi_param.item())
    assert torch.allclose(y.detach(), fake_quantize(inside, s, z, 0, 15))
    assert q.range_parameters() == [q.lo_param, q.hi_param]


def test_pact_refuses_uncalibrated_or_per_channel():
    from outlierbook.errors import OutlierBookError
    from outlierbook.quant.granularity import Granularity

    with pytest.raises(OutlierBookError):
        FakeQuantizer(Grid(4, False)).make_pact()
    q = FakeQuantizer(Grid(4, False), granularity=Granularity(axis=-1))
    q.observe(torch.randn(5, 3))
    q.fix()
    with pytest.raises(ConfigError):
        q.make_pact()


def test_easyquant_never_lowers_the_layer_output_cosine(tiny_bert):
    model, batch = tiny_bert
    qm = osx.recipe_for("minmax", "4-4-4").wrap(model)
    calibrate(qm, [batch])
    pairs = linear_consumers(qm)
    assert pairs["embeddings.ln"] == [f"weight:bert.encoder.layer.0.attention.self.{n}" for n in ("query", "key", "value")]
    assert pairs["layer1.ffn.ln"] == ["weight:bert.pooler.dense"]
    from outlierbook.analysis.capture import record

    x = torch.cat(record(qm, [qm.node("layer0.ffn.gelu")], [batch])["layer0.ffn.gelu"])
    w_name = pairs["layer0.ffn.gelu"][0]
    aq, wq = qm.node("layer0.ffn.gelu").quantizer, qm.weight_nodes[w_name].quantizer
    w = _weight(qm, w_name)

    def layer_cos():
        xq = fake_quantize(x, aq.scale, aq.zero, aq.grid.qmin, aq.grid.qmax)
        return cosine(xq @ _quantize_weight(w, wq.scale, wq.zero, wq.grid, 1.0).T, x @ w.T)

    before = layer_cos()
    chosen = easyquant(qm, [batch], rounds=2, steps=6)
    assert set(chosen) == set(pairs)
    alpha, betas = chosen["layer0.ffn.gelu"]
    assert 0.5 <= alpha <= 1.0 and all(0.5 <= b <= 1.0 for b in betas.values())
    assert layer_cos() >= before - 1e-6
    qm.remove()


def test_bits_and_candidates_and_unknown_method(tiny_bert):
    assert osx.Bits.parse("6-4-8").wea == "6-4-8" and str(osx.Bits.parse("6-4-8")) == "W6A8E4"
    assert osx.Bits.parse("W6A8E4") == osx.Bits(6, 4, 8) and osx.Bits.parse("W8A8") == osx.Bits(8, 8, 8)
    with pytest.raises(ConfigError):
        osx.Bits.parse("6-6")
    full = osx.twc_candidates(6)
    thin = osx.twc_candidates(6, 8)
    assert len(full) == 30 and len(thin) <= 8 and thin[0] == 1.0 and set(thin) <= set(full)
    model, batch = tiny_bert
    with pytest.raises(ConfigError, match="unknown method"):
        osx.recipe_for("magic", "6-6-6")


def test_embedding_tables_get_their_own_bits_and_migrated_copy_is_exact(tiny_bert):
    model, batch = tiny_bert
    before = copy.deepcopy(model.state_dict())
    migrated = osx.migrated_copy(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert osx.migration_max_difference(model, migrated, [batch]) <= 1e-4
    qm = osx.recipe_for("minmax", "6-2-8").wrap(model)
    assert qm.weight_nodes["weight:bert.embeddings.word_embeddings"].quantizer.grid.bits == 2
    assert qm.weight_nodes["weight:bert.encoder.layer.0.intermediate.dense"].quantizer.grid.bits == 6
    qm.remove()


def test_best_percentile_picks_the_best_and_sums_the_time():
    rows = [{"method": "percentile:99.9", "value": 80.0, "seconds": 1.0},
            {"method": "percentile:99.99", "value": 85.0, "seconds": 2.0}, {"method": "minmax", "value": 90.0, "seconds": 1}]
    best = osx.best_percentile(rows)
    assert best["chosen"] == "percentile:99.99" and best["value"] == 85.0 and best["seconds"] == 3.0


def test_qat_with_pact_trains_the_clipping_bounds(tiny_bert, char_tokenizer):
    from outlierbook.data.glue import TaskData
    from outlierbook.methods.qat import qat

    model, _ = tiny_bert
    tok = char_tokenizer
    texts = ["good film", "bad film", "great", "awful plot"] * 4
    qm = osx.recipe_for("minmax", "4-4-4").wrap(model)
    calibrate(qm, [tok(texts[:8])])
    hi0 = {q.name: float((q.grid.qmax - q.zero) * q.scale) for q in qm.activation_quantizers()}
    qat(qm, TaskData("sst2", "train", texts, None, [1, 0, 1, 0] * 4), tok, steps=3, batch_size=4, lr=1e-2,
        pact=True, progress=False)
    acts = qm.activation_quantizers()
    assert all(q.pact for q in acts) and not any(q.pact for q in qm.weight_quantizers())
    assert any(abs(float(q.hi_param) - hi0[q.name]) > 1e-4 for q in acts)  # some bounds moved
    qm.remove()


def test_a_stopped_full_run_resumes_its_methods_from_the_memo(tmp_path, monkeypatch):
    """Chapter 5's results are kept per experiment on disk: a new run (fresh in-memory cache) reuses
    them, and a different FP checkpoint or option is a different experiment."""
    import types

    from outlierbook.memo import Memo

    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    calls = []

    def fake_score(setup, method, bits, batches, **kw):
        calls.append((setup.checkpoint, method, kw.get("twc_max_candidates")))
        return {"task": setup.task, "method": method, "bits": bits.wea, "value": float(len(calls)), "seconds": 0.1}

    monkeypatch.setattr(osx, "score_method", fake_score)
    setup = types.SimpleNamespace(task="sst2", checkpoint="steps2105-seed0-abc", eval_data=[0] * 10)
    memo = Memo("05_outlier_suppression", "full", context={"model": "m", "n_calib": 256})
    first = osx.run_methods(setup, ["minmax", "twc"], "6-6-6", [], cache={}, memo=memo, twc_max_candidates=None)
    resumed = osx.run_methods(setup, ["minmax", "twc"], "6-6-6", [], cache={},
                              memo=Memo("05_outlier_suppression", "full", context={"model": "m", "n_calib": 256}),
                              twc_max_candidates=None)
    assert resumed == first and len(calls) == 2
    other = types.SimpleNamespace(task="sst2", checkpoint="steps999-seed0-def", eval_data=[0] * 10)
    osx.run_methods(other, ["minmax"], "6-6-6", [], cache={}, memo=memo, twc_max_candidates=None)
    osx.run_methods(setup, ["minmax"], "6-6-6", [], cache={}, memo=memo, twc_max_candidates=8)
    assert len(calls) == 4
