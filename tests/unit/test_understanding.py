"""The 2021 chapter's experiment helpers: node groups, mixed precision, PEG rows, memory reduction."""

import pytest
import torch

from outlierbook.analysis.sensitivity import fp32_kinds
from outlierbook.experiments import understanding as ux
from outlierbook.recipe import quantize


def test_memory_reduction_matches_a_hand_count():
    model = torch.nn.Module()
    model.word_embeddings = torch.nn.Embedding(10, 4)  # the name selects the embedding bit-width
    model.dense = torch.nn.Linear(4, 3)
    n_emb, n_lin, n_bias = 40, 12, 3
    r = ux.memory_reduction(model, 4)
    assert r["weights only"] == pytest.approx(32 * (n_emb + n_lin) / (4 * (n_emb + n_lin)))
    assert r["whole model"] == pytest.approx(32 * (n_emb + n_lin + n_bias) / (4 * (n_emb + n_lin) + 32 * n_bias))
    r2 = ux.memory_reduction(model, 4, word_embedding_bits=2)
    assert r2["weights only"] == pytest.approx(32 * 52 / (2 * n_emb + 4 * n_lin))


def test_leave_one_out_groups_name_real_nodes_and_fp32_by_name(tiny_bert):
    model, batch = tiny_bert
    qm = quantize(model, ux.recipe(), [batch])
    groups = ux.leave_one_out_groups(len(qm.parts.layers))
    assert groups["same as above, but for layers 0, 1 only"] == ["layer0.ffn.residual", "layer1.ffn.residual"]
    names = set(qm.node_names())
    for kinds in groups.values():
        assert all(k in names or any(n.endswith("." + k) or n == k for n in names) for k in kinds)
    qm.set_mode(False, True)
    with fp32_kinds(qm, ["layer1.ffn.residual"]):
        assert not qm.node("layer1.ffn.residual").quantizer.quantizing
        assert qm.node("layer0.ffn.residual").quantizer.quantizing
    assert qm.node("layer1.ffn.residual").quantizer.quantizing


def test_mixed_precision_configs_count_sixteen_bit_quantizers(tiny_bert):
    model, batch = tiny_bert
    qm = quantize(model, ux.recipe(), [batch])
    configs = ux.mixed_precision_configs(qm)
    assert ux.output_nodes(qm) == ["pooler.output", "classifier.output"]
    counts = {label: ux.sixteen_bit_share(quantize(model, ux.recipe(config=cfg), [batch]))
              for label, cfg in configs.items()}
    n_layers = 2
    assert counts["W8A8 PTQ"][0] == 0
    assert counts["MP-PTQ*"][0] == n_layers
    assert counts["MP-PTQ*†"][0] == 3 * n_layers
    assert counts["MP-PTQ*†‡"][0] == 3 * n_layers + 2
    assert len({c[1] for c in counts.values()}) == 1  # same number of quantizers throughout


def test_peg_rows_configure_groups_and_permutation_kinds(tiny_bert):
    model, batch = tiny_bert
    configs, permuted = ux.peg_configs(16)
    assert set(permuted) == {"3 + P (only FFN)", "6 + P (only FFN)"}
    q = quantize(model, ux.recipe(config={"attention.ln": {"axis": -1, "groups": 4}}), [batch])
    g = q.node("layer0.attention.ln").quantizer.granularity
    assert g.axis == -1 and g.groups == 4
    assert configs["16 (=per-embd.)"]["ffn.ln"] == {"axis": -1, "groups": None}
    assert "ffn.ln" not in configs["16 (only FFN)"]


def test_range_grid_labels_and_qat_refuses_zero_shot():
    from outlierbook.errors import ConfigError
    from outlierbook.models.tasks import TaskSetup

    grid = ux.range_grid(weights=("current_minmax", "mse"), acts=(("running_minmax", 4, 16),))
    assert [g.label for g in grid] == ["W min-max | A running minmax (bs=4, nb=16)", "W mse | A running minmax (bs=4, nb=16)"]
    setup = TaskSetup("stsb", None, None, None, None, "spearman", zero_shot=True)
    with pytest.raises(ConfigError, match="stsb_head"):
        ux.qat_run(setup)


def test_word_embedding_share_counts_the_table():
    from outlierbook.experiments.understanding import bert_base_skeleton, word_embedding_share

    share = word_embedding_share(bert_base_skeleton())
    assert share == pytest.approx(30522 * 768 / 109482240, rel=1e-6)  # BERT-base: 109.48 M parameters


def test_range_search_shares_w32a8_and_w8a32_without_changing_any_value(tiny_bert, monkeypatch):
    """The search evaluates W32A8 once per activation setting and W8A32 once per weight estimator;
    every value must equal a fresh wrap-calibrate-score of that setting and mode."""
    import types

    model, batch = tiny_bert
    pool = [batch]

    def score(qm):
        with torch.no_grad():
            return float(qm(**batch).logits.sum())

    setup = types.SimpleNamespace(task="t", model=model, score=score)
    grid = ux.range_grid(weights=("current_minmax", "mse"), acts=(("current_minmax", 1, 1), ("running_minmax", 1, 1)))
    monkeypatch.setattr(ux, "batches_for", lambda s, setting, seed: [{k: v[seed:seed + 2] for k, v in pool[0].items()}])
    found = ux.range_search(setup, grid, seeds=[0, 1])
    assert len(found) == len(grid) * 2 * 3
    for r in found.itertuples():
        setting = next(g for g in grid if g.label == r.setting)
        qm = quantize(model, ux.recipe(setting=setting), ux.batches_for(setup, setting, r.seed))
        assert score(qm.set_mode(*ux.MODES[r.mode])) == pytest.approx(r.value, rel=1e-6), (r.setting, r.mode)


def test_the_per_embedding_reference_row_is_calibrated_on_sixteen_sequences(monkeypatch):
    """PEG-5's ledger rule compares K=6+P with per-embedding ranges from >= 16 sequences, not one."""
    configs, _ = ux.peg_configs(16)
    ref = ux.per_embedding_reference(16)
    assert ref in configs and configs[ref] == configs["16 (=per-embd.)"]
    assert ux.peg_settings(16) == {ref: ux.RangeSetting(batch_size=16)}
    seen = {}

    class Setup:
        task, model = "stsb", None

        def score(self, qm):
            return 1.0

    class Quantized:
        def set_mode(self, **_):
            return self

    def fake_quantize(model, recipe, batches, calibration=None):
        return Quantized()

    monkeypatch.setattr(ux, "quantize", fake_quantize)
    monkeypatch.setattr(ux, "batches_for", lambda setup, setting, seed: seen.setdefault(len(seen), setting))
    monkeypatch.setattr(ux, "sixteen_bit_share", lambda qm: (0, 1))
    ux.configured_ptq(Setup(), [0], {"one": {}, ref: {}}, settings=ux.peg_settings(16))
    assert [s.batch_size * s.n_batches for s in seen.values()] == [1, 16]


def test_a_stopped_full_run_of_the_chapter_resumes_from_its_memo(tiny_bert, monkeypatch, tmp_path):
    """Every (setting, seed) of the range search and every leave-one-out seed is kept on disk: a new run
    with the same context recomputes nothing and gives the same table (mean ± std beside the median)."""
    import types

    from outlierbook.memo import Memo

    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    model, batch = tiny_bert

    def score(qm=None):
        with torch.no_grad():
            return float((qm or model)(**batch).logits.sum())

    setup = types.SimpleNamespace(task="t", model=model, score=score, checkpoint="ck", eval_data=[0] * 4)
    monkeypatch.setattr(ux, "batches_for", lambda s, setting, seed: [{k: v[seed:seed + 2] for k, v in batch.items()}])
    grid = ux.range_grid(weights=("current_minmax",), acts=(("current_minmax", 1, 1), ("running_minmax", 1, 1)))
    first = ux.range_search(setup, grid, [0, 1], memo=Memo("04_understanding", "full"))
    loo = ux.leave_one_out(setup, [0, 1], memo=Memo("04_understanding", "full"))
    assert (loo["n_seeds"] == 2).all() and loo["std"].notna().all()

    def refuse(*a, **k):
        raise AssertionError("recomputed a stored experiment")

    monkeypatch.setattr(ux, "quantize", refuse)
    assert ux.range_search(setup, grid, [0, 1], memo=Memo("04_understanding", "full")).equals(first)
    assert ux.leave_one_out(setup, [0, 1], memo=Memo("04_understanding", "full")).equals(loo)
    with pytest.raises(AssertionError, match="recomputed"):  # another FP checkpoint is another experiment
        ux.leave_one_out(types.SimpleNamespace(**{**vars(setup), "checkpoint": "other"}), [0],
                         memo=Memo("04_understanding", "full"))
