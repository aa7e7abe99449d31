r"""Gamma Migration (Wei et al. 2022, §4.1, Eq. 3–5, Appendix A): a transform of the FP model.

A LayerNorm computes $\tilde X = \gamma \odot \hat X + \beta$ with $\hat X = (X-\mu)/\sqrt{\sigma^2+\epsilon}$.
Write it as $\tilde X = \gamma \odot X'$ with the **non-scaling** output $X' = \hat X + \beta/\gamma$ (Eq. 3).
Everything that reads $\tilde X$ in a post-LN encoder layer is linear in it:

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
        self.register_buffer("inverse_scale", None)  # set by a later smoothing (divide)

    def divide(self, s: torch.Tensor) -> None:
        """Divide the output by ``s`` per channel (a smoothing applied after the migration)."""
        inv = 1.0 / s
        self.inverse_scale = inv if self.inverse_scale is None else self.inverse_scale * inv
        self.bias_over_gamma = self.bias_over_gamma * inv

    def forward(self, x):
        y = nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps)
        if self.inverse_scale is not None:
            y = y * self.inverse_scale
        return y + self.bias_over_gamma


def _scale_shortcut(gamma: torch.Tensor, arg: int):
    """Forward pre-hook for a module that receives the shortcut as argument ``arg``
    (BERT's ``BertSelfOutput(hidden_states, input_tensor)``): shortcut · γ."""
    def hook(module, args):
        return args[:arg] + (args[arg] * gamma,) + tuple(args[arg + 1:])
    return hook


def _keep_input(seen: dict):
    def hook(module, args):
        seen["x"] = args[0]
    return hook


def _correct_sum(gamma: torch.Tensor, seen: dict):
    r"""Forward pre-hook on the LayerNorm after a residual sum written inside a block's forward
    (DistilBERT, MPNet's attention): the sum received $x'$ as its shortcut, so add $(\gamma-1)\odot x'$.
    $x'$ is taken where a consumer reads it (``seen``), i.e. after any quantization node on it."""
    def hook(module, args):
        return (args[0] + (gamma - 1) * seen.pop("x"),) + tuple(args[1:])
    return hook


def migrate_gamma(model: nn.Module, ffn_ln: bool = True, mha_ln: bool = True, embedding_ln: bool = True,
                  only=None) -> list[str]:
    """Apply Gamma Migration to a post-LN encoder in place; returns the migrated LayerNorms
    (``only``: a set of labels such as ``"layer3.attention.ln"`` to migrate, the others left alone).

    The model keeps its function in floating point (tested to 1e-4 on real inputs). Works on every
    post-LN family of the model anatomy; with an embedding projection (ELECTRA) the embedding LN's γ
    goes into the projection, whose output is the first layer's input and shortcut.
    """
    from ..errors import ConfigError
    from ..models.anatomy import anatomy

    anat = anatomy(model)
    if not anat.post_ln:
        raise ConfigError(f"Gamma Migration needs a post-LN encoder; {type(model).__name__} is pre-LN "
                          "(its LayerNorms feed the branches, not the residual stream)")
    if getattr(model, "_outlierbook_gamma_migrated", False):
        raise OutlierBookError("this model is already gamma-migrated; migrate a fresh copy")
    plan = [(label, ln, NonScalingLayerNorm(ln), readers)
            for label, ln, readers in layernorm_readers(anat, embedding_ln, mha_ln, ffn_ln)
            if only is None or label in only]
    new_of = {id(ln): new for _, ln, new, _ in plan}  # every LN is built before any is replaced
    for label, ln, new, readers in plan:
        readers.rescale(new.gamma, new_of)
        replace_module(model, ln, new)
    model._outlierbook_gamma_migrated = True
    return [label for label, *_ in plan]


TOP_OUTLIER_DIMS = 10  # as the ledger's OS-1: the top-10 dimensions of max |X̃|


@torch.no_grad()
def outlier_gammas(model: nn.Module, batches, top_k: int = TOP_OUTLIER_DIMS) -> list[dict]:
    r"""For every LayerNorm Gamma Migration would migrate: the mean $|\gamma|$ over its output's outlier
    dimensions, and whether γ **amplifies** them (that mean is above 1).

    Why it matters. Migration quantizes $X' = \tilde X / \gamma$ (up to the bias term) instead of
    $\tilde X = \gamma \odot X'$. On a dimension $j$ with $|\gamma_j| < 1$, $|X'_j| = |\tilde X_j| / |\gamma_j|
    > |\tilde X_j|$: if $j$ is an outlier dimension, dividing by γ makes the outlier *larger*, and the
    per-tensor range $\max_j |X'_j|$ (hence the step $s = \text{range}/(2^b-1)$) widens. Only where
    $|\gamma_j| > 1$ on the outlier dimensions does migration shrink the range it is meant to shrink.
    The rule, fixed before measuring: the outlier dimensions are the ``top_k`` dimensions of
    $\max |\tilde X|$ over the real tokens of ``batches``; migrate the LayerNorm iff the mean $|\gamma|$
    over them exceeds 1.
    """
    from ..models.anatomy import anatomy

    lns = {label: ln for label, ln, _ in layernorm_readers(anatomy(model))}
    maxima: dict[str, torch.Tensor] = {}
    mask: dict = {}

    def observe(label):
        def hook(module, args, out):
            real = out[mask["m"].bool()] if mask.get("m") is not None else out.reshape(-1, out.shape[-1])
            m = real.abs().amax(dim=0)
            maxima[label] = m if label not in maxima else torch.maximum(maxima[label], m)
        return hook

    handles = [ln.register_forward_hook(observe(label)) for label, ln in lns.items()]
    try:
        for b in batches:
            mask["m"] = b.get("attention_mask")
            model(**b)
    finally:
        for h in handles:
            h.remove()
    out = []
    for label, ln in lns.items():
        dims = maxima[label].topk(min(top_k, maxima[label].numel())).indices
        g = float(ln.weight.detach()[dims].abs().mean())
        out.append({"layernorm": label, "mean |γ| at outlier dims": g, "amplifies": g > 1.0})
    return out


def replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise OutlierBookError("a LayerNorm of the anatomy is not a submodule of the model")


class Readers:
    """Everything that reads one LayerNorm's output in a post-LN encoder: Linear ``consumers``, and the
    residual shortcut — entering ``shortcut.module`` as an argument, or summed inside a block's forward
    before ``sum_ln`` (then corrected there), or absent (ELECTRA's embedding projection)."""

    def __init__(self, consumers, shortcut=None, sum_ln=None):
        self.consumers, self.shortcut, self.sum_ln = list(consumers), shortcut, sum_ln

    def rescale(self, s: torch.Tensor, new_of: dict | None = None, shortcut: bool = True) -> None:
        """The LN's output is about to be divided by ``s``: multiply every reader by ``s``, so the model's
        function is unchanged: $W\,\mathrm{diag}(s)$ for the consumers, shortcut $\cdot\, s$."""
        with torch.no_grad():
            for lin in self.consumers:
                lin.weight.mul_(s)  # broadcasts over the input dimension: W diag(s)
        if not shortcut:
            return
        if self.shortcut is not None:
            self.shortcut.module.register_forward_pre_hook(_scale_shortcut(s, self.shortcut.arg))
        elif self.sum_ln is not None:  # the hook goes on the LN that will be in the model (it may be replaced too)
            seen: dict = {}
            self.consumers[0].register_forward_pre_hook(_keep_input(seen))
            (new_of or {}).get(id(self.sum_ln), self.sum_ln).register_forward_pre_hook(_correct_sum(s, seen))


def layernorm_readers(anat, embedding_ln: bool = True, mha_ln: bool = True, ffn_ln: bool = True) -> list:
    """``[(label, LayerNorm, Readers)]`` as in the authors' code: embedding LN → layer 0, each MHA-LN → its
    FFN, each FFN-LN but the last → the next layer (the last feeds the pooler/head and is left alone)."""
    out = []
    layers = anat.layers
    if embedding_ln:
        first = layers[0]
        if anat.embeddings_projection is not None:
            out.append(("embeddings.ln", anat.embeddings_ln, Readers([anat.embeddings_projection])))
        else:
            out.append(("embeddings.ln", anat.embeddings_ln, Readers([first.query, first.key, first.value],
                                                                     first.attention_shortcut, first.attention_ln)))
    for i, layer in enumerate(layers):
        if mha_ln:
            out.append((f"layer{i}.attention.ln", layer.attention_ln,
                        Readers([layer.ffn_in], layer.ffn_shortcut, layer.ffn_ln)))
        if ffn_ln and i + 1 < len(layers):
            nxt = layers[i + 1]
            out.append((f"layer{i}.ffn.ln", layer.ffn_ln,
                        Readers([nxt.query, nxt.key, nxt.value], nxt.attention_shortcut, nxt.attention_ln)))
    return out


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
