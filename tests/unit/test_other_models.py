"""A chapter on a model other than the embedded one: a saved local BERT of width 64 (divisible by neither 3
nor 6, so the primer's group counts must come from the width's divisors)."""

import json
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_the_primer_runs_on_a_local_bert_of_width_64(tmp_path):
    from transformers import BertConfig, BertModel

    from outlierbook.models.load import load_tokenizer

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, max_position_embeddings=512))
    folder = tmp_path / "bert-width-64"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    env = {**os.environ, "OUTLIERBOOK_RESULTS": str(tmp_path / "results"), "OUTLIERBOOK_TEST": "1"}
    done = subprocess.run([sys.executable, "-m", "outlierbook", "run", "01_quantization_primer", "--profile", "quick",
                           "--set", f"model={folder}"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "results" / "01_quantization_primer" / "quick" / "metrics.json").read_text())
    assert "check/permutation_lowered_6bit_mse_K4" in metrics and "check/permutation_lowered_6bit_mse_K8" in metrics
