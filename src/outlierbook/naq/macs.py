r"""Multiply-accumulate counts (NAQ Figure 3) and the energy model of NAQ §2.4.

Per encoder layer and sequence of $T$ tokens (hidden $d$, FFN width $d_{ff}$):
Q, K, V and output projections $4Td^2$; FFN $2Td\,d_{ff}$; scores $QK^\top$ $T^2d$; context $T^2d$.
The **pre-nonlinearity** MACs are those whose result feeds GELU or softmax: FFN1 ($Td\,d_{ff}$) and the
scores ($T^2 d$).

**Energy** (per multiply-add: INT4 0.065 pJ, INT8 0.23 pJ, FP16 1.5 pJ). The low-precision pass always
runs over all $N_{pre}$ pre-nonlinearity MACs, and a share $1-p$ is recomputed at the baseline precision:

$$E_{NAQ} = N_{pre}\,(e_{4} + (1-p)\,e_{b}) + N_{other}\,e_{b}, \qquad
\frac{E_{NAQ}}{E_b} = \frac{N_{pre}(e_4 + (1-p)e_b) + N_{other}e_b}{(N_{pre}+N_{other})\,e_b},$$

where $p$ is the share served at low precision and $b$ the baseline (FP16 or INT8). The paper states the
per-MAC energies but not the formula, and its code has no energy model; this is our reading (notes §4.4).
"""

from __future__ import annotations

import torch

ENERGY_PJ = {"int4": 0.065, "int8": 0.23, "fp16": 1.5}


def encoder_macs(config, seq_len: int) -> dict:
    """Analytic MACs of one sequence through the encoder layers (embeddings, pooler and head excluded)."""
    d, dff, L, t = config.hidden_size, config.intermediate_size, config.num_hidden_layers, seq_len
    per_layer = {"qkv": 3 * t * d * d, "attention_output": t * d * d, "ffn1": t * d * dff, "ffn2": t * dff * d,
                 "scores": t * t * d, "context": t * t * d}
    out = {k: L * v for k, v in per_layer.items()}
    out["pre_nonlinearity"] = out["ffn1"] + out["scores"]
    out["total"] = sum(L * v for v in per_layer.values())
    return out


@torch.no_grad()
def measured_macs(model, batch) -> dict:
    """MACs counted by hooks during a forward pass (all tokens of ``batch``, padding included).

    Linear layers count ``tokens × in × out``; attention matrix products count ``B·H·T·T·d_head`` each.
    """
    from ..models.anatomy import anatomy

    layers = anatomy(model).layers
    counts = {"linear": 0, "ffn1": 0, "scores": 0, "context": 0}
    ffn1 = {id(layer.ffn_in) for layer in layers}
    encoder_linears = {id(m) for layer in layers for m in layer.block.modules() if isinstance(m, torch.nn.Linear)}
    hooks = []

    def linear_hook(module, args, out):
        if id(module) in encoder_linears:
            n = out.numel() // out.shape[-1] * module.in_features * module.out_features
            counts["ffn1" if id(module) in ffn1 else "linear"] += n

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    b, t = batch["input_ids"].shape
    try:
        model(**batch)
    finally:
        for h in hooks:
            h.remove()
    d = model.config.hidden_size
    counts["scores"] = counts["context"] = len(layers) * b * t * t * d
    counts["pre_nonlinearity"] = counts["ffn1"] + counts["scores"]
    counts["total"] = counts["linear"] + counts["ffn1"] + counts["scores"] + counts["context"]
    return counts


def relative_energy(pre_macs: float, other_macs: float, share_low: float, baseline: str = "fp16",
                    low: str = "int4") -> float:
    """$E_{NAQ}/E_{baseline}$ of the formula above."""
    e_b, e_l = ENERGY_PJ[baseline], ENERGY_PJ[low]
    naq = pre_macs * (e_l + (1 - share_low) * e_b) + other_macs * e_b
    return naq / ((pre_macs + other_macs) * e_b)
