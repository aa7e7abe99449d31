"""Benchmarks: speed and size ratios measured side by side in one run (never timed tests)."""
