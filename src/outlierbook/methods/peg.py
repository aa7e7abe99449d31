r"""Per-embedding-group (PEG) activation quantization (Bondarenko et al. 2021, §4, Eq. 5; notes §2.5).

The hidden dimension $d$ is split into $K$ groups of $d/K$ dimensions that share a scale and zero
point. With the **range-based permutation**, a calibration pass of the FP model records each
dimension's range $r_j = \max_t x_{t,j} - \min_t x_{t,j}$ and the groups are formed from
$\operatorname{argsort}(r)$, so the outlier dimensions end up together; the permutation is computed
once, before range estimation, separately for every quantizer (as in the authors' code).

**Why this runs on per-tensor hardware.** For a Linear layer fed by a PEG-quantized input,
$W\hat x = \sum_{k=1}^K W_{:,G_k}\,\hat x_{G_k} = \sum_k s_k\, W_{:,G_k}\, (x^{\mathbb Z}_{G_k} - z_k)$:
split the input into its $K$ groups and the weight's columns accordingly, run $K$ smaller Linear layers
whose inputs are each quantized **per tensor** with scale $s_k$, and add their outputs. The paper's
re-scaling argument is exactly this factorisation; :func:`grouped_linear_forward` implements it and a
test checks it equals the grouped quantizer followed by the original Linear.
"""

from __future__ import annotations

import torch

from ..analysis.capture import record
from ..quant.fake_quant import FakeQuantizer
from ..quant.granularity import Granularity
from ..quant.nodes import QuantizedModel

FFN_KINDS = ("attention.ln", "ffn.output", "ffn.residual")  # FFN input, output and residual sum


def peg_config(groups: int | None, kinds=FFN_KINDS) -> dict:
    """Node settings for PEG on ``kinds`` (``groups=None``: one range per embedding dimension)."""
    return {kind: {"axis": -1, "groups": groups} for kind in kinds}


@torch.no_grad()
def set_range_permutations(qm: QuantizedModel, batches, kinds=FFN_KINDS) -> dict[str, torch.Tensor]:
    """Record per-dimension FP ranges of the ``kinds`` nodes and install the sorted permutation."""
    nodes = [n for n in qm.act_nodes.values() if n.kind in kinds and n.quantizer is not None
             and n.quantizer.granularity.groups is not None]
    recorded = record(qm, nodes, batches)
    perms = {}
    for n in nodes:
        x = torch.cat(recorded[n.name])
        ranges = x.amax(0) - x.amin(0)
        perm = torch.argsort(ranges, stable=True)
        n.quantizer.granularity = Granularity(axis=-1, groups=n.quantizer.granularity.groups, permutation=perm)
        perms[n.name] = perm
    return perms


def group_indices(quantizer: FakeQuantizer, channels: int) -> list[torch.Tensor]:
    """Channel indices of each group of a per-group quantizer (after its permutation)."""
    g = quantizer.granularity
    order = g.permutation if g.permutation is not None else torch.arange(channels)
    return list(order.reshape(g.groups, -1))


def grouped_linear_forward(linear: torch.nn.Linear, x: torch.Tensor, quantizer: FakeQuantizer) -> torch.Tensor:
    """$\\sum_k \\mathrm{Linear}_k(Q_k(x_{G_k}))$: K per-tensor quantized partial products, summed. The same
    module the integer export runs (:class:`outlierbook.deploy.grouped.GroupedLinear`), here with an FP32 weight."""
    from ..deploy.grouped import GroupedLinear

    return GroupedLinear(linear.weight, linear.bias, None, quantizer)(x)
