"""PEG: grouping, permutation round trip, K=1 equals per-tensor, grouped-Linear equivalence."""

import torch

from outlierbook.methods import peg
from outlierbook.quant.calibrate import calibrate
from outlierbook.quant.fake_quant import FakeQuantizer
from outlierbook.quant.granularity import Granularity
from outlierbook.quant.nodes import quantize_model
from outlierbook.quant.quantizer import Grid
from tiny_models import tiny_classifier as tiny


def activations(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 12, generator=g)
    x[..., 4] *= 30  # an outlier dimension
    x[..., 9] *= 12
    return x


def test_grouped_linear_rewrite_equals_grouped_quantizer_then_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 5)
    x = activations()
    perm = torch.argsort(x.reshape(-1, 12).amax(0) - x.reshape(-1, 12).amin(0))
    for gran in (Granularity(axis=-1, groups=3), Granularity(axis=-1, groups=3, permutation=perm)):
        q = FakeQuantizer(Grid(6), "all_minmax", gran)
        q.observe(x)
        q.fix()
        q.quantizing = True
        reference = linear(q(x))
        rewritten = peg.grouped_linear_forward(linear, x, q)
        assert torch.allclose(rewritten, reference, atol=1e-5)


def test_group_indices_partition_the_channels():
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    q = FakeQuantizer(Grid(8), granularity=Granularity(axis=-1, groups=4, permutation=perm))
    groups = peg.group_indices(q, 12)
    assert len(groups) == 4 and sorted(torch.cat(groups).tolist()) == list(range(12))




def batch():
    ids = torch.randint(1, 50, (4, 9), generator=torch.Generator().manual_seed(2))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_range_permutation_sorts_dimensions_and_k1_equals_per_tensor():
    qm = quantize_model(tiny(), config=peg.peg_config(4))
    perms = peg.set_range_permutations(qm, [batch()])
    assert set(perms) == {f"layer{i}.{k}" for i in range(2) for k in peg.FFN_KINDS}
    node = qm.node("layer1.ffn.residual")
    node.capture = []
    with torch.no_grad():
        qm(**batch())
    x = torch.cat(node.capture)
    node.capture = None
    ranges = (x.amax(0) - x.amin(0))[perms["layer1.ffn.residual"]]
    assert torch.all(ranges[1:] >= ranges[:-1])
    a = calibrate(quantize_model(tiny(), config=peg.peg_config(1)), [batch()]).set_mode(True, True)
    b = calibrate(quantize_model(tiny()), [batch()]).set_mode(True, True)
    with torch.no_grad():
        assert torch.equal(a(**batch()).logits, b(**batch()).logits)
