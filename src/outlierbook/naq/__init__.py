"""Nonlinearity-aware quantization (NAQ): gradients, the low-precision path, wrappers, MACs and energy."""
