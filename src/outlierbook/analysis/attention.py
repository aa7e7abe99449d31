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

from ..quant.nodes import ATTENTION_NAME, register_attention


@torch.no_grad()
def attention_records(model, batch) -> list[dict]:
    """Per layer: probs ``[B,H,T,T]``, values ``[B,H,T,d_h]`` and per-head outputs ``[B,T,H,d_h]``."""
    register_attention()
    base = getattr(model, "base_model", model)
    layers = base.encoder.layer
    records = [{} for _ in layers]

    def make_softmax(i):
        def softmax(scores):
            p = torch.softmax(scores, dim=-1)
            records[i]["probs"] = p
            return p
        return softmax

    hooks = []
    for i, layer in enumerate(layers):
        att = layer.attention.self
        att.outlierbook_softmax = make_softmax(i)
        hooks.append(att.value.register_forward_hook(
            lambda m, a, out, i=i, h=att.num_attention_heads: records[i].__setitem__(
                "values", out.view(*out.shape[:2], h, -1).transpose(1, 2))))
        hooks.append(layer.attention.output.dense.register_forward_pre_hook(
            lambda m, a, i=i: records[i].__setitem__("context", a[0])))
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        model(**batch)
    finally:
        model.set_attn_implementation(previous)
        for h in hooks:
            h.remove()
        for layer in layers:
            layer.attention.self.outlierbook_softmax = None
    return records


def head_contributions(layer, context: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean |contribution| of each head to hidden dimension ``dim`` of the attention output dense."""
    w = layer.attention.output.dense.weight  # [d, d]
    heads = layer.attention.self.num_attention_heads
    ctx = context.view(*context.shape[:2], heads, -1)  # [B,T,H,dh]
    w_dim = w[dim].view(heads, -1)  # [H, dh]
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
