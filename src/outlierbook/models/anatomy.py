r"""The model anatomy: the one module that knows Hugging Face module paths.

Every method in the book speaks of *roles* — the embedding LayerNorm, a layer's query, key and value
projections, its attention output, the FFN's first and second Linear and activation, the two
LayerNorms and the residual shortcuts that feed them — never of ``layer.attention.self.query``.
:func:`anatomy` maps a model onto those roles once:

==============  ===========================================  ==========================================
family          layers                                       notes
==============  ===========================================  ==========================================
bert            ``encoder.layer[i]`` (post-LN)               also the book's own pre-trained encoder
roberta         as BERT                                      classification head ``dense → out_proj``
xlm-roberta     as BERT
electra         as BERT                                      ``embeddings_project`` when the embedding
                                                             width differs from the hidden width
mpnet           ``encoder.layer[i]``; attention in           relative position bias added to the
                ``attention.attn`` (``q, k, v, o``)          scaled scores (no attention interface)
distilbert      ``transformer.layer[i]`` (``q_lin`` …,       residual sums inside the block
                ``sa_layer_norm``, ``ffn.lin1/lin2``)
opt             ``decoder.layers[i]`` (pre-LN)               the Quantizable Transformers decoder
==============  ===========================================  ==========================================

For a **post-LN** block $x \mapsto \mathrm{LN}_2(f(y) + y)$ with $y = \mathrm{LN}_1(\mathrm{att}(x) + x)$,
``attention_ln`` is $\mathrm{LN}_1$ and ``ffn_ln`` is $\mathrm{LN}_2$; for a **pre-LN** block they are the
LayerNorms *before* attention and FFN. ``*_shortcut`` says where the residual shortcut enters a module as a
positional argument (BERT's ``BertSelfOutput(hidden, input_tensor)``), or ``None`` when the sum is written
inside a block's forward (DistilBERT, MPNet's attention).

Anything else raises :class:`~outlierbook.errors.ConfigError` naming the class and the supported
families — before anything touches the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "mpnet", "distilbert", "opt")
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "electra", "mpnet")
LM_HEADS = ("cls.", "lm_head", "generator_predictions", "generator_lm_head", "vocab_transform", "vocab_layer_norm",
            "vocab_projector", "discriminator_predictions")


@dataclass(frozen=True)
class Shortcut:
    """The residual shortcut of a sum enters ``module``'s forward as positional argument ``arg``."""

    module: nn.Module
    arg: int


@dataclass(eq=False)
class Layer:
    """The roles of one transformer block."""

    index: int
    block: nn.Module
    attention: nn.Module  # the module whose forward computes the scores and probabilities
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    out: nn.Linear  # attention output projection (its input is the merged context)
    attention_ln: nn.Module
    ffn_in: nn.Linear
    ffn_act: nn.Module  # the module whose output is the activation output
    activation: object  # the activation function alone (callable)
    ffn_out: nn.Linear
    ffn_ln: nn.Module
    attention_shortcut: Shortcut | None = None
    ffn_shortcut: Shortcut | None = None
    heads: int = 0
    query_prescale: float = 1.0  # OPT multiplies the query projection by 1/sqrt(d_head) before attention


@dataclass(eq=False)
class Anatomy:
    """The roles of a whole model (see the module docstring)."""

    family: str
    norm: str  # "post" or "pre"
    attention_style: str  # "interface" (transformers' AttentionInterface) or "mpnet" (its own forward)
    base: nn.Module
    layers: list
    hidden: int
    heads: int
    embeddings: nn.Module | None = None
    embeddings_ln: nn.Module | None = None
    embeddings_projection: nn.Linear | None = None
    pooler: nn.Module | None = None  # the pooler whose output feeds the classifier (BERT's dense + tanh)
    pooler_dense: nn.Linear | None = None
    classifier: nn.Module | None = None
    final_ln: nn.Module | None = None
    weights: dict = field(default_factory=dict)  # module path -> Linear / Embedding that gets a weight node

    @property
    def post_ln(self) -> bool:
        return self.norm == "post"


def _family(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise ConfigError(f"{type(model).__name__} (model_type {family!r}) is not supported; the book's methods "
                          f"support these families: {', '.join(FAMILIES)}")
    return family


def _classifier(model: nn.Module):
    for name in ("classifier", "qa_outputs"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def _weights(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding)) and name and not name.startswith(LM_HEADS)}


def _bert_layer(i: int, block: nn.Module) -> Layer:
    att = block.attention
    return Layer(i, block, att.self, att.self.query, att.self.key, att.self.value, att.output.dense,
                 att.output.LayerNorm, block.intermediate.dense, block.intermediate,
                 block.intermediate.intermediate_act_fn, block.output.dense, block.output.LayerNorm,
                 attention_shortcut=Shortcut(att.output, 1), ffn_shortcut=Shortcut(block.output, 1))


def _mpnet_layer(i: int, block: nn.Module) -> Layer:
    att = block.attention
    return Layer(i, block, att.attn, att.attn.q, att.attn.k, att.attn.v, att.attn.o, att.LayerNorm,
                 block.intermediate.dense, block.intermediate, block.intermediate.intermediate_act_fn,
                 block.output.dense, block.output.LayerNorm,
                 attention_shortcut=None, ffn_shortcut=Shortcut(block.output, 1))


def _distilbert_layer(i: int, block: nn.Module) -> Layer:
    att, ffn = block.attention, block.ffn
    return Layer(i, block, att, att.q_lin, att.k_lin, att.v_lin, att.out_lin, block.sa_layer_norm,
                 ffn.lin1, ffn.activation, ffn.activation, ffn.lin2, block.output_layer_norm)


def _opt_layer(i: int, block: nn.Module) -> Layer:
    att = block.self_attn
    return Layer(i, block, att, att.q_proj, att.k_proj, att.v_proj, att.out_proj, block.self_attn_layer_norm,
                 block.fc1, block.activation_fn, block.activation_fn, block.fc2, block.final_layer_norm,
                 query_prescale=float(att.scaling))


def _build(model: nn.Module, family: str) -> Anatomy:
    base = getattr(model, "base_model", model)
    config = model.config
    heads = config.num_attention_heads
    hidden = config.hidden_size
    if family == "opt":
        decoder = base.decoder
        layers = [_opt_layer(i, b) for i, b in enumerate(decoder.layers)]
        return Anatomy(family, "pre", "interface", base, layers, hidden, heads,
                       final_ln=getattr(decoder, "final_layer_norm", None))
    if family == "distilbert":
        layers = [_distilbert_layer(i, b) for i, b in enumerate(base.transformer.layer)]
        return Anatomy(family, "post", "interface", base, layers, hidden, heads, embeddings=base.embeddings,
                       embeddings_ln=base.embeddings.LayerNorm, classifier=_classifier(model))
    build = _mpnet_layer if family == "mpnet" else _bert_layer
    layers = [build(i, b) for i, b in enumerate(base.encoder.layer)]
    pooler = getattr(base, "pooler", None)
    return Anatomy(family, "post", "mpnet" if family == "mpnet" else "interface", base, layers, hidden, heads,
                   embeddings=base.embeddings, embeddings_ln=base.embeddings.LayerNorm,
                   embeddings_projection=getattr(base, "embeddings_project", None),
                   pooler=pooler, pooler_dense=getattr(pooler, "dense", None), classifier=_classifier(model))


def anatomy(model: nn.Module) -> Anatomy:
    """The roles of ``model`` (a supported Hugging Face encoder or OPT decoder, with or without a head)."""
    family = _family(model)
    try:
        anat = _build(model, family)
    except AttributeError as exc:
        raise ConfigError(f"{type(model).__name__} does not have the module layout of a {family} model "
                          f"({exc}); the book supports the Hugging Face classes of: {', '.join(FAMILIES)}") from None
    if not anat.layers:
        raise ConfigError(f"{type(model).__name__} has no transformer layers")
    for layer in anat.layers:
        layer.heads = anat.heads
    anat.weights = _weights(model)
    return anat


def module_names(model: nn.Module) -> dict:
    """``id(module) -> path`` for naming weight nodes."""
    return {id(m): n for n, m in model.named_modules()}
