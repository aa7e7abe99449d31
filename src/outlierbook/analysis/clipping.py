r"""Clip one activation kind in the FP model and watch the task metric (Outlier Suppression, Fig. 2, Table 13).

``clipped(model, kind, value)`` clamps every layer's output of one kind — ``"ffn.gelu"`` from above
($\min(x, c)$ for $c>0$) or ``"attention.ln"`` from below ($\max(x, c)$ for $c<0$, as the paper clips
the MHA-LN's negative outliers) — and counts, per layer, the share of real tokens with at least
one clipped element.
"""

from __future__ import annotations

import contextlib

import pandas as pd
import torch

MODULES = {  # roles of the model anatomy
    "ffn.gelu": lambda layer: layer.ffn_act,
    "attention.ln": lambda layer: layer.attention_ln,
    "ffn.ln": lambda layer: layer.ffn_ln,
}


@contextlib.contextmanager
def clipped(model, kind: str, value: float):
    """Clamp outputs of ``kind`` at ``value``; yields ``[clipped tokens, tokens]`` counters per layer."""
    from ..errors import ConfigError

    if kind not in MODULES:
        raise ConfigError(f"clipping supports {', '.join(MODULES)}, not {kind!r}")
    from ..models.anatomy import anatomy

    layers = anatomy(model).layers
    counts = [[0, 0] for _ in layers]
    state = {"mask": None}

    def grab_mask(module, args, kwargs):
        state["mask"] = kwargs.get("attention_mask")

    def make_hook(i):
        def hook(module, args, out):
            hit = out > value if value > 0 else out < value
            tok = hit.any(-1)
            mask = state["mask"]
            mask = torch.ones_like(tok) if mask is None else mask.bool()
            counts[i][0] += int((tok & mask).sum())
            counts[i][1] += int(mask.sum())
            return out.clamp(max=value) if value > 0 else out.clamp(min=value)
        return hook

    hooks = [model.register_forward_pre_hook(grab_mask, with_kwargs=True)]
    hooks += [MODULES[kind](layer).register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        yield counts
    finally:
        for h in hooks:
            h.remove()


def clipping_impact(setup, kind: str, values) -> pd.DataFrame:
    """Task metric and per-layer share of clipped tokens for each clipping value."""
    from ..models.anatomy import anatomy

    n_layers = len(anatomy(setup.model).layers)
    rows = [{"clip": None, "metric": setup.score(), **{f"layer{i}": 0.0 for i in range(n_layers)}}]
    for v in values:
        with clipped(setup.model, kind, v) as counts:
            score = setup.score()
        rows.append({"clip": v, "metric": score, **{f"layer{i}": 100 * c / max(n, 1) for i, (c, n) in enumerate(counts)}})
    return pd.DataFrame(rows)
