r"""Transforms: functions of the FP model that return a **new** model computing the same function.

A transform never edits the model it is given (it edits a deep copy), so a recipe can be applied to
the same FP model again and again, and a failing transform leaves the caller's model as it was.
``check(anatomy)`` raises a :class:`~outlierbook.errors.ConfigError` before any copy is made when the
transform does not apply to a model (Gamma Migration on a pre-LN decoder, say).

- :class:`GammaMigration` — Outlier Suppression's γ migration (:mod:`outlierbook.methods.gamma_migration`):
  exact in FP, it moves each LayerNorm's γ into the next Linear layers and the residual shortcut.
- :class:`AttentionVariantTransform` — Quantizable Transformers' clipped softmax and/or gate installed on
  a copy; not function-preserving in general (a pretrained model computes a different function with a
  clipped softmax), which its ``exact`` flag says.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..models.anatomy import Anatomy


class Transform:
    name = "transform"
    exact = True  # the new model computes the same function (tested for every exact transform)

    def check(self, anat: Anatomy) -> None:
        """Raise ConfigError if the transform does not apply to a model of this anatomy."""

    def apply(self, model: nn.Module) -> None:
        """Edit ``model`` in place (called on a copy)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module) -> nn.Module:
        from ..models.anatomy import anatomy

        self.check(anatomy(model))
        new = copy.deepcopy(model)
        self.apply(new)
        return new


@dataclass(frozen=True)
class GammaMigration(Transform):
    """Migrate γ of the embedding LN, every MHA-LN and every FFN-LN but the last (each can be switched off)."""

    embedding_ln: bool = True
    mha_ln: bool = True
    ffn_ln: bool = True
    name = "gamma_migration"

    def check(self, anat: Anatomy) -> None:
        if not anat.post_ln:
            raise ConfigError(f"Gamma Migration needs a post-LN encoder; the {anat.family} model is pre-LN "
                              "(its LayerNorms feed the branches, not the residual stream)")
        lns = ([anat.embeddings_ln] if self.embedding_ln else []) + [
            ln for layer in anat.layers for ln, on in ((layer.attention_ln, self.mha_ln), (layer.ffn_ln, self.ffn_ln)) if on]
        for ln in lns:
            if ln.weight.detach().abs().min() < 1e-6:
                raise ConfigError("a LayerNorm has |γ| < 1e-6, so β/γ would blow up; Gamma Migration needs γ ≠ 0 "
                                  "(switch that LayerNorm off, e.g. GammaMigration(ffn_ln=False))")

    def apply(self, model: nn.Module) -> None:
        from ..methods.gamma_migration import migrate_gamma

        migrate_gamma(model, ffn_ln=self.ffn_ln, mha_ln=self.mha_ln, embedding_ln=self.embedding_ln)


@dataclass(frozen=True)
class AttentionVariantTransform(Transform):
    """Install an :class:`~outlierbook.models.attention_variants.AttentionVariant` on a copy of the model."""

    variant: object = None
    name = "attention_variant"
    exact = False

    def check(self, anat: Anatomy) -> None:
        from ..models.attention_variants import AttentionVariant

        if not isinstance(self.variant, AttentionVariant):
            raise ConfigError("AttentionVariantTransform needs an AttentionVariant, e.g. "
                              "AttentionVariant(softmax='clipped', gamma=-0.03)")
        if self.variant.gate is not None and anat.hidden % anat.heads:
            raise ConfigError(f"a gate needs the width {anat.hidden} to be divisible by the {anat.heads} heads")

    def apply(self, model: nn.Module) -> None:
        from ..models.attention_variants import install

        install(model, self.variant)
