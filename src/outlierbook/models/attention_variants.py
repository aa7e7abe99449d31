r"""Attention variants of Quantizable Transformers (Bondarenko et al. 2023, §4; notes §3.2–3.3).

**Clipped softmax**: $\mathrm{clip}\big((\zeta-\gamma)\,\mathrm{softmax}(x) + \gamma,\ 0,\ 1\big)$, applied after the
$1/\sqrt{d_{head}}$ scaling and the additive mask. With $\gamma < 0$ small probabilities become **exactly**
zero, so a head can attend to nothing without pushing a score to $-\infty$ (the cause of outliers); with
$\zeta > 1$ large ones reach exactly one. The authors parameterise $\gamma = -\alpha/T$ with $T$ the
configured sequence length. Zeros appear wherever $\mathrm{softmax} < -\gamma/(\zeta-\gamma)$.

**Softmax + 1** (``softmax="plus_one"``; proposed outside the four papers, never measured against their
outlier metrics): $\mathrm{softmax}_1(x)_i = e^{x_i} / (1 + \sum_j e^{x_j})$, which is the softmax over the keys
plus one extra key with logit 0 and a zero value vector, dropped from the output. Its probabilities need not
sum to one, so a head can put its leftover mass on that implicit sink instead of on a delimiter whose value
it has to shrink — the no-op mechanism the 2023 paper blames for the outliers, without clipping.

**Gated attention**: each head's context (probabilities × values) is multiplied by a gate
$\pi = \sigma(G(x)) \in (0, 1)$ computed from the layer input $x$, before the heads are merged:

- ``"linear"`` (the paper's default, *conditional per token*): head $h$ has its own
  $\mathrm{Linear}(d_{head}\to 1)$ on its $d_{head}$-slice of $x$; bias initialised to
  $\mathrm{logit}(\pi_{init})$, weights to zero-mean noise of std ``gate_init_std`` (0.01; 0 makes the
  initial gate exactly $\pi_{init}$ on every token), its output optionally scaled by ``gate_scale``
  (:func:`nearly_open_gate`: $1/\pi_{init}$, the identity at step 0);
- ``"mlp"``: $\mathrm{Linear}(d_{head}, d_{head}/4) \to \mathrm{ReLU} \to \mathrm{Linear}(\cdot, 1)$ per head;
- ``"all_heads_linear"``: one $\mathrm{Linear}(d\to H)$ on all features.

Both live in the book's one attention function (:mod:`outlierbook.models.attention_function`), so the
library's modeling code is used as it is: gates become submodules of each self-attention module
(trained and saved with the model), and a forward pre-hook hands the layer input to them.
"""

from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

GATES = ("linear", "mlp", "all_heads_linear")
SOFTMAXES = ("vanilla", "clipped", "plus_one")


def clipped_softmax(x: torch.Tensor, dim: int = -1, gamma: float = 0.0, zeta: float = 1.0) -> torch.Tensor:
    """$\\mathrm{clip}((\\zeta-\\gamma)\\,\\mathrm{softmax}(x) + \\gamma, 0, 1)$."""
    return torch.clamp((zeta - gamma) * torch.softmax(x, dim=dim) + gamma, 0.0, 1.0)


def softmax_plus_one(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """$e^{x_i} / (1 + \sum_j e^{x_j})$, computed stably: with $m = \max(0, \max_j x_j)$,
    $e^{x_i - m} / (e^{-m} + \sum_j e^{x_j - m})$. A fully masked row gives zeros, not NaN."""
    m = x.amax(dim=dim, keepdim=True).clamp_min(0.0).detach()
    e = torch.exp(x - m)
    return e / (torch.exp(-m) + e.sum(dim=dim, keepdim=True))


def gamma_for(alpha: float, seq_len: int) -> float:
    """The authors' parameterisation $\\gamma = -\\alpha/T$."""
    if seq_len < 1:
        raise ConfigError("the sequence length T must be positive")
    return -alpha / seq_len


def live_rows(probs: torch.Tensor, row_mask: torch.Tensor | None = None) -> float:
    """Share of attention rows that keep any non-zero probability (notes §3.7: clipping can kill them all)."""
    alive = (probs > 0).any(dim=-1)
    if row_mask is not None:
        alive = alive[row_mask.expand_as(alive)]
    return float(alive.float().mean())


@dataclass(frozen=True)
class AttentionVariant:
    """``softmax``: "vanilla", "clipped" (γ given, or α with T) or "plus_one"; ``gate``: None or one of
    :data:`GATES`, initialised to ``pi_init`` with weight noise of std ``gate_init_std``, its output scaled by
    ``gate_scale``."""

    softmax: str = "vanilla"
    gamma: float = 0.0
    zeta: float = 1.0
    alpha: float | None = None
    seq_len: int | None = None
    gate: str | None = None
    pi_init: float = 0.5
    gate_init_std: float = 0.01
    gate_scale: float = 1.0  # the gate's output is multiplied by this (the authors' fine-tuning: 1/pi_init)

    def __post_init__(self):
        if self.softmax not in SOFTMAXES:
            raise ConfigError(f"unknown softmax {self.softmax!r}; use one of: {', '.join(SOFTMAXES)}")
        if self.gate_init_std < 0:
            raise ConfigError(f"gate_init_std must be >= 0, got {self.gate_init_std}")
        if self.gate_scale <= 0:
            raise ConfigError(f"gate_scale must be positive, got {self.gate_scale}")
        if self.gate is not None and self.gate not in GATES:
            raise ConfigError(f"unknown gate {self.gate!r}; use one of: {', '.join(GATES)}")
        if not 0.0 < self.pi_init < 1.0:
            raise ConfigError("pi_init must lie strictly between 0 and 1")
        if self.alpha is not None and self.seq_len is None:
            raise ConfigError("γ = −α/T needs the configured sequence length T (seq_len)")

    @property
    def effective_gamma(self) -> float:
        return gamma_for(self.alpha, self.seq_len) if self.alpha is not None else self.gamma

    def probabilities(self, scores: torch.Tensor, gamma_scale: float = 1.0) -> torch.Tensor:
        """``gamma_scale`` ∈ [0, 1] multiplies γ (the warm-up ramp of :func:`set_gamma_scale`)."""
        if self.softmax == "vanilla":
            return torch.softmax(scores, dim=-1)
        if self.softmax == "plus_one":
            return softmax_plus_one(scores, dim=-1)
        return clipped_softmax(scores, -1, gamma_scale * self.effective_gamma, self.zeta)


def nearly_open_gate(pi_init: float = 0.5) -> AttentionVariant:
    r"""Gated attention for a model that is already trained, as the authors' ``--fine_tuning`` flag sets it
    up: the linear gate (the paper's default) with weights zero and bias $\mathrm{logit}(\pi_{init})$, its
    output scaled by $1/\pi_{init}$, so every head's context is multiplied by exactly
    $\sigma(\mathrm{logit}\,\pi_{init})/\pi_{init} = 1$ at step 0: the model starts at its pretrained function.
    With $\pi_{init} = 0.5$ the gate sits where the sigmoid's slope is largest (1/4), so it can learn to close
    a head (towards 0) or to open it further (up to $1/\pi_{init} = 2$). The authors draw the weights from
    $\mathcal N(0, 0.01^2)$, which makes the start only roughly the identity; zero weights make it exact."""
    if not 0.0 < pi_init < 1.0:
        raise ConfigError(f"a nearly open gate starts at pi_init in (0, 1), got {pi_init}")
    return AttentionVariant(gate="linear", pi_init=pi_init, gate_init_std=0.0, gate_scale=1.0 / pi_init)


def module_probabilities(module: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    """The attention probabilities of an installed module: its variant at its current γ scale."""
    variant: AttentionVariant = module.outlierbook_variant
    return variant.probabilities(scores, getattr(module, "outlierbook_gamma_scale", 1.0))


def set_gamma_scale(model: nn.Module, scale: float) -> None:
    r"""Scale every layer's clipped-softmax γ by ``scale`` (1 = the configured γ).

    Our remedy for notes §3.7 (not in the paper): at small width a freshly initialised model attends
    almost uniformly, $p \approx 1/T$, so with $\gamma = -\alpha/T$, $\alpha > 1$ every probability is clipped
    to zero and attention receives no gradient. Ramping γ from 0 during warm-up lets attention sharpen first.
    """
    if not 0.0 <= scale <= 1.0:
        raise ConfigError(f"the γ scale must lie in [0, 1], got {scale}")
    for m in attention_modules(model):
        object.__setattr__(m, "outlierbook_gamma_scale", float(scale))


class AttentionGate(nn.Module):
    """$\\sigma(G(x))$ of shape ``[B, H, T, 1]`` from the layer input ``x`` of shape ``[B, T, d]``."""

    def __init__(self, kind: str, hidden: int, heads: int, pi_init: float = 0.5, init_std: float = 0.01,
                 scale: float = 1.0):
        super().__init__()
        self.scale = scale
        if hidden % heads:
            raise ConfigError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.kind, self.heads, self.d_head = kind, heads, hidden // heads
        if kind == "linear":
            self.weight = nn.Parameter(torch.randn(heads, self.d_head) * init_std)
            self.bias = nn.Parameter(torch.full((heads,), math.log(pi_init / (1 - pi_init))))
        elif kind == "mlp":
            inner = max(self.d_head // 4, 1)
            self.w1 = nn.Parameter(torch.randn(heads, self.d_head, inner) / math.sqrt(self.d_head))
            self.b1 = nn.Parameter(torch.zeros(heads, inner))
            self.w2 = nn.Parameter(torch.randn(heads, inner) / math.sqrt(inner))
            self.b2 = nn.Parameter(torch.zeros(heads))
        elif kind == "all_heads_linear":
            self.proj = nn.Linear(hidden, heads)
        else:
            raise ConfigError(f"unknown gate {kind!r}; use one of: {', '.join(GATES)}")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if self.kind == "all_heads_linear":
            return self.proj(x).transpose(1, 2).unsqueeze(-1)
        xh = x.view(b, t, self.heads, self.d_head).transpose(1, 2)  # [B, H, T, d_head]
        if self.kind == "linear":
            out = torch.einsum("bhtd,hd->bht", xh, self.weight) + self.bias[:, None]
        else:
            hidden = torch.relu(torch.einsum("bhtd,hdk->bhtk", xh, self.w1) + self.b1[:, None])
            out = torch.einsum("bhtk,hk->bht", hidden, self.w2) + self.b2[:, None]
        return out.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.logits(x))
        return gate if self.scale == 1.0 else gate * self.scale


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules (the modules whose forward computes scores and probabilities)."""
    from .anatomy import anatomy

    return [layer.attention for layer in anatomy(model).layers]


@contextlib.contextmanager
def live_row_shares(model):
    """Within the block, every attention module's forward appends the share of its rows that keep any
    non-zero probability (``live_rows``, notes §3.7) to the yielded list; the hooks go when the block ends."""
    shares: list[float] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: shares.append(live_rows(out[1])))
             for m in attention_modules(model)]
    try:
        yield shares
    finally:
        for h in hooks:
            h.remove()


def install(model: nn.Module, variant: AttentionVariant) -> nn.Module:
    """Give every attention layer the variant (in place; gates become trainable submodules).

    The variant lives in the one attention function (:mod:`.attention_function`), so quantization
    nodes and NAQ installed later see it, and removing them leaves it in place.
    """
    from .anatomy import anatomy
    from .attention_function import claim, stash_input

    anat = anatomy(model)
    for layer in anat.layers:
        m = layer.attention
        object.__setattr__(m, "outlierbook_variant", variant)
        if variant.gate is not None:
            m.outlierbook_gate = AttentionGate(variant.gate, anat.hidden, anat.heads, variant.pi_init,
                                               variant.gate_init_std, variant.gate_scale)
            m.register_forward_pre_hook(stash_input, with_kwargs=True)
    claim(model, "variant", anat)
    return model
