r"""Which quantization nodes hurt: per-node cosine similarity and "disable one kind" recovery.

Outlier Suppression (Appendix B.2, Tables 9 and 11) ranks every activation node by the cosine
similarity between its FP output $x$ and the quantized $\hat x = Q(x)$,

$$\cos(x, \hat x) = \frac{\langle x, \hat x\rangle}{\lVert x\rVert_2\,\lVert \hat x\rVert_2},$$

over all real (unpadded) tokens, and calls a node problematic below 99 %. We quantize each node
**in isolation** (its FP input, its own calibrated range), so a node's score does not inherit the
errors of the nodes before it.
"""

from __future__ import annotations

import contextlib

import pandas as pd
import torch

from ..quant.nodes import QuantizedModel
from .capture import record


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().flatten(), y.double().flatten()
    return float((x @ y) / (x.norm() * y.norm()).clamp(min=1e-300))


@torch.no_grad()
def node_cosine(qm: QuantizedModel, batches) -> pd.DataFrame:
    """Cosine similarity (%) of each calibrated activation node's $Q(x)$ against its FP $x$."""
    nodes = [n for n in qm.act_nodes.values() if n.quantizer is not None]
    recorded = record(qm, nodes, batches)
    rows = []
    for n in nodes:
        chunks = recorded[n.name]
        q = n.quantizer
        before, q.quantizing = q.quantizing, True
        try:
            xq = torch.cat([q(c).flatten() for c in chunks])
        finally:
            q.quantizing = before
        x = torch.cat([c.flatten() for c in chunks])
        rows.append({"node": n.name, "kind": n.kind, "layer": n.layer, "cos_sim": 100 * cosine(x, xq)})
    return pd.DataFrame(rows).sort_values("cos_sim", kind="stable").reset_index(drop=True)


@contextlib.contextmanager
def fp32_kinds(qm: QuantizedModel, kinds):
    """Temporarily leave every activation node of the given kinds (or node names) unquantized."""
    kinds = {kinds} if isinstance(kinds, str) else set(kinds)
    touched = [n.quantizer for n in qm.act_nodes.values()
               if (n.kind in kinds or n.name in kinds) and n.quantizer is not None]
    before = [q.quantizing for q in touched]
    for q in touched:
        q.quantizing = False
    try:
        yield qm
    finally:
        for q, b in zip(touched, before):
            q.quantizing = b
