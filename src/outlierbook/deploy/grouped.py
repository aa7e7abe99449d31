r"""PEG's per-embedding-group activations in integer kernels: the grouped-Linear rewrite.

A PEG node quantizes the channels of group $G_k$ with their own scale and zero point $(s_k, z_k)$, so
no single activation scale factors out of a Linear layer that reads it. Split the sum over input
channels by group instead:

$$y_j = b_j + \sum_{k=1}^{K} s_k\, s_{W,j} \sum_{c \in G_k} (q_{x,c} - z_k)\, q_{W,jc}.$$

Each inner sum is an ordinary integer product of the columns $G_k$ of the input (one scale, $s_k$) with
the same columns of the weight (per output channel, $s_{W,j}$): $K$ integer kernels whose float results
are added, the rewrite that Bondarenko et al. (2021, §4) use to argue that PEG runs on per-tensor
hardware (:func:`outlierbook.methods.peg.grouped_linear_forward` computes it in the simulation).

In the exported graph a PEG node is a per-channel QuantizeLinear/DequantizeLinear pair (each channel
carries its group's scale and zero point: exactly the grouped quantizer, run in floating point where
the tensor goes on to an addition or a LayerNorm), and every Linear that reads the node is replaced,
for the export only, by :class:`GroupedLinear`: it gathers each group's columns, quantizes them again
per tensor with $(s_k, z_k)$ (values already on that grid come back unchanged), and multiplies them by
the matching weight columns, which the runtime fuses into integer products.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import ConfigError
from ..quant.quantizer import fake_quantize


def channels_of(parts, node) -> int:
    """Width of the tensor at activation node ``node``: the FFN's inner width after its activation, else the
    hidden width."""
    if node.kind in ("ffn.gelu", "ffn.act"):
        return parts.layers[node.layer].ffn_in.out_features
    return parts.hidden


def linear_readers(parts, node) -> list[nn.Linear]:
    """The Linear layers whose whole input is the tensor at ``node`` (empty where the tensor goes only to an
    addition, a LayerNorm or the output). BERT-family (post-LN) and OPT-style (pre-LN) blocks."""
    layers, i, kind = parts.layers, node.layer, node.kind

    def qkv(j):
        return [layers[j].query, layers[j].key, layers[j].value] if 0 <= j < len(layers) else []

    if kind == "attention.context":
        return [layers[i].out]
    if parts.post_ln:
        return {"embeddings.ln": lambda: qkv(0), "attention.ln": lambda: [layers[i].ffn_in],
                "ffn.ln": lambda: qkv(i + 1), "ffn.gelu": lambda: [layers[i].ffn_out]}.get(kind, list)()
    return {"attention.ln": lambda: qkv(i), "ffn.ln": lambda: [layers[i].ffn_in],
            "ffn.act": lambda: [layers[i].ffn_out]}.get(kind, list)()


def qdq_per_tensor(x: torch.Tensor, scale: float, zero: int, qmin: int, qmax: int) -> torch.Tensor:
    """The book's quantizer with one scale and zero point; traced, a QuantizeLinear/DequantizeLinear pair."""
    if torch.jit.is_tracing():
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)
    return fake_quantize(x, torch.tensor(scale), torch.tensor(float(zero)), qmin, qmax)


class GroupedLinear(nn.Module):
    r"""$\sum_k \mathrm{Linear}(Q_k(x_{G_k}),\ \hat W_{:,G_k})$ + bias: a Linear layer that reads a per-group
    quantized input, as $K$ per-tensor quantized products.

    ``weight`` is the Linear's own (unquantized) weight; ``weight_qdq`` its frozen weight quantizer (a
    :class:`~outlierbook.deploy.qdq.QuantDequant` per output channel or per tensor, or ``None`` for an FP32
    weight); ``act`` the calibrated per-group quantizer of the input node."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, weight_qdq, act):
        super().__init__()
        from ..methods.peg import group_indices

        if weight_qdq is not None and weight_qdq.axis not in (None, 0):
            raise ConfigError(f"{act.name}: the grouped rewrite needs weights quantized per output channel or "
                              "per tensor, not along their input axis")
        scale, zero = act.current_qparams(torch.empty(1))
        self.qmin, self.qmax = act.grid.qmin, act.grid.qmax
        self.groups = [(idx, float(s), int(round(float(z))))
                       for idx, s, z in zip(group_indices(act, weight.shape[1]), scale.reshape(-1), zero.reshape(-1))]
        self.weight_parts = [weight[:, idx].detach().clone() for idx, _, _ in self.groups]
        self.bias = None if bias is None else bias.detach().clone()
        self.weight_qdq = weight_qdq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for (idx, s, z), w in zip(self.groups, self.weight_parts):
            xk = qdq_per_tensor(x.index_select(-1, idx), s, z, self.qmin, self.qmax)
            wk = w if self.weight_qdq is None else self.weight_qdq(w)
            part = torch.nn.functional.linear(xk, wk)
            out = part if out is None else out + part
        return out if self.bias is None else out + self.bias


def _raw_weight(linear: nn.Linear) -> torch.Tensor:
    """The stored weight of a Linear, under a quantization parametrization or not."""
    if hasattr(linear, "parametrizations") and "weight" in linear.parametrizations:
        return linear.parametrizations.weight.original
    return linear.weight


@contextlib.contextmanager
def grouped_readers(qm, act_quantizers: dict, weight_qdqs: dict):
    """Within the block, every Linear that reads a per-group quantized node computes :class:`GroupedLinear`
    (its own forward hooks stay in place: the nodes on its output still quantize). ``act_quantizers`` maps an
    activation node to its calibrated quantizer, ``weight_qdqs`` a Linear to its frozen weight quantizer (or
    ``None``). Put back afterwards, whatever happens."""
    replaced = []
    try:
        for node in qm.act_nodes.values():
            q = act_quantizers.get(node)
            if q is None or not q.quantizing or q.granularity.groups is None:
                continue
            for linear in linear_readers(qm.parts, node):
                grouped = GroupedLinear(_raw_weight(linear), linear.bias, weight_qdqs.get(linear), q)
                replaced.append(linear)
                linear.forward = grouped.forward  # an instance attribute: hooks registered on ``linear`` still run
        yield replaced
    finally:
        for linear in replaced:
            del linear.forward
