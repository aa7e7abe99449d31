r"""One attention function for every method that looks inside attention.

SDPA never materialises the scores or the probabilities, so quantization nodes, attention variants
(clipped softmax, gates) and NAQ all need an eager attention. They share **this one function**, and
each fills its own *slot* of an attention module instead of installing a function of its own (with
three functions the last one installed won, and removing one switched the others off):

$$
S = QK^\top \xrightarrow{\ \text{scores node}\ } \hat S,\qquad
Z = \text{scale}\cdot\hat S + M \xrightarrow{\ \text{NAQ}\ } Z',\qquad
P = \text{softmax}_{\text{variant}}(Z') \xrightarrow{\ \text{probs node}\ } \hat P,\qquad
O = \pi(x)\odot(\hat P V)
$$

- ``scores`` / ``probs`` — the quantization nodes ``attention.scores`` (on $QK^\top$, before scaling,
  relative position bias and mask) and ``attention.probs``;
- the softmax — vanilla, or the module's :class:`~outlierbook.models.attention_variants.AttentionVariant`
  (clipped softmax); the gate $\pi(x)$ — the module's ``outlierbook_gate`` on the layer input;
- ``naq`` — NAQ's substitution of low-precision scores (after scaling and mask, before the softmax);
- ``watchers`` — lists that receive the probabilities (the no-op analysis of chapter 03).

$M$ is the additive mask, plus MPNet's relative position bias: MPNet computes attention in its own forward,
which :func:`claim` replaces by one that calls this function (the scores node therefore sits *before*
the position bias, as it sits before the mask). Every other family reaches it through
``transformers.AttentionInterface`` and the matching mask interface. :func:`claim` installs it for a
named user and :func:`release` removes that user; the model's own attention comes back when the last
user has gone.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
from torch import nn

ATTENTION_NAME = "outlierbook"
STATE = "_outlierbook_attention"


@dataclass(eq=False)
class Slots:
    """What one attention module does beyond vanilla attention (see the module docstring)."""

    scores: nn.Module | None = None
    probs: nn.Module | None = None
    naq: object | None = None
    watchers: list = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.scores is None and self.probs is None and self.naq is None and not self.watchers


_NO_SLOTS = Slots()


def slots(module: nn.Module) -> Slots:
    """The slots of an attention module (created empty on first use)."""
    found = module.__dict__.get("outlierbook_slots")
    if found is None:
        found = Slots()
        module.__dict__["outlierbook_slots"] = found
    return found


def stash_input(module, args, kwargs):
    """Forward pre-hook: keep the layer input (for gates and NAQ's low-precision scores)."""
    object.__setattr__(module, "outlierbook_input", args[0] if args else kwargs["hidden_states"])


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with the module's slots filled in; returns ``(context [B,T,H,d_h], probs)``."""
    from .attention_variants import module_probabilities

    s = module.__dict__.get("outlierbook_slots", _NO_SLOTS)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3))
    if s.scores is not None:
        scores = s.scores(scores)
    scores = scores * scaling
    if attention_mask is not None:
        attention_mask = attention_mask[..., : key.shape[-2]]
        scores = scores + attention_mask
    if s.naq is not None:
        scores = s.naq.substitute(module, scores, attention_mask, scaling)
    if getattr(module, "outlierbook_variant", None) is not None:
        probs = module_probabilities(module, scores)
    else:
        probs = torch.softmax(scores, dim=-1)
    if s.probs is not None:
        probs = s.probs(probs)
    for watcher in s.watchers:
        watcher.append(probs.detach())
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value)
    gate = getattr(module, "outlierbook_gate", None)
    if gate is not None:  # the gate stays FP; the context node sees the gated heads
        out = out * gate(module.outlierbook_input)
    return out.transpose(1, 2).contiguous(), probs


def _mpnet_forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
    """MPNet's self-attention with :func:`attention` in the middle (same projections, same bias)."""
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q = self.q(hidden_states).view(shape).transpose(1, 2)
    k = self.k(hidden_states).view(shape).transpose(1, 2)
    v = self.v(hidden_states).view(shape).transpose(1, 2)
    bias = position_bias
    if attention_mask is not None:
        bias = attention_mask if bias is None else bias + attention_mask
    context, probs = attention(self, q, k, v, bias, scaling=self.attention_head_size ** -0.5,
                               dropout=self.dropout.p)
    o = self.o(context.reshape(*context.shape[:2], -1))
    return (o, probs) if output_attentions else (o,)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def users(model: nn.Module) -> list[str]:
    state = model.__dict__.get(STATE)
    return [] if state is None else list(state["users"])


def claim(model: nn.Module, user: str, anat=None) -> None:
    """Route ``model``'s attention through :func:`attention` on behalf of ``user`` (idempotent per user)."""
    from .anatomy import anatomy

    state = model.__dict__.get(STATE)
    if state is None:
        anat = anat or anatomy(model)
        state = {"users": [], "previous": model.config._attn_implementation, "style": anat.attention_style}
        if anat.attention_style == "mpnet":
            for layer in anat.layers:
                layer.attention.forward = types.MethodType(_mpnet_forward, layer.attention)
        else:
            register()
            model.set_attn_implementation(ATTENTION_NAME)
        model.__dict__[STATE] = state
    if user not in state["users"]:
        state["users"].append(user)


def release(model: nn.Module, user: str, anat=None) -> None:
    """Remove ``user``; the model's own attention returns when no user is left."""
    from .anatomy import anatomy

    state = model.__dict__.get(STATE)
    if state is None or user not in state["users"]:
        return
    state["users"].remove(user)
    if state["users"]:
        return
    anat = anat or anatomy(model)
    if state["style"] == "mpnet":
        for layer in anat.layers:
            layer.attention.__dict__.pop("forward", None)
    else:
        model.set_attn_implementation(state["previous"])
    del model.__dict__[STATE]
