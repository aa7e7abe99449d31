r"""Transforms: functions of the FP model that return a **new** model computing the same function.

A transform never edits the model it is given (it edits a deep copy), so a recipe can be applied to
the same FP model again and again, and a failing transform leaves the caller's model as it was.
``check(anatomy)`` raises a :class:`~outlierbook.errors.ConfigError` before any copy is made when the
transform does not apply to a model (Gamma Migration on a pre-LN decoder, say).

- :class:`GammaMigration` — Outlier Suppression's γ migration (:mod:`outlierbook.methods.gamma_migration`):
  exact in FP, it moves each LayerNorm's γ into the next Linear layers and the residual shortcut.
- :class:`SmoothQuant` — SmoothQuant's per-channel smoothing, measured on calibration data; on a post-LN
  encoder exact only with the shortcut rescaled too (:mod:`outlierbook.methods.smoothing`).
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
    needs_batches = False  # True: the transform measures the FP model on calibration data

    def check(self, anat: Anatomy) -> None:
        """Raise ConfigError if the transform does not apply to a model of this anatomy."""

    def apply(self, model: nn.Module, batches=None) -> None:
        """Edit ``model`` in place (called on a copy)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, batches=None) -> nn.Module:
        from ..models.anatomy import anatomy

        self.check(anatomy(model))
        if self.needs_batches and not batches:
            raise ConfigError(f"the {self.name} transform measures the model on calibration batches; pass them")
        new = copy.deepcopy(model)
        self.apply(new, batches)
        return new


@dataclass(frozen=True)
class GammaMigration(Transform):
    """Migrate γ of the embedding LN, every MHA-LN and every FFN-LN but the last (each can be switched off).

    ``selective=True`` migrates only the LayerNorms whose γ amplifies their outlier dimensions, measured
    on the calibration batches (:func:`~outlierbook.methods.gamma_migration.outlier_gammas`)."""

    embedding_ln: bool = True
    mha_ln: bool = True
    ffn_ln: bool = True
    selective: bool = False
    name = "gamma_migration"

    @property
    def needs_batches(self) -> bool:
        return self.selective

    def check(self, anat: Anatomy) -> None:
        if not anat.post_ln:
            raise ConfigError(f"Gamma Migration needs a post-LN encoder; the {anat.family} model is pre-LN "
                              "(its LayerNorms feed the branches, not the residual stream)")
        from ..methods.gamma_migration import layernorm_readers

        for label, ln, _ in layernorm_readers(anat, self.embedding_ln, self.mha_ln, self.ffn_ln):
            if ln.weight.detach().abs().min() < 1e-6:
                raise ConfigError(f"{label} has |γ| < 1e-6, so β/γ would blow up; Gamma Migration needs γ ≠ 0 "
                                  "(switch that LayerNorm off, e.g. GammaMigration(ffn_ln=False))")

    def apply(self, model: nn.Module, batches=None) -> None:
        from ..methods.gamma_migration import migrate_gamma, outlier_gammas

        only = None
        if self.selective:
            only = {r["layernorm"] for r in outlier_gammas(model, batches) if r["amplifies"]}
        migrate_gamma(model, ffn_ln=self.ffn_ln, mha_ln=self.mha_ln, embedding_ln=self.embedding_ln, only=only)


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

    def apply(self, model: nn.Module, batches=None) -> None:
        from ..models.attention_variants import install

        install(model, self.variant)


@dataclass(frozen=True)
class SmoothQuant(Transform):
    """SmoothQuant's per-channel smoothing of every LayerNorm → readers pair (:mod:`outlierbook.methods.smoothing`),
    measured on the calibration batches. ``rescale_shortcut=False`` is ``smooth_ln_fcs`` as written for
    pre-LN decoders — not exact on a post-LN encoder, hence ``exact`` follows it."""

    alpha: float = 0.5
    rescale_shortcut: bool = True
    name = "smoothquant"
    needs_batches = True

    @property
    def exact(self) -> bool:
        return self.rescale_shortcut

    def check(self, anat: Anatomy) -> None:
        if not anat.post_ln:
            raise ConfigError("this SmoothQuant transform is written for post-LN encoders")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SmoothQuant's alpha must lie in [0, 1], got {self.alpha}")

    def apply(self, model: nn.Module, batches=None) -> None:
        from ..methods.smoothing import smooth

        smooth(model, batches, self.alpha, self.rescale_shortcut)
