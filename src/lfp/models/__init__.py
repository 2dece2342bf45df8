"""Models: loading (hub, local path, GGUF, tiny), tokens and activation capture."""
