r"""NAQ on an encoder or decoder of the model anatomy: the FFN's "Linear + GELU" and the "scores + softmax" of attention.

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

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..models.anatomy import anatomy
from ..models.attention_function import claim, release, slots, stash_input
from ..quant.nodes import real_tokens
from ..quant.quantizer import check_bits
from .lowprec import low_precision_linear, quantize_fixed


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


class NAQModel(nn.Module):
    """Wrap a model with NAQ in every FFN and attention layer (``remove()`` restores it).

    ``t_qp=-inf`` and ``t_as=-inf`` send everything to full precision (the FP model exactly);
    ``t_qp=+inf``, ``t_as=+inf``, ``t_sum=-inf`` send everything to the low-precision path.
    The FFN is reached through hooks on the anatomy's ``ffn_in`` (its input and pre-activation) and
    ``ffn_act`` (whose output is replaced); attention through the ``naq`` slot of the one attention
    function, so quantization nodes and attention variants on the same model keep working.
    """

    def __init__(self, model: nn.Module, t_qp: float = 0.0, t_as: float = -3.0, t_sum: float = 200.0,
                 bits: int = 4, max_input: float = 4.0, ffn: bool = True, attention: bool = True):
        super().__init__()
        if max_input <= 0:
            raise ConfigError("max_input (the fixed low-precision range M) must be positive")
        anat = anatomy(model)
        check_bits(bits)
        self.model, self.parts = model, anat
        self.t_qp, self.t_as, self.t_sum, self.bits, self.max_input = t_qp, t_as, t_sum, bits, max_input
        self.stats, self.token_mask, self._hooks, self._attention = NAQStats(), None, [], attention
        self._layers = {id(layer.attention): layer for layer in anat.layers}
        for layer in anat.layers:
            if ffn:
                self._hooks.append(layer.ffn_in.register_forward_hook(self._keep_pre_activation))
                self._hooks.append(layer.ffn_act.register_forward_hook(self._ffn_output(layer)))
            if attention:
                self._hooks.append(layer.attention.register_forward_pre_hook(stash_input, with_kwargs=True))
                slots(layer.attention).naq = self
        if attention:
            claim(model, "naq", anat)
        self.train(model.training)

    # ------------------------------------------------------------------ FFN: Linear + activation
    def _keep_pre_activation(self, module, args, out):
        self._pre = (args[0], module)

    def _ffn_output(self, layer):
        def hook(module, args, fp):
            x, dense = self._pre
            product, bias = low_precision_linear(x, dense, self.bits, self.max_input)
            act = layer.activation
            act = act.forward if isinstance(act, nn.Module) else act  # not through its hooks (this one among them)
            low = act(product if bias is None else product + bias)
            served_low = product < self.t_qp
            tokens = self.token_mask
            if tokens is not None:
                served_low_real = served_low[tokens] if served_low.dim() == 3 else served_low[tokens.reshape(-1)]
            else:
                served_low_real = served_low
            self.stats.add("ffn", served_low_real.sum(), served_low_real.numel())
            return torch.where(served_low, low, fp)
        return hook

    # ------------------------------------------------------------------ attention: scores + softmax
    def substitute(self, module, scores, attention_mask, scaling):
        """The attention function's ``naq`` slot: low-precision scores where the thresholds allow."""
        layer = self._layers[id(module)]
        h = quantize_fixed(module.outlierbook_input, self.bits, self.max_input)
        b, t, _ = h.shape
        d_head = layer.query.out_features // layer.heads
        shape = (b, t, -1, d_head)
        q_lp = (layer.query(h) * layer.query_prescale).view(shape).transpose(1, 2)
        k_lp = layer.key(h).view(shape).transpose(1, 2)
        scores_lp = torch.matmul(q_lp, k_lp.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores_lp = scores_lp + attention_mask
        row_sum = torch.exp(scores_lp).sum(-1, keepdim=True)
        served_low = (scores_lp <= self.t_as) & (row_sum >= self.t_sum)
        real = torch.ones_like(served_low)
        if attention_mask is not None:
            real = real & (attention_mask > torch.finfo(attention_mask.dtype).min / 2)
        if self.token_mask is not None:
            real = real & self.token_mask[:, None, :, None]
        self.stats.add("attention", (served_low & real).sum(), real.sum())
        return torch.where(served_low, scores_lp, scores)

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
        self._hooks = []
        for layer in self.parts.layers:
            slots(layer.attention).naq = None
            layer.attention.__dict__.pop("outlierbook_input", None)
        release(self.model, "naq", self.parts)
        self._pre = None
        return self.model


@contextlib.contextmanager
def naq_executing(model: nn.Module, **thresholds):
    """``with naq_executing(model, t_qp=..., t_as=..., t_sum=...) as naq:`` — the model executed by NAQ inside
    the block (``naq.stats`` counts what took the low-precision path), restored exactly afterwards, also when
    the block fails. ``model`` may be an FP model or a quantized model's own Hugging Face model."""
    naq = NAQModel(model, **thresholds)
    try:
        yield naq
    finally:
        naq.remove()

