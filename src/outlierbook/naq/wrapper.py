r"""NAQ on a BERT-family encoder: the FFN's "Linear + GELU" and the "scores + softmax" of attention.

**Linear + activation** (``T_QP``): compute the low-precision product $P = \hat x\hat W^\top$; where
$P < T_{QP}$ the output is predicted to sit in the activation's flat region and is served at low precision,
$f(P + \hat b)$; everywhere else it is recomputed in full precision, $f(xW^\top + b)$.
Thresholds are in the units of the pre-activation (the authors' code divides by the input width and
the grid sizes instead; a deliberate difference).

**Scores + softmax** (``T_AS``, ``T_sum``): quantize the layer input to the fixed low-precision grid,
recompute Q and K through the FP projections, form low-precision scores $\hat z$ (scaled, masked); serve
$\hat z_{ij}$ where $\hat z_{ij} \le T_{AS}$ **and** $\sum_j e^{\hat z_{ij}} \ge T_{sum}$, the FP score elsewhere,
then a regular softmax.

As in the authors' code the recomputation is simulated (both paths are computed and selected with
``torch.where``). Counts are over real elements only: padded tokens and masked score positions are
excluded (the authors' code counts masked positions, which inflates the share).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..quant.nodes import find_parts, real_tokens
from .lowprec import low_precision_linear, quantize_fixed

ATTENTION_NAME = "outlierbook_naq"


@dataclass
class NAQStats:
    """Elements served at low precision / all real elements, per wrapper kind."""

    counts: dict = field(default_factory=lambda: {"ffn": [0, 0], "attention": [0, 0]})

    def add(self, kind: str, low: int, total: int) -> None:
        self.counts[kind][0] += int(low)
        self.counts[kind][1] += int(total)

    def share(self, kind: str) -> float:
        low, total = self.counts[kind]
        return low / total if total else float("nan")

    def reset(self) -> None:
        for v in self.counts.values():
            v[0] = v[1] = 0


class NAQIntermediate(nn.Module):
    """Replaces ``BertIntermediate`` (dense + activation) with the NAQ version."""

    def __init__(self, original: nn.Module, owner: "NAQModel"):
        super().__init__()
        self.original = original
        self._owner = [owner]

    def forward(self, hidden_states):
        o = self._owner[0]
        dense, act = self.original.dense, self.original.intermediate_act_fn
        fp = act(dense(hidden_states))
        product, bias = low_precision_linear(hidden_states, dense, o.bits, o.max_input)
        low = act(product if bias is None else product + bias)
        served_low = product < o.t_qp
        tokens = o.token_mask
        real = served_low if tokens is None else served_low[tokens]
        o.stats.add("ffn", real.sum(), real.numel())
        return torch.where(served_low, low, fp)


def naq_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with NAQ's low-precision scores (see the module docstring)."""
    o = module.naq_owner
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    h = quantize_fixed(module.naq_hidden, o.bits, o.max_input)
    b, t, _ = h.shape
    shape = (b, t, -1, query.size(-1))
    q_lp = module.query(h).view(shape).transpose(1, 2)
    k_lp = module.key(h).view(shape).transpose(1, 2)
    scores_lp = torch.matmul(q_lp, k_lp.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores, scores_lp = scores + attention_mask, scores_lp + attention_mask
    row_sum = torch.exp(scores_lp).sum(-1, keepdim=True)
    served_low = (scores_lp <= o.t_as) & (row_sum >= o.t_sum)
    real = torch.ones_like(served_low)
    if attention_mask is not None:
        real = real & (attention_mask > torch.finfo(attention_mask.dtype).min / 2)
    if o.token_mask is not None:
        real = real & o.token_mask[:, None, :, None]
    o.stats.add("attention", (served_low & real).sum(), real.sum())
    probs = torch.softmax(torch.where(served_low, scores_lp, scores), dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, naq_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


class NAQModel(nn.Module):
    """Wrap a BERT-family model with NAQ in every FFN and attention layer (``remove()`` restores it).

    ``t_qp=-inf`` and ``t_as=-inf`` send everything to full precision (the FP model exactly);
    ``t_qp=+inf``, ``t_as=+inf``, ``t_sum=-inf`` send everything to the low-precision path.
    """

    def __init__(self, model: nn.Module, t_qp: float = 0.0, t_as: float = -3.0, t_sum: float = 200.0,
                 bits: int = 4, max_input: float = 4.0, ffn: bool = True, attention: bool = True):
        super().__init__()
        if max_input <= 0:
            raise ConfigError("max_input (the fixed low-precision range M) must be positive")
        self.model, self.parts = model, find_parts(model)
        self.t_qp, self.t_as, self.t_sum, self.bits, self.max_input = t_qp, t_as, t_sum, bits, max_input
        self.stats, self.token_mask, self._hooks, self._swapped = NAQStats(), None, [], []
        for layer in self.parts.layers:
            if ffn:
                self._swapped.append((layer, layer.intermediate))
                layer.intermediate = NAQIntermediate(layer.intermediate, self)
            if attention:
                sa = layer.attention.self
                object.__setattr__(sa, "naq_owner", self)  # not a submodule (no cycle)
                self._hooks.append(sa.register_forward_pre_hook(self._stash, with_kwargs=True))
        self._previous_attn = model.config._attn_implementation
        if attention:
            register_attention()
            model.set_attn_implementation(ATTENTION_NAME)
        self.train(model.training)

    @staticmethod
    def _stash(module, args, kwargs):
        module.naq_hidden = args[0] if args else kwargs["hidden_states"]

    def set_thresholds(self, t_qp=None, t_as=None, t_sum=None) -> "NAQModel":
        self.t_qp = self.t_qp if t_qp is None else t_qp
        self.t_as = self.t_as if t_as is None else t_as
        self.t_sum = self.t_sum if t_sum is None else t_sum
        return self

    @property
    def config(self):
        return self.model.config

    def forward(self, **inputs):
        with real_tokens(self, inputs):
            return self.model(**inputs)

    def remove(self) -> nn.Module:
        for h in self._hooks:
            h.remove()
        for layer, original in self._swapped:
            layer.intermediate = original
        for layer in self.parts.layers:
            for attr in ("naq_owner", "naq_hidden"):
                if hasattr(layer.attention.self, attr):
                    delattr(layer.attention.self, attr)
        self.model.set_attn_implementation(self._previous_attn)
        return self.model
