"""Recipes: one validated description of a quantized model, and the one front door ``quantize``."""

from .bits import Bits
from .calibrators import EasyQuant, PegPermutation, Ranges, TokenWiseClipping, preserved
from .quantize import quantize, transformed
from .recipe import EMBEDDING_WEIGHTS, Recipe
from .saved import load_quantized, save_quantized
from .transforms import AttentionVariantTransform, GammaMigration, SmoothQuant

__all__ = ["Bits", "Recipe", "quantize", "transformed", "Ranges", "PegPermutation", "TokenWiseClipping", "EasyQuant",
           "GammaMigration", "SmoothQuant", "AttentionVariantTransform", "preserved", "EMBEDDING_WEIGHTS",
           "save_quantized", "load_quantized"]
