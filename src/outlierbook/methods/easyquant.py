r"""EasyQuant (Wu et al. 2020), the scale search Outlier Suppression compares against (its Table 4).

For a Linear layer $y = Wx$ whose input $x$ is a quantized activation node, alternately search the
activation scale multiplier $\alpha$ and the weight scale multiplier $\beta$ that maximise the cosine
similarity of the layer's output with the FP output on calibration data:

$$\alpha^\star = \arg\max_{\alpha}\ \cos\!\big(Q_{\alpha s_x}(x)\,Q_{\beta s_W}(W)^\top,\ x W^\top\big),
\qquad \beta^\star = \arg\max_{\beta}\ \cos\!\big(Q_{\alpha^\star s_x}(x)\,Q_{\beta s_W}(W)^\top,\ x W^\top\big),$$

repeated ``rounds`` times, with $\alpha, \beta$ on a grid in $[\text{lower}, 1]$ times the min-max scales
($s_W$ per output channel, one $\beta$ per layer). One node feeding several Linears (the LayerNorm
before Q, K and V) is scored on their concatenated outputs.

**Simplifications (stated in the chapter).** The inputs $x$ are recorded from the FP model, not from
the already-quantized layers below; the attention-internal nodes (Q, K, V, probabilities), which feed
matrix products without weights, keep their min-max ranges.
"""

from __future__ import annotations

import torch

from ..analysis.capture import record
from ..analysis.sensitivity import cosine
from ..errors import ConfigError
from ..quant.nodes import QuantizedModel, check_calibrated
from ..quant.quantizer import fake_quantize


def linear_consumers(qm: QuantizedModel) -> dict[str, list[str]]:
    """Quantized activation node -> the weight nodes of the Linear layers it feeds (OS placement)."""
    prefix = {id(m): n for n, m in qm.model.named_modules()}
    anat = qm.parts
    layers = anat.layers

    def names(*modules):
        return [f"weight:{prefix[id(m)]}" for m in modules]

    def qkv(layer):
        return names(layer.query, layer.key, layer.value)

    if anat.embeddings_projection is None:
        out = {"embeddings.ln": qkv(layers[0])}
    else:
        out = {"embeddings.ln": names(anat.embeddings_projection)}
    for i, layer in enumerate(layers):
        out[f"layer{i}.attention.context"] = names(layer.out)
        out[f"layer{i}.attention.ln"] = names(layer.ffn_in)
        out[f"layer{i}.ffn.gelu"] = names(layer.ffn_out)
        if i + 1 < len(layers):
            out[f"layer{i}.ffn.ln"] = qkv(layers[i + 1])
        elif anat.pooler_dense is not None:
            out[f"layer{i}.ffn.ln"] = names(anat.pooler_dense)
    return {a: ws for a, ws in out.items()
            if a in qm.node_names(quantized_only=True) and all(qm.weight_nodes.get(w) is not None for w in ws)}


def _weight(qm: QuantizedModel, name: str) -> torch.Tensor:
    return qm.parts.weights[name[len("weight:"):]].parametrizations.weight.original.detach()


def _quantize_weight(w, scale, zero, grid, beta: float):
    """Per-output-channel weight quantization with every scale multiplied by ``beta``."""
    shape = [-1] + [1] * (w.dim() - 1)
    return fake_quantize(w, scale.reshape(shape) * beta, zero.reshape(shape), grid.qmin, grid.qmax)


@torch.no_grad()
def easyquant(qm: QuantizedModel, batches, rounds: int = 2, lower: float = 0.5, steps: int = 11,
              max_tokens: int = 4096) -> dict:
    """Run the alternating search on a calibrated ``qm`` in place; returns ``{node: (alpha, {weight: beta})}``."""
    check_calibrated(qm)
    if steps < 2 or not 0 < lower < 1:
        raise ConfigError("EasyQuant needs steps >= 2 and 0 < lower < 1")
    pairs = linear_consumers(qm)
    if not pairs:
        raise ConfigError("EasyQuant found no quantized activation node feeding a quantized Linear layer")
    grid = torch.linspace(lower, 1.0, steps).tolist()
    recorded = record(qm, [qm.node(a) for a in pairs], batches)
    chosen = {}
    for act, weights in pairs.items():
        x = torch.cat(recorded[act])[:max_tokens]
        aq = qm.node(act).quantizer
        lo, hi = aq.estimator.compute()
        wqs = {w: qm.weight_nodes[w].quantizer for w in weights}
        base = {w: (q.scale.clone(), q.zero.clone()) for w, q in wqs.items()}
        ws = {w: _weight(qm, w) for w in weights}
        ref = {w: x @ ws[w].T for w in weights}
        beta = {w: 1.0 for w in weights}
        alpha = 1.0

        def x_hat(a):
            aq.set_range(lo * a, hi * a)
            return fake_quantize(x, aq.scale, aq.zero, aq.grid.qmin, aq.grid.qmax)

        def w_hat(w, b):
            return _quantize_weight(ws[w], *base[w], wqs[w].grid, b)

        for _ in range(rounds):
            what = {w: w_hat(w, beta[w]) for w in weights}
            score = {a: cosine(torch.cat([x_hat(a) @ what[w].T for w in weights], -1),
                               torch.cat([ref[w] for w in weights], -1)) for a in grid}
            alpha = max(grid, key=lambda a: (score[a], a))
            xq = x_hat(alpha)
            for w in weights:
                s = {b: cosine(xq @ w_hat(w, b).T, ref[w]) for b in grid}
                beta[w] = max(grid, key=lambda b: (s[b], b))
        aq.set_range(lo * alpha, hi * alpha)
        for w, q in wqs.items():
            q.set_qparams(base[w][0] * beta[w], base[w][1])
        chosen[act] = (alpha, beta)
    return chosen
