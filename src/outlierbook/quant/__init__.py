"""Simulated (fake) quantization: the quantizer, range estimators, named nodes in a transformer."""
