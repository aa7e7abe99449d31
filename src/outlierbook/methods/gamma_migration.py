r"""Gamma Migration (Wei et al. 2022, §4.1, Eq. 3–5, Appendix A): a transform of the FP model.

A LayerNorm computes $\tilde X = \gamma \odot \hat X + \beta$ with $\hat X = (X-\mu)/\sqrt{\sigma^2+\epsilon}$.
Write it as $\tilde X = \gamma \odot X'$ with the **non-scaling** output $X' = \hat X + \beta/\gamma$ (Eq. 3).
Everything that reads $\tilde X$ in a post-LN BERT layer is linear in it:

- the next Linear layers (Q, K, V after the embedding LN and each FFN-LN; FFN1 after each MHA-LN):
  $W\tilde x = W(\gamma \odot x') = (W\,\mathrm{diag}(\gamma))\,x'$ (Eq. 5) — scale the weight's **input columns** by γ;
- the shortcut of the next residual sum: $\tilde x = \gamma \odot x'$ — multiply the shortcut by γ.

So the model computes the same function, but the tensor that gets quantized is $X'$, which lacks
γ's outlier dimensions. Pairs, as in the authors' code: embedding LN → layer 0 (Q, K, V and its
attention shortcut); each MHA-LN → its FFN1 and FFN shortcut; each FFN-LN → the next layer's Q, K, V
and attention shortcut. The last FFN-LN feeds the pooler/head and is left unchanged.
Like SmoothQuant's ``smooth_ln_fcs``, the function edits the model in place.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import OutlierBookError


class NonScalingLayerNorm(nn.Module):
    r"""$X' = (X-\mu)/\sqrt{\sigma^2+\epsilon} + \beta/\gamma$ — a LayerNorm without its scale."""

    def __init__(self, ln: nn.LayerNorm, min_abs_gamma: float = 1e-6):
        super().__init__()
        gamma, beta = ln.weight.detach(), ln.bias.detach()
        if gamma.abs().min() < min_abs_gamma:
            raise OutlierBookError(f"LayerNorm has |γ| < {min_abs_gamma}: β/γ would blow up; Gamma Migration needs γ ≠ 0")
        self.normalized_shape, self.eps = ln.normalized_shape, ln.eps
        self.register_buffer("gamma", gamma.clone())
        self.register_buffer("bias_over_gamma", (beta / gamma).clone())

    def forward(self, x):
        return nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps) + self.bias_over_gamma


def _scale_shortcut(gamma: torch.Tensor):
    """Forward pre-hook for BertSelfOutput/BertOutput(hidden_states, input_tensor): shortcut · γ."""
    def hook(module, args):
        return (args[0], args[1] * gamma) + tuple(args[2:])
    return hook


def migrate_gamma(model: nn.Module, ffn_ln: bool = True, mha_ln: bool = True, embedding_ln: bool = True) -> list[str]:
    """Apply Gamma Migration to a post-LN BERT-family model in place; returns the migrated LayerNorms.

    The model keeps its function in floating point (tested to 1e-4 on real inputs).
    """
    from ..quant.nodes import find_parts

    parts = find_parts(model)
    if getattr(model, "_outlierbook_gamma_migrated", False):
        raise OutlierBookError("this model is already gamma-migrated; migrate a fresh copy")
    migrated: list[str] = []

    def migrate(owner, attr: str, consumers: list[nn.Linear], shortcut_module: nn.Module, label: str):
        ln = getattr(owner, attr)
        new = NonScalingLayerNorm(ln)
        gamma = new.gamma
        with torch.no_grad():
            for lin in consumers:
                lin.weight.mul_(gamma)  # broadcasts over the input dimension: W diag(γ)
        shortcut_module.register_forward_pre_hook(_scale_shortcut(gamma))
        setattr(owner, attr, new)
        migrated.append(label)

    layers = parts.layers
    if embedding_ln:
        att0 = layers[0].attention
        migrate(parts.embeddings, "LayerNorm", [att0.self.query, att0.self.key, att0.self.value], att0.output,
                "embeddings.ln")
    for i, layer in enumerate(layers):
        if mha_ln:
            migrate(layer.attention.output, "LayerNorm", [layer.intermediate.dense], layer.output,
                    f"layer{i}.attention.ln")
        if ffn_ln and i + 1 < len(layers):
            nxt = layers[i + 1].attention
            migrate(layer.output, "LayerNorm", [nxt.self.query, nxt.self.key, nxt.self.value], nxt.output,
                    f"layer{i}.ffn.ln")
    model._outlierbook_gamma_migrated = True
    return migrated


def quantized_cosine(x: torch.Tensor, bits: int = 6) -> float:
    """Cosine similarity (%) of ``x`` and its per-tensor asymmetric min-max quantization."""
    from ..analysis.sensitivity import cosine
    from ..quant.quantizer import Grid, fake_quantize, qparams

    grid = Grid(bits, False)
    s, z = qparams(x.min(), x.max(), grid)
    return 100 * cosine(x, fake_quantize(x, s, z, grid.qmin, grid.qmax))


def migration_cosines(ln_output: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, bits: int = 6) -> dict:
    """Outlier Suppression's Table 1: quantization cosine of $\\tilde X$ versus the non-scaling $X' = (\\tilde X-\\beta)/\\gamma + \\beta/\\gamma$.

    Note $X' = \\hat X + \\beta/\\gamma$ where $\\hat X = (\\tilde X - \\beta)/\\gamma$ is the normalised input.
    """
    x_prime = (ln_output - beta) / gamma + beta / gamma
    return {"x_tilde": quantized_cosine(ln_output, bits), "x_prime": quantized_cosine(x_prime, bits)}


def weight_cosines(linear: torch.nn.Linear, gamma: torch.Tensor, bits: int = 6) -> dict:
    """Outlier Suppression's Table 2: symmetric per-channel quantization cosine of $W$ and of $W\\,\\mathrm{diag}(\\gamma)$."""
    from ..analysis.sensitivity import cosine
    from ..quant.fake_quant import FakeQuantizer
    from ..quant.granularity import Granularity
    from ..quant.quantizer import Grid

    out = {}
    for label, w in (("original", linear.weight.detach()), ("gamma_scaled", linear.weight.detach() * gamma)):
        q = FakeQuantizer(Grid(bits, True), "current_minmax", Granularity(axis=0))
        q.observe(w)
        q.fix()
        q.quantizing = True
        out[label] = 100 * cosine(w, q(w))
    return out
