"""lfp: measure how accurately a fine-tuned LLM's activations encode its fine-tuning feedback."""

__version__ = "0.1.0"
