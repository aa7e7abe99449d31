"""Record FP activations at named nodes (real tokens only)."""

from __future__ import annotations

import torch

from ..quant.nodes import quantize_model


@torch.no_grad()
def capture_activations(model, batches, names=None, placement: str = "bondarenko") -> dict[str, torch.Tensor]:
    """``{node name: [tokens, features]}`` of the FP model on ``batches`` (padding excluded).

    Wraps the model with unquantized nodes (so the function is unchanged), records, unwraps.
    Attention matrices are returned flattened.
    """
    qm = quantize_model(model, placement=placement, weight_bits=None, act_bits=None)
    try:
        wanted = qm.node_names() if names is None else list(names)
        nodes = [qm.node(n) for n in wanted]
        for n in nodes:
            n.capture = []
        for batch in batches:
            qm(**batch)
        return {n.name: torch.cat(n.capture) for n in nodes}
    finally:
        qm.remove()
