"""Tiny random models shared by the unit tests (seconds to build, no downloads)."""

import torch


def tiny_classifier(seed: int = 0, layers: int = 2):
    """A random BERT classifier: vocabulary 50, hidden 16, 2 heads, FFN 32, 2 labels, in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg).eval()
