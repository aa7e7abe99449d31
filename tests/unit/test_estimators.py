import pytest
import torch

from outlierbook.errors import ConfigError, OutlierBookError
from outlierbook.quant.estimators import (MSE, AllMinMax, AvgMinMax, CurrentMinMax, GoldenSectionMSE, Percentile,
                                           RunningMinMax, make_estimator, row_quantile)
from outlierbook.quant.fake_quant import FakeQuantizer, NaNActivationError
from outlierbook.quant.quantizer import Grid, fake_quantize, qparams

A = torch.tensor([[0.0, 1.0, -2.0, 4.0]])
B = torch.tensor([[1.0, -1.0, 2.0, 0.0]])


def test_minmax_family():
    cur, allmm, run, avg = CurrentMinMax(), AllMinMax(), RunningMinMax(0.9), AvgMinMax()
    for e in (cur, allmm, run, avg):
        e.update(A)
        e.update(B)
    assert cur.compute() == (torch.tensor([-1.0]), torch.tensor([2.0]))
    assert allmm.compute() == (torch.tensor([-2.0]), torch.tensor([4.0]))
    lo, hi = run.compute()
    assert lo.item() == pytest.approx(0.9 * -2 + 0.1 * -1) and hi.item() == pytest.approx(0.9 * 4 + 0.1 * 2)
    lo, hi = avg.compute()
    assert lo.item() == pytest.approx(-1.5) and hi.item() == pytest.approx(3.0)


def test_percentile_clips_the_tail():
    x = torch.cat([torch.linspace(-1, 1, 9999), torch.tensor([100.0])])[None]
    e = Percentile(99.9)
    e.update(x)
    lo, hi = e.compute()
    assert hi.item() < 1.01 and lo.item() > -1.01
    assert row_quantile(torch.arange(1.0, 101.0)[None], 0.5).item() == 50.0


@pytest.mark.parametrize("cls", [MSE, GoldenSectionMSE])
def test_mse_estimators_clip_an_outlier_and_beat_minmax(cls):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g), torch.tensor([40.0])])[None]
    grid = Grid(4, False)
    e = cls(grid)
    e.update(x)
    lo, hi = e.compute()
    assert hi.item() < 40.0

    def err(l, h):
        s, z = qparams(l, h, grid)
        return ((fake_quantize(x, s, z, grid.qmin, grid.qmax) - x) ** 2).mean().item()

    assert err(lo, hi) < err(x.min(), x.max())


def test_golden_section_agrees_with_a_fine_grid():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5000, generator=g) * torch.tensor([[1.0], [3.0], [0.5]])
    grid = Grid(4, True)
    grid_est, golden = MSE(grid, candidates=400), GoldenSectionMSE(grid)
    for e in (grid_est, golden):
        e.update(x)
    (glo, ghi), (olo, ohi) = grid_est.compute(), golden.compute()
    assert torch.allclose(ghi, ohi, rtol=0.05)


def test_estimators_need_data_and_valid_names():
    with pytest.raises(OutlierBookError, match="saw no data"):
        CurrentMinMax().compute()
    with pytest.raises(ConfigError, match="unknown range estimator"):
        make_estimator("magic")
    assert isinstance(make_estimator(("percentile", {"p": 99.0})), Percentile)


def test_nan_activations_are_refused():
    fq = FakeQuantizer(Grid(8), name="layer0.ffn.gelu")
    with pytest.raises(NaNActivationError, match="layer0.ffn.gelu"):
        fq.observe(torch.tensor([1.0, float("nan")]))


def test_quantizer_toggles_and_uncalibrated_error():
    fq = FakeQuantizer(Grid(4), name="n")
    x = torch.linspace(-1, 1, 11)
    assert torch.equal(fq(x), x)  # quantizing off: identity
    fq.quantizing = True
    with pytest.raises(OutlierBookError, match="calibrate"):
        fq(x)
    fq.observe(x)
    fq.fix()
    assert not torch.equal(fq(x), x)


def test_learnable_ranges_get_gradients():
    fq = FakeQuantizer(Grid(4), name="n")
    x = torch.linspace(-1, 3, 101)
    fq.observe(x)
    fq.fix()
    fq.make_learnable()
    fq.quantizing = True
    ((fq(x) - x) ** 2).sum().backward()
    assert fq.scale_param.grad is not None and fq.scale_param.grad.abs().item() > 0
    assert fq.zero_param.grad is not None


def test_token_wise_clip_cuts_the_planted_outlier_tokens_only():
    from outlierbook.quant.estimators import TokenWiseClip

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1000, 16, generator=g)
    tokens[:20, 3] = 80.0 + torch.arange(20.0)  # 2 % of the tokens carry huge values
    tokens[20:30, 5] = -50.0  # 1 % carry a large negative value
    twc = TokenWiseClip(p=0.98)  # clip the top 2 % of tokens: exactly the planted ones
    twc.update(tokens)
    lo, hi = twc.compute()
    assert hi.item() < 10 and lo.item() > -10  # the outlier tokens are clipped away...
    assert hi.item() == tokens[20:].amax(1).max().item()  # ...at the largest ordinary token maximum
    assert lo.item() in tokens.amin(1).tolist()
    full = TokenWiseClip(p=1.0)
    full.update(tokens)
    assert full.compute()[1].item() == tokens.max().item() and full.compute()[0].item() == tokens.min().item()
    fq = FakeQuantizer(Grid(6), TokenWiseClip(0.97), name="n")
    fq.observe(tokens.reshape(10, 100, 16))  # [B, T, d] is flattened to tokens
    fq.fix()
    with pytest.raises(ConfigError):
        TokenWiseClip(p=0.0)


@pytest.mark.parametrize("spec,message", [
    (("percentile", {"q": 99.9}), r"range estimator 'percentile' takes no argument 'q'; it takes: p"),
    (("percentile", 99.9), "is not understood"),
    (("mse", {}, 1), "is not understood"),
])
def test_malformed_estimator_specs_are_config_errors(spec, message):
    """Before, these raised a raw TypeError or ValueError."""
    with pytest.raises(ConfigError, match=message):
        make_estimator(spec)


def _mse(x, lo, hi, grid):
    s, z = qparams(torch.tensor([float(lo)]), torch.tensor([float(hi)]), grid)
    return float(((fake_quantize(x, s, z, grid.qmin, grid.qmax) - x) ** 2).mean())


def test_the_authors_per_batch_omse_finds_a_range_no_worse_than_a_brute_force_grid():
    """OS-9's baseline: nested bounded searches of width and shift on every batch, averaged over batches."""
    from outlierbook.quant.estimators import PerBatchOMSE, make_estimator

    torch.manual_seed(0)
    x = torch.randn(1, 3000)
    x[0, :5] = torch.tensor([25.0, -18.0, 30.0, 12.0, -9.0])
    grid = Grid(6, False)
    est = make_estimator("omse_per_batch").bind(grid)
    est.update(x)
    lo, hi = (float(v) for v in est.compute())
    found = _mse(x, lo, hi, grid)
    assert found < _mse(x, float(x.min()), float(x.max()), grid)  # better than the min-max range
    best = min(_mse(x, a, b, grid) for a in torch.linspace(float(x.min()), -0.5, 60)
               for b in torch.linspace(0.5, float(x.max()), 60))
    assert found <= best * 1.02  # as good as a 60 × 60 grid of ranges, within 2 %
    # symmetric grids search one half-width; ranges are averaged over batches with equal weight
    sym = PerBatchOMSE(Grid(6, True))
    sym.update(x)
    sym.update(x * 2)
    lo2, hi2 = (float(v) for v in sym.compute())
    one = PerBatchOMSE(Grid(6, True))
    one.update(x)
    assert lo2 == pytest.approx(-hi2) and hi2 == pytest.approx(1.5 * float(one.compute()[1]), rel=0.05)
    with pytest.raises(ConfigError):
        PerBatchOMSE().update(x)  # unbound: names the fix


@pytest.mark.parametrize("name", ["running_minmax", "avg_minmax", "all_minmax", ("percentile", {"p": 99.0})])
def test_a_quantizer_saved_half_way_through_calibration_continues_after_loading(name):
    """Estimator statistics are module state: observe A, save, load into a fresh quantizer, observe B,
    fix — the same range as observing A and B without the stop."""
    from safetensors.torch import load, save

    grid = Grid(8, False)
    whole, first = FakeQuantizer(grid, name), FakeQuantizer(grid, name)
    for q in (whole, first):
        q.observe(A)
    blob = save({k: v.contiguous() for k, v in first.state_dict().items()})
    assert {"estimator.lo", "estimator.hi", "estimator.n_updates"} <= set(first.state_dict())
    fresh = FakeQuantizer(grid, name)
    assert fresh.estimator.lo is None and int(fresh.estimator.n_updates) == 0
    fresh.load_state_dict(load(blob))
    assert int(fresh.estimator.n_updates) == 1
    for q in (whole, fresh):
        q.observe(B)
        q.fix()
    assert torch.equal(fresh.scale, whole.scale) and torch.equal(fresh.zero, whole.zero)


def test_an_estimator_whose_samples_are_not_saved_says_so():
    q = FakeQuantizer(Grid(4, False), "mse")
    q.observe(A)
    fresh = FakeQuantizer(Grid(4, False), "mse")
    fresh.load_state_dict(q.state_dict())
    with pytest.raises(OutlierBookError, match="observe the calibration batches again"):
        fresh.fix()


def test_lsq_plus_weight_initialisation_is_mean_plus_minus_three_std_per_row():
    from outlierbook.quant.estimators import MeanStd

    torch.manual_seed(0)
    w = torch.randn(4, 1000) * 0.05
    w[0, 0] = 1.0  # one large weight: min-max would set the scale by it
    e = make_estimator(("mean_std", {"k": 3.0}))
    assert isinstance(e, MeanStd)
    e.update(w)
    lo, hi = e.compute()
    assert torch.allclose(hi, w.mean(1) + 3 * w.std(1, unbiased=False)) and torch.allclose(lo, w.mean(1) - 3 * w.std(1, unbiased=False))
    grid = Grid(4, symmetric=True)
    scale, _ = qparams(lo, hi, grid)
    assert scale[0].item() < 0.5 * 1.0 / grid.qmax  # far finer than max|w| / qmax
    with pytest.raises(ConfigError, match="k > 0"):
        MeanStd(k=0)


def test_every_qat_variant_starts_its_weights_as_lsq_plus_does(monkeypatch):
    from outlierbook.experiments import outlier_suppression as osx

    seen = []
    monkeypatch.setattr(osx, "quantize", lambda model, recipe, batches: seen.append(recipe) or (_ for _ in ()).throw(
        RuntimeError("stop after the recipe")))

    class Setup:
        task, model, calibration = "sst2", None, [None] * 64

    for variant in osx.QAT_VARIANTS:
        with pytest.raises(RuntimeError, match="stop after the recipe"):
            osx.qat_variant(Setup(), variant, "4-4-4", [], steps=1)
    assert [r.weight_estimator for r in seen] == [osx.QAT_WEIGHT_ESTIMATOR] * len(osx.QAT_VARIANTS)
    assert osx.QAT_WEIGHT_ESTIMATOR == ("mean_std", {"k": 3.0})


def test_the_weight_initialisation_table_counts_zeros_over_every_encoder_weight(tiny_bert):
    from outlierbook.experiments import outlier_suppression as osx
    from outlierbook.models.anatomy import anatomy

    model, _ = tiny_bert
    layer0 = anatomy(model).layers[0]
    with torch.no_grad():
        layer0.ffn_in.weight[0, 0] = 50.0  # one huge weight: min-max rounds the rest of its row to zero
    table = osx.weight_init_table(model, bits=(4,)).set_index("estimator")
    assert list(table.columns) == ["bits", "rounded to zero (%)", "rounding MSE (×1e-6)"]
    n = sum(getattr(l, r).weight.numel() for l in anatomy(model).layers
            for r in ("query", "key", "value", "out", "ffn_in", "ffn_out"))
    row = layer0.ffn_in.weight.shape[1]
    assert table.loc["current_minmax", "rounded to zero (%)"] >= 100 * (row - 1) / n
    zeros = 0
    for l in anatomy(model).layers:  # the LSQ+ start, computed directly: symmetric 4-bit, mean ± 3σ per row
        for r in ("query", "key", "value", "out", "ffn_in", "ffn_out"):
            w = getattr(l, r).weight.detach()
            absmax = torch.maximum((w.mean(1) - 3 * w.std(1, unbiased=False)).abs(), w.mean(1) + 3 * w.std(1, unbiased=False))
            zeros += int((torch.round(w / (absmax / 7)[:, None]) == 0).sum())
    assert table.loc["mean_std", "rounded to zero (%)"] == pytest.approx(100 * zeros / n)
