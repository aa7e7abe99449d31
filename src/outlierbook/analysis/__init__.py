"""Measurements on models: quantization sensitivity per node, outlier statistics."""
