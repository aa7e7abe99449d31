"""Record FP activations at named nodes (real tokens only)."""

from __future__ import annotations

import torch

from ..quant.nodes import quantize_model


@torch.no_grad()
def record(qm, nodes, batches) -> dict[str, list[torch.Tensor]]:
    """Run ``batches`` through ``qm`` in FP mode and return each node's outputs on real tokens.

    The model's quantization mode and the nodes' capture state are restored afterwards.
    """
    mode = qm.mode
    qm.set_mode(weights=False, acts=False)
    for n in nodes:
        n.capture = []
    try:
        for batch in batches:
            qm(**batch)
        return {n.name: n.capture for n in nodes}
    finally:
        for n in nodes:
            n.capture = None
        qm.set_mode(*mode)


@torch.no_grad()
def capture_activations(model, batches, names=None, placement: str = "bondarenko") -> dict[str, torch.Tensor]:
    """``{node name: [tokens, features]}`` of the FP model on ``batches`` (padding excluded).

    Wraps the model with unquantized nodes (so the function is unchanged), records, unwraps.
    Attention matrices are returned flattened.
    """
    qm = quantize_model(model, placement=placement, weight_bits=None, act_bits=None)
    try:
        wanted = qm.node_names() if names is None else list(names)
        recorded = record(qm, [qm.node(n) for n in wanted], batches)
        return {name: torch.cat(chunks) for name, chunks in recorded.items()}
    finally:
        qm.remove()
