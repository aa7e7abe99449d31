"""Retrofitting the 2023 fix onto a pretrained encoder: configs, the common start, the no-op statistics, and one
tiny retrofit run that trains, resumes without retraining and is evaluated like chapter 6's models."""

import pytest
import torch
from transformers import BertConfig, BertModel

from outlierbook.errors import ConfigError
from outlierbook.experiments import retrofit as rx


def test_the_four_variants_and_their_configs():
    v = rx.variants(128)
    assert list(v) == ["vanilla", "clipped softmax", "gated attention", "softmax + 1"]
    assert v["clipped softmax"].effective_gamma == pytest.approx(-0.025)
    assert v["gated attention"].gate_scale == 2.0 and v["softmax + 1"].softmax == "plus_one"
    cfgs = rx.configs("some-encoder", steps=10, freeze_encoder_steps=4, seq_len=128)
    assert {c.init for c in cfgs.values()} == {"some-encoder"} and len({c.key() for c in cfgs.values()}) == 4
    start = rx.start_config(cfgs["gated attention"])
    assert start.variant == v["vanilla"] and start.steps == start.freeze_encoder_steps == 4
    with pytest.raises(ConfigError, match="not a retrofit setting: init, wobble"):
        rx.configs("x", init="y", wobble=1)
    with pytest.raises(ConfigError, match="freeze_encoder_steps >= 1"):
        rx.start_config(rx.configs("x", steps=4)["vanilla"])


def _encoder(folder, vocab):
    torch.manual_seed(3)
    BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16)).save_pretrained(folder)
    return str(folder)


@torch.no_grad()
def test_noop_statistics_measure_attention_on_delimiters(tok_and_blocks, tmp_path):
    from outlierbook.models.pretrain import retrofit_model

    tok, blocks = tok_and_blocks
    model = retrofit_model(_encoder(tmp_path / "enc", len(tok))).eval()
    batch = {"input_ids": blocks[:4], "attention_mask": torch.ones_like(blocks[:4])}
    delims = rx.delimiter_ids(tok)
    assert tok.convert_tokens_to_ids("</s>") in delims  # the corpus tokenizer joins documents with </s>
    s = rx.noop_statistics(model, batch, delims)
    share = float(torch.isin(blocks[:4], torch.tensor(sorted(delims))).float().mean())
    assert 0.0 < s["delimiter_mass"] < 1.0 and s["delimiter_value_norm_ratio"] > 0
    assert abs(s["delimiter_mass"] - share) < 0.5  # a random model attends about uniformly
    every = {"input_ids": torch.full_like(blocks[:2], next(iter(delims))), "attention_mask": torch.ones_like(blocks[:2])}
    assert rx.noop_statistics(model, every, delims)["delimiter_mass"] == pytest.approx(1.0)


def test_a_retrofit_run_tracks_resumes_and_is_evaluated(tok_and_blocks, tmp_path, monkeypatch):
    tok, blocks = tok_and_blocks
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "cache"))
    encoder = _encoder(tmp_path / "enc", len(tok))
    cfg = rx.configs(encoder, steps=4, batch_size=4, seq_len=16, lr=1e-3, freeze_encoder_steps=2, track_every=2,
                     checkpoint_every=2, gamma_ramp=0.5)["clipped softmax"]
    train, test = blocks[:200], blocks[200:240]
    eval_kw = dict(calib_batches=1, batch_size=8)
    row, hist = rx.retrofit_and_evaluate("clipped softmax", cfg, tok, train, test, progress=False, **eval_kw)
    assert [t["step"] for t in hist["track"]] == [2, 4]
    for key in ("max_inf_norm", "avg_kurtosis", "live_rows", "delimiter_mass", "delimiter_value_norm_ratio"):
        assert key in hist["track"][-1]
    assert row["softmax"] == "clipped" and {"ppl_fp", "ppl_w8a8", "max_inf_norm"} <= set(row)
    calls = []
    monkeypatch.setattr(rx, "tracker", lambda *a, **k: lambda m: calls.append(1) or {})
    again, hist2 = rx.retrofit_and_evaluate("clipped softmax", cfg, tok, train, test, progress=False, **eval_kw)
    assert calls == [] and again == row and hist2 == hist  # the finished run is loaded, not trained again


def test_tracking_quality_logs_fp_and_w8a8_without_changing_the_training(tok_and_blocks, tmp_path, monkeypatch):
    """FP and W8A8 perplexity every ``track_every`` steps: a run that logs them trains the same model (same losses,
    same evaluation) as one that does not, and is stored under another key (its history differs)."""
    from dataclasses import replace

    tok, blocks = tok_and_blocks
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "cache"))
    encoder = _encoder(tmp_path / "enc", len(tok))
    plain = rx.configs(encoder, steps=4, batch_size=4, seq_len=16, lr=1e-3, freeze_encoder_steps=2, track_every=2,
                       checkpoint_every=2)["vanilla"]
    tracked = replace(plain, track_quality=True)
    assert tracked.key() != plain.key() and "track_quality" not in str(plain.key())
    train, test = blocks[:200], blocks[200:240]
    eval_kw = dict(calib_batches=1, batch_size=8, act_estimators=["running_minmax", ["percentile", {"p": 99.0}]])
    row, hist = rx.retrofit_and_evaluate("vanilla", plain, tok, train, test, progress=False, **eval_kw)
    row_q, hist_q = rx.retrofit_and_evaluate("vanilla", tracked, tok, train, test, progress=False, **eval_kw)
    assert hist_q["loss"] == hist["loss"] and row_q == row  # the quality tracker did not disturb training
    assert "ppl_fp" not in hist["track"][-1]
    last = hist_q["track"][-1]
    assert last["step"] == 4 and last["ppl_fp"] > 1 and last["ppl_w8a8"] > 1
    assert last["w8a8_estimator"] in ("running_minmax", "percentile:99.0")


def test_the_task_quality_tracker_scores_fp_and_the_best_w8a8_on_a_fixed_subset(tiny_bert, char_tokenizer):
    from outlierbook.data.glue import TaskData
    from outlierbook.models.tasks import TaskSetup

    model, batch = tiny_bert
    texts = ["a good film", "bad", "not bad at all", "fine", "dull", "superb", "meh", "ok"]
    data = TaskData("sst2", "dev", texts, None, [1, 0, 1, 1, 0, 1, 0, 1])
    setup = TaskSetup("sst2", model, char_tokenizer, data, data, "accuracy")
    quality = rx.task_quality(setup, [batch], n=5, act_estimators=["running_minmax", ["percentile", {"p": 99.0}]])
    model.train()
    out = quality(model)
    assert set(out) == {"fp", "w8a8", "w8a8_estimator"} and 0 <= out["w8a8"] <= 100
    assert out["fp"] == TaskSetup("sst2", model, char_tokenizer, _subset(data, 5), data, "accuracy").score()
    assert quality(model) == out  # a fixed subset and calibration: the same model scores the same


def _subset(data, n):
    from outlierbook.models.tasks import subsample

    return subsample(data, n, seed=0)


def test_qt7_reads_every_pi_init_and_the_control_at_the_extra_runs_seeds():
    """The confound of the first full run: the extra π_init values ran seed 0 only, the control was averaged
    over seeds 0 and 1, and seed 0 had the higher perplexity everywhere. At the same seeds it cannot decide."""
    from outlierbook.experiments import qt_rules as rules

    ends = [{"label": "vanilla", "seed": 0, "ppl_fp": 125.0, "max_inf_norm": 180.0},
            {"label": "vanilla", "seed": 1, "ppl_fp": 109.0, "max_inf_norm": 181.0},
            {"label": "gated attention", "seed": 0, "ppl_fp": 123.0, "max_inf_norm": 179.0},
            {"label": "gated attention", "seed": 1, "ppl_fp": 111.0, "max_inf_norm": 180.0}]
    gates = [{"pi_init": 0.25, "seed": 0, "ppl_fp": 123.0, "max_inf_norm": 179.1},
             {"pi_init": 0.9, "seed": 0, "ppl_fp": 123.5, "max_inf_norm": 179.2},
             {"pi_init": 0.5, "seed": float("nan"), "ppl_fp": 117.0, "max_inf_norm": 179.5}]  # an old mean row
    table, control = rx.pi_init_table(gates, ends, metrics=["ppl_fp", "max_inf_norm"])
    assert list(table.index) == [0.25, 0.5, 0.9] and (table["n_seeds"] == 1).all()
    assert table.loc[0.5, "ppl_fp"] == 123.0 and control["ppl_fp"] == 125.0  # seed 0 only
    rows = table.reset_index().to_dict("records")
    assert rules.robust_pi_inits(rows, control) == [0.25, 0.5, 0.9]
    two_seed_control = {"ppl_fp": 117.0, "max_inf_norm": 180.5}  # the first run's comparison
    assert rules.robust_pi_inits(gates[:2], two_seed_control) == []  # seed 0's perplexity, not π_init, decides
    with pytest.raises(ConfigError, match="no π_init runs with a training seed"):
        rx.pi_init_table(gates[2:], ends, metrics=["ppl_fp"])
    with pytest.raises(ConfigError, match="no end-of-retrofit rows of vanilla at seeds \\[0\\]"):
        rx.pi_init_table(gates, ends[2:], metrics=["ppl_fp"])


def test_a_stored_qt7_verdict_is_shown_beside_the_same_rows_read_at_matching_seeds():
    """The chapter reads a stored run twice: its verdict as stored (and the comparison it used), and the same
    rows at matching seeds. A run stored before matching seeds names its confounded comparison."""
    import pandas as pd

    def row(experiment, seed, ppl, norm, **more):
        return {"experiment": experiment, "seed": seed, "ppl_fp": ppl, "max_inf_norm": norm, "avg_kurtosis": 5000.0,
                "ppl_w8a8": ppl + 5, **more}

    table = pd.DataFrame([row("mlm", 0, 125.0, 180.0, label="vanilla", stage="end"),
                          row("mlm", 1, 109.0, 181.0, label="vanilla", stage="end"),
                          row("mlm", 0, 123.0, 179.0, label="gated attention", stage="end"),
                          row("mlm", 1, 111.0, 180.0, label="gated attention", stage="end"),
                          row("mlm", 0, 130.0, 150.0, label="start", stage="start"),
                          row("pi_init", 0, 123.0, 179.1, pi_init=0.25),
                          row("pi_init", 0, 123.5, 179.2, pi_init=0.9)])
    old = [{"id": "QT-7", "holds": False, "ours": {"π_init with lower inf-norm and FP ppl within 5 %": []}}]
    read = rx.stored_qt7_readings(table, old, [0, 1])
    assert read == {"stored verdict": False,
                    "its comparison": "π_init runs at seeds [0], the control averaged over seeds [0, 1]",
                    "same rows, matching seeds": {"π_init that pass": [0.25, 0.5, 0.9], "holds": True}}
    new = [{"id": "QT-7", "holds": True, "ours": {"training seeds": [0]}}]
    assert rx.stored_qt7_readings(table, new, [0, 1])["its comparison"] == "every π_init and the control at seeds [0]"
    calm = table.assign(avg_kurtosis=3.8)  # a control without outliers: not testable, not "does not hold"
    assert rx.stored_qt7_readings(calm, new, [0, 1])["same rows, matching seeds"]["holds"] is None


def test_a_variant_needs_a_clipped_softmax_to_ramp_and_keys_of_plain_runs_do_not_move():
    from outlierbook.models.attention_variants import AttentionVariant
    from outlierbook.models.tasks import FinetuneConfig

    with pytest.raises(ConfigError, match="gamma_ramp ramps a clipped softmax in"):
        FinetuneConfig(gamma_ramp=0.1)
    plain = FinetuneConfig(task="sst2", steps=2105)
    assert plain.key() == "steps2105-seed0-565845a5a5"  # the stored full run's head keeps its cache key
    gated = FinetuneConfig(task="sst2", steps=2105, variant=AttentionVariant(gate="linear"))
    assert gated.key() != plain.key()


@pytest.mark.slow
def test_task_fine_tuning_with_a_variant_tracks_and_comes_back_with_its_gates(tmp_path, monkeypatch):
    """SST-2 retrofit: the embedded model fine-tuned a few steps with the nearly open gate; the tracker runs
    every ``track_every`` steps in eval mode, its log is stored, and the cached model is loaded with the gates
    it trained (not fresh ones)."""
    from safetensors.torch import load_file

    from outlierbook.models.attention_variants import nearly_open_gate
    from outlierbook.models.tasks import FinetuneConfig, finetune_info, get_finetuned

    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    cfg = FinetuneConfig(task="sst2", steps=4, batch_size=4, lr=1e-3, variant=nearly_open_gate(), track_every=2)
    model = get_finetuned(cfg, progress=False, track=lambda m: {"training": m.training})
    assert finetune_info(cfg)["track"] == [{"step": 2, "training": False}, {"step": 4, "training": False}]
    stored = load_file(str(cfg.path() / "model.safetensors"))
    gate = model.bert.encoder.layer[0].attention.self.outlierbook_gate
    key = "bert.encoder.layer.0.attention.self.outlierbook_gate.bias"
    assert torch.equal(gate.bias.detach(), stored[key]) and stored[key].abs().max() > 1e-4  # trained away from
    # logit(0.5) = 0, and loaded as trained


def test_task_configs_ramp_only_the_clipped_softmax_and_refuse_other_settings():
    cfgs = rx.task_configs("all-MiniLM-L6-v2", steps=10, batch_size=4, gamma_ramp=0.2, track_every=5)
    assert [c.gamma_ramp for c in cfgs.values()] == [0.0, 0.2, 0.0, 0.0]
    assert len({c.key() for c in cfgs.values()}) == 4 and all(c.track_every == 5 for c in cfgs.values())
    with pytest.raises(ConfigError, match="not a task retrofit setting: variant, wobble"):
        rx.task_configs(variant=None, wobble=1)


def test_the_task_outcome_scores_fp_and_the_best_w8a8_estimator(tiny_bert, char_tokenizer):
    import types

    from outlierbook.data.glue import TaskData

    model, batch = tiny_bert
    data = TaskData("sst2", "dev", ["a good film", "bad", "not bad at all", "fine"], None, [1, 0, 1, 1])
    scored = []

    def score(m=None):
        with torch.no_grad():
            value = float((m or model)(**batch).logits.sum())
        scored.append(value)
        return value

    setup = types.SimpleNamespace(task="sst2", eval_data=data, tokenizer=char_tokenizer, score=score)
    probe = rx.sentence_probe(setup, n=3)
    assert len(probe) == 3 and all(bool(b["attention_mask"].all()) for b in probe)  # one unpadded sentence each
    out = rx.task_outcome(setup, model, probe, [batch], act_estimators=["running_minmax", ["percentile", {"p": 99.0}]])
    fp, minmax, percentile = scored
    assert out["fp"] == fp and out["max_inf_norm"] > 0 and minmax != percentile
    assert out["w8a8"] == max(minmax, percentile)
    assert out["w8a8_estimator"] == ("running_minmax" if minmax >= percentile else "('percentile', {'p': 99.0})")


def test_the_task_retrofit_data_refuses_a_regression_task_and_has_no_head():
    with pytest.raises(ConfigError, match="regression task"):
        rx.task_data("stsb")
    setup = rx.task_data("sst2", eval_limit=5)
    assert setup.model is None and len(setup.eval_data) == 5 and setup.calibration.split == "train"


def test_a_task_outcome_is_stored_beside_its_run_and_reused(tiny_bert, char_tokenizer, tmp_path, monkeypatch):
    import types

    from outlierbook.data.glue import TaskData

    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    model, batch = tiny_bert
    setup = types.SimpleNamespace(task="sst2", eval_data=TaskData("sst2", "dev", ["a", "b"], None, [1, 0]),
                                  tokenizer=char_tokenizer)
    cfg = types.SimpleNamespace(path=lambda: tmp_path / "run")
    calls = []
    monkeypatch.setattr(rx, "task_outcome", lambda *a, **k: calls.append(a[4]) or {"fp": 1.0 + len(calls)})
    first = rx.task_outcome_cached(cfg, setup, model, [batch], [batch], ["running_minmax"])
    again = rx.task_outcome_cached(cfg, setup, model, [batch], [batch], ["running_minmax"])
    assert first == again == {"fp": 2.0} and len(calls) == 1  # loaded, not recomputed
    other = rx.task_outcome_cached(cfg, setup, model, [batch], [batch], ["mse"])
    assert other == {"fp": 3.0} and len(list((tmp_path / "run").glob("outcome-*.json"))) == 2  # another estimator


@pytest.mark.slow
def test_every_variant_but_softmax_plus_one_starts_at_the_pretrained_encoder():
    """The issue's bar for the nearly open gate: output within 1e-3 of the pretrained model at step 0."""
    from outlierbook.models.load import load_tokenizer
    from outlierbook.models.tasks import encode

    batch = encode(load_tokenizer("all-MiniLM-L6-v2"), ["a film that never finds its feet .", "superb !"])
    dev = rx.start_deviation("all-MiniLM-L6-v2", rx.variants(128), batch)
    assert dev["vanilla"] < 1e-4 and dev["clipped softmax"] < 1e-4 and dev["gated attention"] < 1e-3
    assert dev["softmax + 1"] > 1e-3  # the extra key takes mass from every row


def test_effects_compare_with_the_control_and_call_only_differences_beyond_the_seed_spread():
    rows = [{"label": "vanilla", "seed": 0, "x": 10.0}, {"label": "vanilla", "seed": 1, "x": 12.0},
            {"label": "fix", "seed": 0, "x": 5.0}, {"label": "fix", "seed": 1, "x": 5.5},
            {"label": "noise", "seed": 0, "x": 10.5}, {"label": "noise", "seed": 1, "x": 12.5}]
    e = rx.effects(rows, metrics=["x"])
    assert e.loc[("fix", "x"), "Δ"] == pytest.approx(-5.75) and bool(e.loc[("fix", "x"), "beyond spread"])
    assert e.loc[("noise", "x"), "seed std"] == pytest.approx(2 ** 0.5) and not e.loc[("noise", "x"), "beyond spread"]
    one = rx.effects([r for r in rows if r["seed"] == 0], metrics=["x"])
    assert not one["beyond spread"].any()  # one seed: no spread, no finding
    with pytest.raises(ConfigError, match="no rows of the control 'vanilla'"):
        rx.effects([r for r in rows if r["label"] != "vanilla"], metrics=["x"])
