"""The Quantizable Transformers experiment helpers on a tiny model (seconds)."""

import math

import torch

from outlierbook.data.corpus import bible_verses
from outlierbook.experiments import quantizable as qx
from outlierbook.models.attention_variants import AttentionVariant
from outlierbook.models.pretrain import PretrainConfig, token_blocks
from outlierbook.models.tokenizer import train_tokenizer


def test_live_rows_train_and_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    texts = bible_verses()[:1500]
    tok = train_tokenizer(texts, vocab_size=400, cache=False)
    blocks = token_blocks(tok, texts, 16)
    train, test = blocks[:-16], blocks[-16:]
    base = dict(hidden=32, layers=2, heads=2, ffn=64, seq_len=16, steps=8, batch_size=8, lr=3e-3, dropout=0.0,
                checkpoint_every=8, track_every=4)
    vanilla = PretrainConfig(**base)
    assert qx.live_row_share_at_init(vanilla, tok, train) == 1.0
    dead = PretrainConfig(**base, variant=AttentionVariant(softmax="clipped", alpha=4.0, seq_len=16))
    assert qx.live_row_share_at_init(dead, tok, train) < 0.5  # α/T far above 1/T: most rows clipped to zero
    for kind in ("mlm", "clm"):
        cfg = PretrainConfig(**{**base, "kind": kind})
        model, hist = qx.train_with_tracking(cfg, tok, train, test, progress=False)
        assert [t["step"] for t in hist["track"]] == [4, 8] and hist["track"][0]["max_inf_norm"] > 0
        ev = qx.evaluate_trained(model, cfg, tok, train, test, calib_batches=2, batch_size=8)
        assert all(math.isfinite(ev[k]) for k in ("ppl_fp", "ppl_w8a8", "avg_kurtosis"))
        assert ev["ppl_w8a8"] != ev["ppl_fp"]
