"""Model loading and task evaluation."""
