"""Data loaders: GLUE tasks (shared files or the hub) and language-model text."""
