"""Property tests of the uniform affine quantizer and its granularities (hypothesis)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from outlierbook.errors import ConfigError
from outlierbook.quant.fake_quant import FakeQuantizer
from outlierbook.quant.granularity import Granularity
from outlierbook.quant.quantizer import Grid, check_bits, fake_quantize, qparams

bits_st = st.integers(2, 16)
sym_st = st.booleans()
rule_st = st.sampled_from(["qualcomm", "os"])
range_st = st.tuples(st.floats(-1e3, 0.0), st.floats(0.0, 1e3)).filter(lambda r: r[1] - r[0] > 1e-3)


def tensor_in(lo, hi, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, generator=g) * 1.2 - 0.1 * (hi - lo)


def quantize(x, lo, hi, grid):
    s, z = qparams(torch.tensor(lo), torch.tensor(hi), grid)
    return fake_quantize(x, s, z, grid.qmin, grid.qmax), s, z


@settings(max_examples=200, deadline=None)
@given(bits_st, sym_st, rule_st, range_st)
def test_zero_is_exactly_representable(bits, sym, rule, r):
    grid = Grid(bits, sym, rule)
    out, _, _ = quantize(torch.zeros(3), *r, grid)
    assert torch.equal(out, torch.zeros(3))


@settings(max_examples=200, deadline=None)
@given(bits_st, sym_st, rule_st, range_st, st.integers(0, 10_000))
def test_quantizing_twice_equals_once(bits, sym, rule, r, seed):
    grid = Grid(bits, sym, rule)
    x = tensor_in(*r, seed=seed)
    once, s, z = quantize(x, *r, grid)
    twice = fake_quantize(once, s, z, grid.qmin, grid.qmax)
    assert torch.allclose(once, twice, rtol=0, atol=1e-5 * float(s))


@settings(max_examples=200, deadline=None)
@given(bits_st, sym_st, rule_st, range_st, st.integers(0, 10_000))
def test_outputs_lie_on_the_grid(bits, sym, rule, r, seed):
    grid = Grid(bits, sym, rule)
    x = tensor_in(*r, seed=seed)
    out, s, z = quantize(x, *r, grid)
    ints = out.double() / s.double() + z.double()
    tol = 1e-6 * max(abs(grid.qmin), grid.qmax) + 1e-4  # float32 arithmetic of (x_int - z) * s
    assert torch.allclose(ints, ints.round(), atol=tol)
    assert ints.min() >= grid.qmin - tol and ints.max() <= grid.qmax + tol


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 10), sym_st, rule_st, range_st)
def test_more_bits_never_give_larger_error_on_the_same_range(bits, sym, rule, r):
    lo, hi = r
    x = torch.linspace(lo, hi, 16384)
    err = [((quantize(x, lo, hi, Grid(b, sym, rule))[0] - x) ** 2).mean().item() for b in (bits, bits + 1)]
    assert err[1] <= err[0]


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 12), st.integers(0, 1000))
def test_max_rounding_error_is_half_a_step_inside_the_range(bits, seed):
    x = tensor_in(-3.0, 5.0, n=256, seed=seed).clamp(-3.0, 5.0)
    out, s, _ = quantize(x, -3.0, 5.0, Grid(bits, False))
    assert (out - x).abs().max() <= s / 2 + 1e-5


def test_symmetric_scale_rules_differ_as_documented():
    s_q, _ = qparams(torch.tensor(-1.0), torch.tensor(1.0), Grid(8, True, "qualcomm"))
    s_o, _ = qparams(torch.tensor(-1.0), torch.tensor(1.0), Grid(8, True, "os"))
    assert math.isclose(float(s_q), 1 / 127, rel_tol=1e-6) and math.isclose(float(s_o), 1 / 127.5, rel_tol=1e-6)
    out = fake_quantize(torch.tensor([1.0]), s_o, torch.tensor(0.0), -128, 127)
    assert float(out) < 1.0  # OS: the positive extreme is clipped half a step


@pytest.mark.parametrize("bits", [1, 17, 0, 8.0, "8", True])
def test_bits_outside_2_to_16_are_rejected(bits):
    with pytest.raises(ConfigError, match="2–16"):
        check_bits(bits)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 1000), st.sampled_from([2, 4, 8]))
def test_per_group_k1_is_per_tensor_and_kd_is_per_channel(seed, bits):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, 12, generator=g) * torch.linspace(0.1, 20, 12)
    grid = Grid(bits, False)

    def run(gran):
        fq = FakeQuantizer(grid, "all_minmax", gran)
        fq.observe(x)
        fq.fix()
        fq.quantizing = True
        return fq(x)

    assert torch.equal(run(Granularity(axis=-1, groups=1)), run(Granularity()))
    assert torch.equal(run(Granularity(axis=-1, groups=12)), run(Granularity(axis=-1)))
    perm = torch.randperm(12, generator=g)
    assert torch.equal(run(Granularity(axis=-1, groups=12, permutation=perm)), run(Granularity(axis=-1)))


def test_permutation_round_trip_and_grouping():
    x = torch.arange(24.0).reshape(2, 12)
    perm = torch.tensor([11, 0, 10, 1, 9, 2, 8, 3, 7, 4, 6, 5])
    gran = Granularity(axis=-1, groups=3, permutation=perm)
    rows = gran.rows(x)
    assert rows.shape == (3, 8)
    assert set(rows[0].tolist()) == {11.0, 0.0, 10.0, 1.0, 23.0, 12.0, 22.0, 13.0}
    per_channel = gran.expand(torch.tensor([0.0, 1.0, 2.0]), x).flatten()
    assert per_channel[perm].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ConfigError):
        Granularity(axis=-1, groups=5).rows(x)


def test_ste_gradient_passes_inside_and_stops_outside():
    x = torch.tensor([-5.0, 0.3, 0.7, 5.0], requires_grad=True)
    s, z = qparams(torch.tensor(-1.0), torch.tensor(1.0), Grid(4, False))
    fake_quantize(x, s, z, 0, 15).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_group_counts_divide_any_width():
    from outlierbook.quant.granularity import group_counts

    assert group_counts(384) == (3, 6) and group_counts(768) == (3, 6)  # the book's K for its models
    assert group_counts(64) == (4, 8) and group_counts(1024) == (4, 8)
    for width in range(1, 200):
        assert all(width % k == 0 for k in group_counts(width))


def test_the_inference_path_of_fake_quantize_is_bit_identical_to_the_autograd_path():
    """Without gradients fake_quantize runs fused, in place; it must give exactly the STE path's values."""
    from outlierbook.quant.quantizer import fake_quantize

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        x = torch.randn(32, 50, generator=g) * float(10 ** (torch.rand(1, generator=g) * 6 - 3))
        if trial % 2:
            s = torch.rand(32, 1, generator=g) + 1e-4
            z = torch.randint(0, 255, (32, 1), generator=g).float()
        else:
            s = torch.rand((), generator=g) + 1e-4
            z = torch.randint(0, 255, (), generator=g).float()
        qmin, qmax = (0, 255) if trial % 3 else (-128, 127)
        z = z * 0 if trial % 3 == 0 else z
        with torch.no_grad():
            fast = fake_quantize(x, s, z, qmin, qmax)
        slow = fake_quantize(x.clone().requires_grad_(True), s, z, qmin, qmax).detach()
        assert torch.equal(fast, slow)
        assert not torch.equal(fast, x) or x.abs().max() == 0  # it did quantize
