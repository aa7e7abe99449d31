r"""Named quantization nodes in a Hugging Face encoder or decoder, without copying its modeling file.

Where the nodes attach is read from the model anatomy (:mod:`outlierbook.models.anatomy`: BERT,
RoBERTa, XLM-R, ELECTRA, MPNet, DistilBERT, OPT), never from module paths written here. Activation
nodes are forward hooks (outputs) and forward pre-hooks (inputs) on the model's own modules; the
attention scores and probabilities, which SDPA never materialises, are the ``scores`` and ``probs``
slots of the book's one attention function (:mod:`outlierbook.models.attention_function`), shared with
the attention variants and NAQ. Weights are quantized with ``torch.nn.utils.parametrize``, so
quantization-aware training gets gradients through them.

Node names read as words: ``embeddings.ln``, ``layer3.attention.probs``, ``layer5.ffn.residual``,
``pooler.output``. The *kind* of a node is its name without the layer prefix. Two placements:

=====================  ==========================================  =====  ==========
kind                   tensor                                      OS/FT  2021 (letter)
=====================  ==========================================  =====  ==========
embeddings.sum         word + position + type embeddings (LN in)          ✓ e
embeddings.ln          embedding LayerNorm output                   ✓     ✓
attention.q/k/v        query / key / value projections              ✓     ✓
attention.scores       $QK^\top$ before scaling and mask                  ✓ s
attention.probs        softmax output                               ✓     ✓ p
attention.context      heads merged (input of the output dense)     ✓     ✓ c
attention.output       attention output dense                             ✓ g
attention.residual     dense output + layer input (LN input)              ✓ u
attention.ln           attention LayerNorm output ("MHA-LN")        ✓     ✓ x
ffn.gelu               first FFN Linear after GELU                  ✓     ✓
ffn.output             second FFN Linear output                           ✓ h
ffn.residual           FFN output + FFN input (LN input)                  ✓ y
ffn.ln                 FFN LayerNorm output ("FFN-LN")              ✓     ✓ z
pooler.output          pooler (dense + tanh)                              ✓ P
classifier.output      logits                                             ✓ C
=====================  ==========================================  =====  ==========

Weights: every Linear of the encoder, pooler and classifier, and the word / position / token-type
embedding tables, symmetric, per output channel by default (per row for embedding tables).
Language-model heads (BERT's ``cls.*``, OPT's ``lm_head``, tied to the word embeddings) stay in FP,
as in the 2023 authors' code.

**OPT-style decoders** (pre-LayerNorm, the Quantizable Transformers chapter) get the same wrapper with
their own nodes: ``attention.ln`` (LN before attention), ``attention.q/k/v/scores/probs/context/output``,
``ffn.ln`` (LN before the FFN), ``ffn.act`` (ReLU output), ``ffn.output``, ``layer.output`` (the residual
stream after the layer) and ``final.ln``; both placements quantize all of them.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, OutlierBookError
from .fake_quant import FakeQuantizer
from .granularity import Granularity
from .quantizer import Grid
from ..models.anatomy import Anatomy, anatomy
from ..models.attention_function import claim, release, slots

KINDS = (
    "embeddings.sum", "embeddings.ln",
    "attention.q", "attention.k", "attention.v", "attention.scores", "attention.probs", "attention.context",
    "attention.output", "attention.residual", "attention.ln",
    "ffn.gelu", "ffn.output", "ffn.residual", "ffn.ln",
    "pooler.output", "classifier.output",
)
OPT_LAYER_KINDS = ("attention.ln", "attention.q", "attention.k", "attention.v", "attention.scores", "attention.probs",
                   "attention.context", "attention.output", "ffn.ln", "ffn.act", "ffn.output", "layer.output")
OPT_KINDS = OPT_LAYER_KINDS + ("final.ln",)
PLACEMENTS = {
    # FasterTransformer positions used by Outlier Suppression (notes §1.3).
    "os": ("embeddings.ln", "attention.q", "attention.k", "attention.v", "attention.probs", "attention.context",
           "attention.ln", "ffn.gelu", "ffn.ln"),
    # Bondarenko et al. 2021: every Linear output, residual sum, LayerNorm output, softmax in and out (notes §2.3).
    "bondarenko": KINDS + tuple(k for k in OPT_KINDS if k not in KINDS),
}
LAYER_KINDS = tuple(k for k in KINDS if k.startswith(("attention.", "ffn.")))
ALL_KINDS = PLACEMENTS["bondarenko"]
# For OPT the matrix-multiplication inputs (the "os" placement) are the two LN outputs, Q, K, V, probs,
# context, the activation output and the final LN.
OPT_PLACEMENTS = {"os": ("attention.ln", "attention.q", "attention.k", "attention.v", "attention.probs",
                         "attention.context", "ffn.ln", "ffn.act", "final.ln"),
                  "bondarenko": OPT_KINDS}


# ---------------------------------------------------------------------- node settings


@dataclass
class NodeSettings:
    """How one node is quantized. ``bits=None`` (or ``"fp32"`` in a config dict) leaves it in FP32."""

    bits: int | None = 8
    symmetric: bool = False
    estimator: object = "current_minmax"
    axis: int | None = None
    groups: int | None = None
    scale_rule: str = "qualcomm"

    def grid(self) -> Grid:
        return Grid(self.bits, self.symmetric, self.scale_rule)


def _apply(settings: NodeSettings, update: dict) -> NodeSettings:
    if update == "fp32" or update is None:
        update = {"bits": None}
    elif isinstance(update, int) and not isinstance(update, bool):
        update = {"bits": update}
    if not isinstance(update, dict):
        raise ConfigError(f"node setting {update!r} is not understood; use an int (bits), 'fp32', or a dict")
    unknown = set(update) - set(NodeSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown node setting(s) {', '.join(sorted(unknown))}; "
                          f"use: {', '.join(NodeSettings.__dataclass_fields__)}")
    values = {**settings.__dict__, **{k: ("fp32" if v == "fp32" else v) for k, v in update.items()}}
    if values["bits"] == "fp32":
        values["bits"] = None
    return NodeSettings(**values)


def kind_of(name: str) -> str:
    """``layer3.ffn.ln`` -> ``ffn.ln``; ``embeddings.ln`` -> ``embeddings.ln``; weights -> ``weight``."""
    if name.startswith("weight:"):
        return "weight"
    return name.split(".", 1)[1] if name.startswith("layer") else name


def candidate_names(anat: Anatomy) -> dict:
    """``{"act": {name: (kind, layer)}, "weight": [names]}``: every node a model of this anatomy can have."""
    weights = [f"weight:{n}" for n in anat.weights]
    if not anat.post_ln:
        acts = {f"layer{i}.{kind}": (kind, i) for i in range(len(anat.layers)) for kind in OPT_LAYER_KINDS}
        if anat.final_ln is not None:
            acts["final.ln"] = ("final.ln", None)
        return {"act": acts, "weight": weights}
    acts = {"embeddings.sum": ("embeddings.sum", None), "embeddings.ln": ("embeddings.ln", None)}
    for i in range(len(anat.layers)):
        for kind in LAYER_KINDS:
            acts[f"layer{i}.{kind}"] = (kind, i)
    if anat.pooler is not None:
        acts["pooler.output"] = ("pooler.output", None)
    if anat.classifier is not None:
        acts["classifier.output"] = ("classifier.output", None)
    return {"act": acts, "weight": weights}


def check_selectors(config: dict, names: dict, n_layers: int) -> None:
    """Every selector of a node config must reach a node, kind or layer of the model."""
    valid_names = set(names["act"]) | set(names["weight"])
    layers = {f"layer{i}" for i in range(n_layers)}
    for sel in config:
        if sel in ("*", "weight:*") or sel in ALL_KINDS or sel in layers or sel in valid_names:
            continue
        if any(ch in sel for ch in "*?[") and any(fnmatch.fnmatchcase(n, sel) for n in valid_names):
            continue
        raise ConfigError(f"quantization config names {sel!r}, which is no node, kind or layer of this model; "
                          f"kinds: {', '.join(ALL_KINDS)}; nodes look like 'layer0.ffn.residual' or 'weight:<module path>'")


def settings_for(name, kind, layer, default: NodeSettings, config: dict) -> NodeSettings:
    """The settings of one node: ``default`` updated by every selector of ``config`` that reaches it, in order."""
    settings = default
    for sel, update in config.items():
        is_weight = name.startswith("weight:")
        hit = (
            (sel == "*" and not is_weight) or (sel == "weight:*" and is_weight) or sel == kind or sel == name
            or (layer is not None and sel == f"layer{layer}")
            or (any(ch in sel for ch in "*?[") and sel not in ("*", "weight:*") and fnmatch.fnmatchcase(name, sel))
        )
        if hit:
            settings = _apply(settings, update)
    return settings


# ---------------------------------------------------------------------- activation node


class ActivationNode(nn.Module):
    """One named activation quantizer (``quantizer is None`` when the node stays in FP32)."""

    def __init__(self, name: str, kind: str, layer: int | None, settings: NodeSettings, owner: "QuantizedModel"):
        super().__init__()
        self.name, self.kind, self.layer = name, kind, layer
        self.settings = settings
        self._owner = [owner]  # a list: not registered as a submodule
        self.quantizer = None if settings.bits is None else FakeQuantizer(
            settings.grid(), settings.estimator, Granularity(settings.axis, settings.groups), name=name)
        self.capture = None  # set to a list to record this node's output on real tokens (analysis)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The real (unpadded) tokens of ``x``: [B,T,d] -> [N,d]; [B,H,T,T] -> flat (both positions real)."""
        mask = self._owner[0].token_mask
        if mask is None:
            return x
        if x.dim() == 3 and x.shape[:2] == mask.shape:
            return x[mask]
        if x.dim() == 2 and x.shape[0] == mask.numel():  # OPT's FFN works on [B*T, d]
            return x[mask.reshape(-1)]
        if x.dim() == 4 and x.shape[-1] == x.shape[-2] == mask.shape[1]:
            pair = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(x)
            if self.quantizer is not None and self.quantizer.granularity.axis is not None:
                raise ConfigError(f"{self.name}: per-channel/group ranges are not supported on attention matrices")
            return x[pair]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        if q is not None and q.observing:
            q.observe(self.tokens(x))
        out = x if q is None else q(x)
        if self.capture is not None:
            self.capture.append(self.tokens(out.detach()))
        return out

    def extra_repr(self) -> str:
        return f"{self.name}: fp32" if self.quantizer is None else ""


class WeightNode(nn.Module):
    """A parametrization ``W -> Ŵ`` (identity when not quantizing).

    Without gradients the quantized weight is memoised until the weight or its range changes, so a
    simulated W8A8 forward does not re-quantize the 30k-row embedding table for every batch.
    """

    def __init__(self, name: str, quantizer: FakeQuantizer | None):
        super().__init__()
        self.name = name
        self.quantizer = quantizer
        self._memo = (None, None)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        if q is None or not q.quantizing:
            return weight
        if torch.is_grad_enabled() or q.learnable or not isinstance(q, FakeQuantizer):
            return q(weight)  # training, or a frozen export form that must appear in a traced graph
        key = (weight.data_ptr(), weight._version, id(q.scale), q.scale._version, id(q.zero), q.zero._version)
        if self._memo[0] != key:
            self._memo = (key, q(weight))
        return self._memo[1]


# ---------------------------------------------------------------------- the wrapper


@contextlib.contextmanager
def real_tokens(owner, inputs: dict):
    """During one forward, ``owner.token_mask`` is the batch's real-token mask ``[B, T]`` (``None``: every
    token real), so nodes deep in the model can ignore padding in statistics and counts."""
    mask = inputs.get("attention_mask")
    owner.token_mask = None if mask is None else mask.bool()
    try:
        yield
    finally:
        owner.token_mask = None


class QuantizedModel(nn.Module):
    """A BERT-family model with named activation and weight quantization nodes.

    ``config`` maps selectors to settings, applied in order: ``"*"`` (every node), a kind
    (``"ffn.residual"``), a layer (``"layer5"``), a node name (``"layer5.ffn.residual"``) or a glob
    (``"layer[45].ffn.*"``); a setting is an int (bits), ``"fp32"``, or a dict of
    :class:`NodeSettings` fields. Weight nodes are named ``weight:<module path>``; the selector
    ``"weight:*"`` reaches all of them.
    """

    def __init__(self, model: nn.Module, placement: str = "bondarenko", act: NodeSettings | None = None,
                 weight: NodeSettings | None = None, config: dict | None = None):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ConfigError(f"unknown placement {placement!r}; use one of: {', '.join(PLACEMENTS)}")
        self.model = model
        self.placement = placement
        self.token_mask = None
        self._hooks = []
        self.parts = anatomy(model)  # raises ConfigError for an unsupported model, before any change to it
        act = act or NodeSettings()
        weight = weight or NodeSettings(bits=8, symmetric=True, estimator="current_minmax", axis=0)
        names = self.candidate_names()
        config = dict(config or {})
        self._check_selectors(config, names)

        self.act_nodes = nn.ModuleDict()
        kinds = (OPT_PLACEMENTS if not self.parts.post_ln else PLACEMENTS)[placement]
        for name, (kind, layer) in names["act"].items():
            if kind not in kinds:
                continue
            settings = self._settings_for(name, kind, layer, act, config)
            self.act_nodes[self._key(name)] = ActivationNode(name, kind, layer, settings, self)
        self.weight_nodes = {}
        for name in names["weight"]:
            settings = self._settings_for(name, "weight", None, weight, config)
            module = self.parts.weights[name[len("weight:"):]]
            quantizer = None if settings.bits is None else FakeQuantizer(
                settings.grid(), settings.estimator, Granularity(settings.axis, settings.groups), name=name)
            node = WeightNode(name, quantizer)
            parametrize.register_parametrization(module, "weight", node, unsafe=True)
            self.weight_nodes[name] = node
        self._attach_hooks()
        claim(model, "quantization", self.parts)
        self.train(model.training)  # nn.Module starts in training mode; follow the wrapped model instead
        self.set_mode(weights=False, acts=False)

    # ------------------------------------------------------------------ names and settings
    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def candidate_names(self) -> dict:
        return candidate_names(self.parts)

    def _check_selectors(self, config: dict, names: dict) -> None:
        check_selectors(config, names, len(self.parts.layers))

    @staticmethod
    def _settings_for(name, kind, layer, default: NodeSettings, config: dict) -> NodeSettings:
        return settings_for(name, kind, layer, default, config)

    def node(self, name: str) -> ActivationNode:
        key = self._key(name)
        if key not in self.act_nodes:
            raise ConfigError(f"no activation node {name!r} in this model (placement {self.placement}); "
                              f"nodes: {', '.join(self.node_names()[:6])}, …")
        return self.act_nodes[key]

    def node_names(self, quantized_only: bool = False) -> list[str]:
        return [n.name for n in self.act_nodes.values() if not quantized_only or n.quantizer is not None]

    def activation_quantizers(self) -> list[FakeQuantizer]:
        return [n.quantizer for n in self.act_nodes.values() if n.quantizer is not None]

    def weight_quantizers(self) -> list[FakeQuantizer]:
        return [n.quantizer for n in self.weight_nodes.values() if n.quantizer is not None]

    # ------------------------------------------------------------------ hooks
    def _maybe(self, name):
        key = self._key(name)
        return self.act_nodes[key] if key in self.act_nodes else None

    def _out_hook(self, module, name):
        node = self._maybe(name)
        if node is not None:
            self._hooks.append(module.register_forward_hook(lambda m, args, out: node(out)))

    def _in_hook(self, module, name):
        node = self._maybe(name)
        if node is not None:
            self._hooks.append(module.register_forward_pre_hook(lambda m, args: (node(args[0]),) + tuple(args[1:])))

    def _attach_attention(self, layer, p: str) -> None:
        slot = slots(layer.attention)
        slot.scores, slot.probs = self._maybe(p + "attention.scores"), self._maybe(p + "attention.probs")

    def _attach_hooks(self) -> None:
        anat: Anatomy = self.parts
        if anat.embeddings_ln is not None:
            self._in_hook(anat.embeddings_ln, "embeddings.sum")
            self._out_hook(anat.embeddings_ln, "embeddings.ln")
        for layer in anat.layers:
            p = f"layer{layer.index}."
            if not anat.post_ln:
                self._out_hook(layer.attention_ln, p + "attention.ln")
            self._out_hook(layer.query, p + "attention.q")
            self._out_hook(layer.key, p + "attention.k")
            self._out_hook(layer.value, p + "attention.v")
            self._attach_attention(layer, p)
            self._in_hook(layer.out, p + "attention.context")
            self._out_hook(layer.out, p + "attention.output")
            if anat.post_ln:
                self._in_hook(layer.attention_ln, p + "attention.residual")
                self._out_hook(layer.attention_ln, p + "attention.ln")
                self._out_hook(layer.ffn_act, p + "ffn.gelu")
                self._out_hook(layer.ffn_out, p + "ffn.output")
                self._in_hook(layer.ffn_ln, p + "ffn.residual")
                self._out_hook(layer.ffn_ln, p + "ffn.ln")
            else:
                self._out_hook(layer.ffn_ln, p + "ffn.ln")
                self._out_hook(layer.ffn_act, p + "ffn.act")
                self._out_hook(layer.ffn_out, p + "ffn.output")
                self._out_hook(layer.block, p + "layer.output")
        if anat.final_ln is not None:
            self._out_hook(anat.final_ln, "final.ln")
        if anat.pooler is not None:
            self._out_hook(anat.pooler, "pooler.output")
        if anat.classifier is not None:
            self._out_hook(anat.classifier, "classifier.output")

    def remove(self) -> nn.Module:
        """Detach every hook and parametrization; returns the plain model (weights unchanged)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for name in self.weight_nodes:
            parametrize.remove_parametrizations(self.parts.weights[name[len("weight:"):]], "weight",
                                                leave_parametrized=False)
        for layer in self.parts.layers:
            slot = slots(layer.attention)
            slot.scores = slot.probs = None
        release(self.model, "quantization", self.parts)
        return self.model

    # ------------------------------------------------------------------ modes
    def set_mode(self, weights: bool, acts: bool) -> "QuantizedModel":
        """W+A (True, True), weights only (True, False), activations only (False, True), FP (False, False)."""
        for q in self.weight_quantizers():
            q.quantizing = weights
        for q in self.activation_quantizers():
            q.quantizing = acts
        return self

    @property
    def mode(self) -> tuple[bool, bool]:
        """``(weights, acts)``: whether any weight / activation quantizer quantizes. Read from the
        quantizers' ``switches`` buffers, so it is right after ``load_state_dict`` too."""
        return (any(q.quantizing for q in self.weight_quantizers()),
                any(q.quantizing for q in self.activation_quantizers()))

    @property
    def config(self):
        return self.model.config

    def forward(self, **inputs):
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        ctx = parametrize.cached() if not (torch.is_grad_enabled() or tracing) else contextlib.nullcontext()
        with real_tokens(self, inputs), ctx:
            return self.model(**inputs)

    def summary(self) -> list[dict]:
        rows = []
        for n in self.act_nodes.values():
            q = n.quantizer
            rows.append({"node": n.name, "kind": n.kind, "layer": n.layer, "bits": None if q is None else q.grid.bits,
                         "granularity": None if q is None else q.granularity.kind,
                         "estimator": None if q is None else q.estimator.name})
        return rows


def quantize_model(model: nn.Module, placement: str = "bondarenko", weight_bits: int | None = 8,
                   act_bits: int | None = 8, act_estimator="current_minmax", weight_estimator="current_minmax",
                   weight_axis: int | None = 0, scale_rule: str = "qualcomm", config: dict | None = None) -> QuantizedModel:
    """Wrap ``model`` with the placement's nodes: symmetric weights, asymmetric per-tensor activations."""
    act = NodeSettings(bits=act_bits, symmetric=False, estimator=act_estimator, scale_rule=scale_rule)
    weight = NodeSettings(bits=weight_bits, symmetric=True, estimator=weight_estimator, axis=weight_axis,
                          scale_rule=scale_rule)
    return QuantizedModel(model, placement, act, weight, config)


def check_calibrated(qm: QuantizedModel) -> None:
    missing = [q.name for q in qm.activation_quantizers() + qm.weight_quantizers() if not q.calibrated]
    if missing:
        raise OutlierBookError(f"{len(missing)} node(s) have no range yet (e.g. {missing[0]}); run calibrate() first")
