r"""A recipe: one frozen, validated description of a quantized model.

=================  ===========================================================================
``bits``           :class:`~outlierbook.recipe.bits.Bits` — ``"W8A8"``, ``"W6A6E8"``, ``"6-6-6"``
``placement``      ``"bondarenko"`` (every Linear output, sum, LN, softmax in/out) or ``"os"``
                   (the FasterTransformer positions: the inputs of every matrix product)
``weight_axis``    ``0``: per output channel; ``None``: per tensor
``act_estimator``  range estimator of the activation nodes (name or ``(name, kwargs)``)
``overrides``      selector -> setting, applied in order (see :class:`~outlierbook.quant.nodes.QuantizedModel`)
``transforms``     functions of the FP model, applied in order to a copy (:mod:`.transforms`)
``calibrators``    range setting, in stage order (:mod:`.calibrators`); default: one :class:`Ranges`
=================  ===========================================================================

:meth:`Recipe.validate` raises every conflict it can find before any model is copied or run: an
unsupported architecture, an unknown node, a group count that does not divide a node's width,
per-channel ranges on an attention matrix, Token-Wise Clipping on a per-group node, calibrators out of
stage order, a transform that does not apply. :func:`~outlierbook.recipe.quantize.quantize` runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import ConfigError
from ..models.anatomy import Anatomy, anatomy
from ..quant.estimators import make_estimator
from ..quant.nodes import (OPT_PLACEMENTS, PLACEMENTS, NodeSettings, candidate_names, check_selectors, kind_of,
                           quantize_model, settings_for)
from ..quant.quantizer import check_bits
from .bits import Bits
from .calibrators import AFTER, BEFORE, RANGES, Calibrator, Ranges
from .transforms import Transform

EMBEDDING_WEIGHTS = "weight:*embeddings.*"
_STAGE_ORDER = {BEFORE: 0, RANGES: 1, AFTER: 2}


@dataclass(frozen=True)
class Recipe:
    bits: Bits = Bits(8, 8, 8)
    placement: str = "bondarenko"
    weight_axis: int | None = 0
    act_estimator: object = "current_minmax"
    weight_estimator: object = "current_minmax"
    overrides: object = field(default_factory=dict)
    transforms: tuple = ()
    calibrators: tuple = (Ranges(),)
    scale_rule: str = "qualcomm"

    def __post_init__(self):
        object.__setattr__(self, "bits", Bits.parse(self.bits))
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))
        object.__setattr__(self, "transforms", tuple(self.transforms))
        object.__setattr__(self, "calibrators", tuple(self.calibrators))
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"unknown placement {self.placement!r}; use one of: {', '.join(PLACEMENTS)}")
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise ConfigError(f"{t!r} is not a transform; use e.g. GammaMigration()")
        for c in self.calibrators:
            if not isinstance(c, Calibrator):
                raise ConfigError(f"{c!r} is not a calibrator; use e.g. Ranges() or TokenWiseClipping()")
        kinds = [type(t).__name__ for t in self.transforms]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ConfigError(f"{', '.join(twice)} appears twice among the transforms; apply each transform once")
        stages = [c.stage for c in self.calibrators]
        if stages.count(RANGES) != 1:
            raise ConfigError("a recipe sets ranges exactly once: include one Ranges() among its calibrators")
        if stages != sorted(stages, key=_STAGE_ORDER.get):
            raise ConfigError("calibrators run in stage order: PegPermutation before Ranges, Token-Wise Clipping "
                              "and EasyQuant after; got " + ", ".join(c.name for c in self.calibrators))
        make_estimator(self.act_estimator)
        make_estimator(self.weight_estimator)

    # ------------------------------------------------------------------ derived
    @property
    def mode(self) -> tuple[bool, bool]:
        """The quantize switches after calibration: (weights, activations)."""
        return self.bits.weights is not None, self.bits.acts is not None

    @property
    def node_config(self) -> dict:
        config = {}
        if self.bits.embeddings != self.bits.weights:
            config[EMBEDDING_WEIGHTS] = "fp32" if self.bits.embeddings is None else self.bits.embeddings
        config.update(self.overrides)
        return config

    @property
    def label(self) -> str:
        parts = [t.name for t in self.transforms] + [c.name for c in self.calibrators if c.stage != RANGES]
        return "+".join(parts + [self.bits.name])

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def wrap(self, model):
        """The quantization nodes of this recipe on ``model`` (not yet calibrated)."""
        return quantize_model(model, placement=self.placement, weight_bits=self.bits.weights, act_bits=self.bits.acts,
                              act_estimator=self.act_estimator, weight_estimator=self.weight_estimator,
                              weight_axis=self.weight_axis, scale_rule=self.scale_rule, config=self.node_config)

    # ------------------------------------------------------------------ validation
    def node_settings(self, anat: Anatomy) -> dict:
        """Node name -> :class:`NodeSettings` for every node of the placement (computed, not wrapped)."""
        names = candidate_names(anat)
        config = self.node_config
        check_selectors(config, names, len(anat.layers))
        act = NodeSettings(bits=self.bits.acts, symmetric=False, estimator=self.act_estimator, scale_rule=self.scale_rule)
        weight = NodeSettings(bits=self.bits.weights, symmetric=True, estimator=self.weight_estimator,
                              axis=self.weight_axis, scale_rule=self.scale_rule)
        kinds = (PLACEMENTS if anat.post_ln else OPT_PLACEMENTS)[self.placement]
        out = {}
        for name, (kind, layer) in names["act"].items():
            if kind in kinds:
                out[name] = settings_for(name, kind, layer, act, config)
        for name in names["weight"]:
            out[name] = settings_for(name, "weight", None, weight, config)
        return out

    def validate(self, model) -> Anatomy:
        """Raise ConfigError for every conflict this recipe has with ``model``; returns its anatomy."""
        anat = anatomy(model)
        settings = self.node_settings(anat)
        for name, s in settings.items():
            if s.bits is None:
                continue
            check_bits(s.bits)
            make_estimator(s.estimator)
            if name.startswith("weight:") or s.axis is None:
                continue
            kind = kind_of(name)
            if kind in ("attention.scores", "attention.probs"):
                raise ConfigError(f"{name}: per-channel/group ranges are not supported on attention matrices; "
                                  "leave that kind per tensor")
            if s.groups is not None:
                width = _width(anat, name, kind)
                if width is not None and width % s.groups:
                    raise ConfigError(f"{name}: {s.groups} groups do not divide its width {width}; use a divisor "
                                      f"(e.g. outlierbook.quant.granularity.group_counts({width}))")
        for t in self.transforms:
            t.check(anat)
        for c in self.calibrators:
            c.check(self, anat, settings)
        return anat


def _width(anat: Anatomy, name: str, kind: str) -> int | None:
    layer = anat.layers[int(name[5:].split(".", 1)[0])] if name.startswith("layer") else None
    if kind in ("ffn.gelu", "ffn.act"):
        return layer.ffn_in.out_features
    if kind.startswith("embeddings.") and anat.embeddings_ln is not None:
        return anat.embeddings_ln.normalized_shape[0]
    if kind in ("pooler.output", "classifier.output"):
        return None
    return anat.hidden
