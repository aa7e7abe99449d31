import pytest
import torch

from outlierbook.errors import ConfigError
from outlierbook.methods import token_wise_clipping as twc
from outlierbook.quant.calibrate import calibrate
from outlierbook.quant.estimators import TokenWiseClip
from outlierbook.quant.nodes import quantize_model
from tiny_models import tiny_classifier as tiny


def test_grid_follows_the_authors_step_rule():
    g6 = twc.grid(6, batch_size=32, seq_len=128)
    assert len(g6) == 30 and g6[0] == 1.0 and g6[-1] == pytest.approx(0.71)
    assert len(twc.grid(8)) == 10 and len(twc.grid(4)) == 90
    squad = twc.grid(6, batch_size=32, seq_len=384)  # step 0.0033 -> 90 candidates
    assert len(squad) == 90 and squad[1] == pytest.approx(0.9967)
    with pytest.raises(ConfigError):
        twc.grid(5)




def batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        ids = torch.randint(1, 50, (4, 10), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def test_coarse_search_keeps_the_argmin_and_exempts_probs():
    qm = quantize_model(tiny(), placement="os", weight_bits=6, act_bits=4)
    calibrate(qm, batches())
    qm.set_mode(True, True)
    result = twc.coarse_search(qm, batches(), candidates=[1.0, 0.95, 0.9, 0.8])
    assert result["best_p"] == min(result["losses"], key=result["losses"].get)
    assert qm.mode == (True, True)
    assert isinstance(qm.node("layer0.ffn.gelu").quantizer.estimator, TokenWiseClip)
    assert not isinstance(qm.node("layer0.attention.probs").quantizer.estimator, TokenWiseClip)
    qm.set_mode(False, True)
    fp = None
    with torch.no_grad():
        qm.set_mode(False, False)
        fp = [twc._output(qm(**b)) for b in batches()]
        qm.set_mode(False, True)
        assert twc.output_loss(qm, batches(), fp) == pytest.approx(result["losses"][result["best_p"]], rel=1e-5)


def test_fine_stage_learns_scales_and_lowers_the_output_loss():
    qm = quantize_model(tiny(), placement="os", weight_bits=6, act_bits=4)
    calibrate(qm, batches())
    for q in qm.activation_quantizers():  # start from ranges four times too wide: learning must shrink them
        lo, hi = -q.zero * q.scale, (q.grid.qmax - q.zero) * q.scale
        q.set_range(4 * lo, 4 * hi)
    qm.set_mode(False, False)
    with torch.no_grad():
        fp = [twc._output(qm(**b)) for b in batches()]
    qm.set_mode(False, True)
    before = twc.output_loss(qm, batches(), fp)
    scale_before = qm.node("layer0.ffn.gelu").quantizer.scale.clone()
    curve = twc.learn_scales(qm, batches(), lr=3e-3, epochs=5)
    assert len(curve) == 10
    q = qm.node("layer0.ffn.gelu").quantizer
    assert q.learnable and not torch.equal(q.scale_param.detach(), scale_before)
    qm.set_mode(False, True)
    assert twc.output_loss(qm, batches(), fp) < before


def _recalibrating_losses(qm, candidates, exempt_kinds=("attention.probs",)):
    """The textbook search: recalibrate every node with TokenWiseClip(p) on FP activations per candidate."""
    qm.set_mode(False, False)
    with torch.no_grad():
        fp = [twc._output(qm(**b)) for b in batches()]
    nodes = [n for n in qm.act_nodes.values() if n.quantizer is not None and n.kind not in exempt_kinds]
    losses, ranges = {}, {}
    for p in candidates:
        for n in nodes:
            n.quantizer.estimator = TokenWiseClip(p)
        for n in nodes:
            n.quantizer.reset()
            n.quantizer.observing = True
        with torch.no_grad():
            for b in batches():
                qm(**b)
        for n in nodes:
            n.quantizer.observing = False
            n.quantizer.fix()
        ranges[p] = {n.name: (n.quantizer.scale.clone(), n.quantizer.zero.clone()) for n in nodes}
        qm.set_mode(False, True)
        losses[p] = twc.output_loss(qm, batches(), fp)
        qm.set_mode(False, False)
    return losses, ranges


def test_one_pass_coarse_search_equals_recalibrating_per_candidate():
    candidates = [1.0, 0.97, 0.9, 0.75]
    reference = quantize_model(tiny(), placement="os", weight_bits=6, act_bits=4)
    calibrate(reference, batches())
    ref_losses, ref_ranges = _recalibrating_losses(reference, candidates)
    qm = quantize_model(tiny(), placement="os", weight_bits=6, act_bits=4)
    calibrate(qm, batches())
    result = twc.coarse_search(qm, batches(), candidates=candidates)
    assert len(set(ref_losses.values())) > 1  # the candidates really differ
    for p in candidates:
        assert result["losses"][p] == pytest.approx(ref_losses[p], rel=1e-6, abs=1e-12)
    for name, (scale, zero) in ref_ranges[result["best_p"]].items():
        q = qm.node(name).quantizer
        assert torch.allclose(q.scale, scale) and torch.equal(q.zero, zero), name


def test_token_extremes_feed_the_same_clip_as_direct_calibration():
    from outlierbook.quant.estimators import TokenExtremes

    g = torch.Generator().manual_seed(0)
    data = [torch.randn(50, 8, generator=g) * (1 + 10 * (torch.rand(50, 1, generator=g) > 0.95)) for _ in range(3)]
    rec, direct = TokenExtremes(), TokenWiseClip(0.9)
    for x in data:
        rec.update(x)
        direct.update(x)
    via = rec.token_wise_clip(0.9)
    assert torch.equal(via.compute()[0], direct.compute()[0]) and torch.equal(via.compute()[1], direct.compute()[1])
    lo, hi = rec.compute()
    assert float(lo) == float(torch.cat(data).min()) and float(hi) == float(torch.cat(data).max())
