"""Record FP activations at named nodes (real tokens only)."""

from __future__ import annotations

import torch


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

    Records through unquantized nodes (``W32A32``: the function is unchanged) on a copy of the model made
    by the one front door, so ``model`` itself is never wrapped. Attention matrices are returned flattened.
    """
    from ..recipe import Recipe, quantize

    qm = quantize(model, Recipe(bits="W32A32", placement=placement))
    wanted = qm.node_names() if names is None else list(names)
    recorded = record(qm, [qm.node(n) for n in wanted], batches)
    return {name: torch.cat(chunks) for name, chunks in recorded.items()}
