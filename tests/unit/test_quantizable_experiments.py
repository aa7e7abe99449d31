"""The Quantizable Transformers experiment helpers on a tiny model (seconds)."""

import math

import torch

from outlierbook.data.corpus import bible_verses
from outlierbook.experiments import quantizable as qx
from outlierbook.models.attention_variants import AttentionVariant
from outlierbook.models.pretrain import PretrainConfig, token_blocks
from outlierbook.models.tokenizer import train_tokenizer


def tiny_corpus(n_texts, vocab_size, n_test, seq_len=16):
    """A tokenizer trained on the first Bible verses, and (train, test) blocks of seq_len tokens."""
    texts = bible_verses()[:n_texts]
    tok = train_tokenizer(texts, vocab_size=vocab_size, cache=False)
    blocks = token_blocks(tok, texts, seq_len)
    return tok, blocks[:-n_test], blocks[-n_test:]


def test_live_rows_train_and_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    tok, train, test = tiny_corpus(1500, 400, 16)
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
        assert hist["track"][-1]["live_rows"] == 1.0  # vanilla softmax never outputs exact zeros
        ev = qx.evaluate_trained(model, cfg, tok, train, test, calib_batches=2, batch_size=8, ptq_seeds=(0, 1),
                                 act_estimators=["running_minmax", ("percentile", {"p": 99.9})])
        assert all(math.isfinite(ev[k]) for k in ("ppl_fp", "ppl_w8a8", "avg_kurtosis"))
        assert ev["ppl_w8a8"] != ev["ppl_fp"] and ev["ppl_w8a8_std"] > 0
        per = {k: v for k, v in ev.items() if k.startswith("ppl_w8a8/")}
        assert set(per) == {"ppl_w8a8/running_minmax", "ppl_w8a8/percentile:99.9"}
        assert ev["ppl_w8a8"] == min(per.values()) and per[f"ppl_w8a8/{ev['w8a8_estimator']}"] == ev["ppl_w8a8"]


def test_calibration_subsets_differ_by_seed_and_summary_statistics():
    import pytest

    from outlierbook.errors import ConfigError

    blocks = torch.arange(40 * 4).view(40, 4)
    a, b = qx.calibration_subset(blocks, 2, 5, seed=0), qx.calibration_subset(blocks, 2, 5, seed=1)
    assert len(a) == 2 and a[0]["input_ids"].shape == (5, 4)
    assert not torch.equal(a[0]["input_ids"], b[0]["input_ids"])
    assert torch.equal(a[0]["input_ids"], qx.calibration_subset(blocks, 2, 5, seed=0)[0]["input_ids"])
    with pytest.raises(ConfigError):
        qx.calibration_subset(blocks, 0, 5, seed=0)
    rows = [{"label": "v", "ppl_fp": 2.0, "max_inf_norm": 10.0, "avg_kurtosis": 3.0, "ppl_w8a8": 4.0},
            {"label": "v", "ppl_fp": 4.0, "max_inf_norm": 30.0, "avg_kurtosis": 5.0, "ppl_w8a8": 6.0},
            {"label": "c", "ppl_fp": 3.0, "max_inf_norm": 1.0, "avg_kurtosis": 1.0, "ppl_w8a8": 3.0}]
    s = qx.mean_std(rows).set_index("label")
    assert s.loc["v", "ppl_fp"] == 3.0 and s.loc["v", "ppl_fp_std"] == pytest.approx(math.sqrt(2))
    assert s.loc["c", "max_inf_norm_std"] == 0.0 and s.loc["v", "n_seeds"] == 2
    assert qx.relative_log_ppl(math.e, math.e ** 2) == pytest.approx(2.0)


def test_evaluation_is_stored_beside_the_checkpoint_and_reused_only_for_the_same_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    tok, train, test = tiny_corpus(800, 300, 8)
    cfg = PretrainConfig(kind="clm", hidden=16, layers=1, heads=2, ffn=32, seq_len=16, steps=4, batch_size=4,
                         dropout=0.0, checkpoint_every=4, track_every=4)
    kw = dict(calib_batches=1, batch_size=4, ptq_seeds=(0,), act_estimators=["running_minmax"])
    first, _ = qx.train_and_evaluate("m", cfg, tok, train, test, progress=False, **kw)
    assert len(list(cfg.directory().glob("eval-*.json"))) == 1

    def no_evaluation(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(qx, "evaluate_trained", no_evaluation)
    again, _ = qx.train_and_evaluate("m", cfg, tok, train, test, progress=False, **kw)
    assert again == first  # floats survive the JSON round trip exactly
    import pytest

    with pytest.raises(AssertionError, match="evaluated again"):  # other settings: a new evaluation
        qx.train_and_evaluate("m", cfg, tok, train, test, progress=False, **{**kw, "ptq_seeds": (0, 1)})
    with pytest.raises(AssertionError, match="evaluated again"):  # other evaluation blocks: a new evaluation
        qx.train_and_evaluate("m", cfg, tok, train, test[:4], progress=False, **kw)


def test_stored_tables_rebuild_seed_means_and_figure_rows_from_a_stored_run():
    import pandas as pd
    import pytest

    m = {"max_inf_norm": 1.0, "avg_kurtosis": 3.0, "ppl_w8a8": 5.0}
    table = pd.DataFrame([
        {"experiment": "live_rows_at_init", "alpha": 1.0},
        {"experiment": "table2", "label": "v", "seed": 0, "ppl_fp": 2.0, **m},
        {"experiment": "table2", "label": "v", "seed": 1, "ppl_fp": 4.0, **m},
        {"experiment": "table2", "label": "c", "seed": 0, "ppl_fp": 9.0, **m},
        {"experiment": "figure6", "label": "T=32 α=2", "seq_len": 32, "alpha": 2.0, "ppl_fp": 7.0,
         "relative log-ppl": 1.1, **m},
    ])
    out = qx.stored_tables(table)
    assert set(out) == {"table2", "figure6"}  # experiments absent from the run are left out
    assert list(out["table2"].index) == ["v", "c"] and out["table2"].loc["v", "ppl_fp"] == pytest.approx(3.0)
    assert out["table2"].loc["v", "n_seeds"] == 2
    assert out["figure6"]["seq_len"].tolist() == [32] and "experiment" not in out["figure6"]
    assert qx.stored_tables(pd.DataFrame()) == {}


def test_live_row_hooks_go_when_the_block_ends():
    from outlierbook.models.attention_variants import attention_modules, live_row_shares
    from outlierbook.models.pretrain import build_model

    tok, train, _ = tiny_corpus(300, 300, 4)
    cfg = PretrainConfig(hidden=32, layers=2, heads=2, ffn=64, seq_len=16)
    model = build_model(cfg, len(tok), tok.pad_token_id).eval()
    ids = train[:2]
    try:
        with live_row_shares(model) as shares:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert len(shares) == 2 and shares == [1.0, 1.0]
    assert all(not m._forward_hooks for m in attention_modules(model))
