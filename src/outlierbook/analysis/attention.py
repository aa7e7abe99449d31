r"""Attention "no-op" analysis (Bondarenko et al. 2023, Figure 2 and Appendix A).

A head that wants to leave the residual unchanged puts its probability on tokens whose value
vectors are small (delimiters), so that $\sum_k p_{qk} v_k \approx 0$. For each layer and head we
record the attention probabilities $p$, the value norms $\lVert v_k\rVert$ and the head's output. As the
paper does, an outlier hidden dimension $j$ is mapped to the head whose consecutive slice of
$d_{\text{head}}$ features contains it, $h = \lfloor j / d_{\text{head}} \rfloor$ (BERT-base: dim #180 → head #3,
1-based). ``head_contributions`` offers a second view: which head's output, through the output
projection $W_O$, writes most into dimension $j$.
"""

from __future__ import annotations

import torch

from ..models.anatomy import anatomy
from ..models.attention_function import claim, release, slots


@torch.no_grad()
def attention_records(model, batch) -> list[dict]:
    """Per layer: probs ``[B,H,T,T]``, values ``[B,H,T,d_h]`` and per-head outputs ``[B,T,H,d_h]``.

    The probabilities come from a *watcher* in the one attention function's slots; values and
    head outputs from hooks on the anatomy's value and output projections.
    """
    anat = anatomy(model)
    records = [{} for _ in anat.layers]
    watched = [[] for _ in anat.layers]
    hooks = []
    for i, layer in enumerate(anat.layers):
        slots(layer.attention).watchers.append(watched[i])
        hooks.append(layer.value.register_forward_hook(
            lambda m, a, out, i=i, h=layer.heads: records[i].__setitem__(
                "values", out.view(*out.shape[:2], h, -1).transpose(1, 2))))
        hooks.append(layer.out.register_forward_pre_hook(lambda m, a, i=i: records[i].__setitem__("context", a[0])))
    claim(model, "analysis", anat)
    try:
        model(**batch)
    finally:
        release(model, "analysis", anat)
        for h in hooks:
            h.remove()
        for i, layer in enumerate(anat.layers):
            slots(layer.attention).watchers.remove(watched[i])
    for record, probs in zip(records, watched):
        record["probs"] = probs[-1]
    return records


def head_contributions(layer, context: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean |contribution| of each head to hidden dimension ``dim`` of the attention output projection.

    ``layer`` is a layer of the model anatomy (:func:`outlierbook.models.anatomy.anatomy`).
    """
    w = layer.out.weight  # [d, d]
    ctx = context.view(*context.shape[:2], layer.heads, -1)  # [B,T,H,dh]
    w_dim = w[dim].view(layer.heads, -1)  # [H, dh]
    contrib = torch.einsum("bthd,hd->bth", ctx, w_dim)
    return contrib.abs().mean(dim=(0, 1))


def delimiter_mass(probs: torch.Tensor, is_delim: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per head: mean over real query tokens of the probability mass on delimiter keys. ``[H]``"""
    mass = (probs * is_delim[:, None, None, :].float()).sum(-1)  # [B,H,T]
    m = mask[:, None, :].float()
    return (mass * m).sum(dim=(0, 2)) / m.sum(dim=(0, 2))


def head_of_dim(dim: int, head_size: int) -> int:
    """The paper's mapping of a hidden dimension to the head owning that slice (0-based)."""
    return dim // head_size
