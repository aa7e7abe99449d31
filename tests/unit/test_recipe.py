"""Recipes and the front door: methods compose, transforms are exact and pure, conflicts raise at
validation, failing calibrators restore state, and a calibrated model round-trips through safetensors."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from safetensors.torch import load_file, save_file

from outlierbook.errors import ConfigError
from outlierbook.methods.peg import peg_config
from outlierbook.models.attention_function import users
from outlierbook.models.attention_variants import AttentionVariant
from outlierbook.quant.nodes import quantize_model
from outlierbook.recipe import (AttentionVariantTransform, Bits, EasyQuant, GammaMigration, PegPermutation, Ranges,
                                Recipe, TokenWiseClipping, quantize)
from outlierbook.recipe.calibrators import Calibrator

LN_KINDS = ("embeddings.ln", "attention.ln", "ffn.ln")

# The methods of the "Composing the methods" table, as recipe parts (K = 4 groups: the tiny model is 16 wide).
METHODS = {
    "gm": {"transforms": (GammaMigration(),)},
    "clipped_softmax": {"transforms": (AttentionVariantTransform(AttentionVariant(softmax="clipped", gamma=-0.05)),)},
    "gate": {"transforms": (AttentionVariantTransform(AttentionVariant(gate="linear", pi_init=0.9)),)},
    "peg": {"overrides": peg_config(4, LN_KINDS), "before": (PegPermutation(LN_KINDS),)},
    "omse": {"act_estimator": "omse"},
    "twc": {"after": (TokenWiseClipping(max_candidates=3, fine_epochs=1, exempt_kinds=("attention.probs",) + LN_KINDS),)},
    "easyquant": {"after": (EasyQuant(),)},
}


def compose(*names, bits="W6A6") -> Recipe:
    parts = [METHODS[n] for n in names]
    return Recipe(bits=bits, placement="os", act_estimator=next((p["act_estimator"] for p in parts if "act_estimator" in p),
                                                                 "avg_minmax"),
                  overrides={k: v for p in parts for k, v in p.get("overrides", {}).items()},
                  transforms=tuple(t for p in parts for t in p.get("transforms", ())),
                  calibrators=tuple(c for p in parts for c in p.get("before", ())) + (Ranges(),)
                  + tuple(c for p in parts for c in p.get("after", ())))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _untouched(model, before) -> bool:
    after = model.state_dict()
    return (set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
            and not any(hasattr(m, "parametrizations") for m in model.modules()) and users(model) == []
            and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()))


# Pairs that do not compose, and say so at validation: EasyQuant searches one scale per activation node
# (PEG's nodes have K), and it and Token-Wise Clipping both search the activation ranges after Ranges().
CONFLICTS = {frozenset({"peg", "easyquant"}): "per-channel or per-group", frozenset({"twc", "easyquant"}): "use one of them",
             frozenset({"clipped_softmax", "gate"}): "appears twice"}


@pytest.mark.parametrize("pair", list(itertools.combinations(METHODS, 2)), ids="+".join)
def test_every_pair_of_methods_runs_through_one_recipe(tiny_bert, pair):
    model, batch = tiny_bert
    before = _state(model)
    if frozenset(pair) in CONFLICTS:
        with pytest.raises(ConfigError, match=CONFLICTS[frozenset(pair)]):
            compose(*pair).validate(model)
        return
    recipe = compose(*pair)
    qm = quantize(model, recipe, [batch])
    assert qm.mode == (True, True) and qm.recipe is recipe
    out = qm(**batch).logits
    assert torch.isfinite(out).all()
    assert _untouched(model, before)  # the caller's model: same weights, no nodes, no hooks
    if "twc" in pair:
        assert 0 < qm.info["token_wise_clipping"]["best_p"] <= 1
    if "peg" in pair:
        assert qm.info["peg_permutation"]["permuted"] > 0


def test_variant_with_gate_and_clipped_softmax_in_one_transform(tiny_bert):
    model, batch = tiny_bert
    both = AttentionVariantTransform(AttentionVariant(softmax="clipped", gamma=-0.05, gate="linear"))
    qm = quantize(model, Recipe(bits="W8A8", transforms=(GammaMigration(), both)), [batch])
    assert torch.isfinite(qm(**batch).logits).all() and users(qm.model) == ["variant", "quantization"]


@torch.no_grad()
def test_transforms_are_exact_and_pure(tiny_bert):
    model, batch = tiny_bert
    before = _state(model)
    ref = model(**batch).logits
    migrated = GammaMigration()(model)
    assert migrated is not model and _untouched(model, before)
    assert (migrated(**batch).logits - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_gamma_migration_twice_is_refused(tiny_bert):
    model, _ = tiny_bert
    with pytest.raises(ConfigError, match="GammaMigration appears twice"):
        Recipe(transforms=(GammaMigration(), GammaMigration()))


@torch.no_grad()
def test_quantize_at_sixteen_bits_after_migration_is_the_fp_model(tiny_bert):
    model, batch = tiny_bert
    ref = model(**batch).logits
    qm = quantize(model, Recipe(bits="W16A16", transforms=(GammaMigration(),)), [batch])
    assert (qm(**batch).logits - ref).abs().max() <= 1e-3 * float(ref.abs().max())


class Boom(Calibrator):
    """Changes every range and switch, swaps estimators, then fails."""

    name = "boom"

    def run(self, qm, batches):
        for q in qm.activation_quantizers():
            q.estimator = None
            q.scale = q.scale * 3
            q.observing = True
        qm.set_mode(False, False)
        raise RuntimeError("boom")


def test_a_failing_calibrator_restores_every_quantizer(tiny_bert):
    model, batch = tiny_bert
    qm = quantize(model, Recipe(bits="W8A8"), [batch])
    state = {k: v.clone() for k, v in qm.state_dict().items()}
    estimators = [q.estimator for q in qm.activation_quantizers()]
    with pytest.raises(RuntimeError, match="boom"):
        Boom()(qm, [batch])
    assert all(torch.equal(state[k], v) for k, v in qm.state_dict().items())
    assert [q.estimator for q in qm.activation_quantizers()] == estimators
    assert qm.mode == (True, True) and not any(q.observing for q in qm.activation_quantizers())


def test_a_failing_quantize_leaves_the_callers_model_untouched(tiny_bert):
    model, batch = tiny_bert
    before = _state(model)
    recipe = Recipe(bits="W8A8", calibrators=(Ranges(), Boom()))
    with pytest.raises(RuntimeError, match="boom"):
        quantize(model, recipe, [batch])
    with pytest.raises(RuntimeError, match="boom"):
        quantize(model, recipe, [batch], copy_model=False)  # wrapped in place: unwrapped again on failure
    assert _untouched(model, before)


@pytest.mark.parametrize("recipe, message", [
    (lambda: Recipe(bits="W6A6", overrides=peg_config(4, LN_KINDS), calibrators=(Ranges(), TokenWiseClipping())),
     "per-tensor range, but node embeddings.ln is per-channel or per-group"),
    (lambda: Recipe(overrides={"ffn.ln": {"axis": -1, "groups": 6}}), "6 groups do not divide its width 16"),
    (lambda: Recipe(overrides={"attention.probs": {"axis": -1}}), "not supported on attention matrices"),
    (lambda: Recipe(overrides={"layer9.ffn.ln": 4}), "no node, kind or layer of this model"),
    (lambda: Recipe(calibrators=(PegPermutation(),)), "include one Ranges"),
    (lambda: Recipe(calibrators=(Ranges(), PegPermutation())), "stage order"),
    (lambda: Recipe(calibrators=(PegPermutation(), Ranges())), "needs per-group nodes"),
    (lambda: Recipe(bits="W6A5", calibrators=(Ranges(), TokenWiseClipping())), "4, 6 or 8 bits"),
    (lambda: Recipe(bits="W8A32", calibrators=(Ranges(), EasyQuant())), "quantize both"),
    (lambda: Recipe(act_estimator="median"), "unknown range estimator"),
    (lambda: Recipe(bits="W8X8"), "are not understood"),
    (lambda: Recipe(placement="fastest"), "unknown placement"),
])
def test_conflicts_raise_at_validation_before_any_compute(tiny_bert, recipe, message):
    model, batch = tiny_bert
    before = _state(model)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ConfigError, match=message):
        quantize(model, recipe(), [batch])
    handle.remove()
    assert calls == [] and _untouched(model, before)


def test_pre_ln_models_refuse_gamma_migration_at_validation():
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   ffn_dim=32, max_position_embeddings=32, word_embed_proj_dim=16))
    with pytest.raises(ConfigError, match="post-LN"):
        Recipe(transforms=(GammaMigration(),)).validate(opt)


def test_activation_quantization_needs_batches(tiny_bert):
    model, _ = tiny_bert
    with pytest.raises(ConfigError, match="calibration batches"):
        quantize(model, Recipe(bits="W8A8"), [])
    qm = quantize(model, Recipe(bits="W4A32"), [])  # weights only: no data needed
    assert qm.mode == (True, False)


def test_bits_notation():
    assert Bits.parse("W6A6E8") == Bits(6, 8, 6) and Bits.parse("6-8-6") == Bits(6, 8, 6)
    assert Bits.parse("W8A32") == Bits(8, 8, None) and str(Bits(8, 8, None)) == "W8A32"
    assert Bits.parse("w4a8").name == "W4A8" and Bits(6, 8, 6).wea == "6-8-6"
    with pytest.raises(ConfigError, match="bit-width"):
        Bits.parse("W1A8")


@torch.no_grad()
def test_a_calibrated_model_round_trips_through_safetensors(tiny_bert, tmp_path):
    model, batch = tiny_bert
    recipe = compose("gm", "peg", bits="W4A6")
    qm = quantize(model, recipe, [batch])
    qm.set_mode(True, False)  # the mode travels with the state
    out = qm(**batch).logits
    save_file({k: v.contiguous() for k, v in qm.state_dict().items()}, tmp_path / "quantized.safetensors")

    fresh = recipe.wrap(copy.deepcopy(model) if not recipe.transforms else GammaMigration()(model))
    assert fresh.mode == (False, False) and not fresh.act_nodes["layer0__ffn__ln"].quantizer.calibrated
    fresh.load_state_dict(load_file(tmp_path / "quantized.safetensors"))
    assert torch.equal(fresh(**batch).logits, out)
    peg = fresh.node("layer0.ffn.ln").quantizer
    assert peg.granularity.permutation is not None and torch.equal(
        peg.granularity.permutation, qm.node("layer0.ffn.ln").quantizer.granularity.permutation)
    fresh.set_mode(True, True)
    qm.set_mode(True, True)
    assert torch.equal(fresh(**batch).logits, qm(**batch).logits)


def test_quantize_model_and_recipe_wrap_agree(tiny_bert):
    """The recipe's defaults are the wrapper's: the same nodes and settings."""
    model, _ = tiny_bert
    a = quantize_model(copy.deepcopy(model), placement="os", weight_bits=6, act_bits=6, act_estimator="avg_minmax")
    b = Recipe(bits="W6A6", placement="os", act_estimator="avg_minmax").wrap(copy.deepcopy(model))
    assert a.summary() == b.summary()


@torch.no_grad()
def test_smoothing_after_gamma_migration_and_the_reverse(tiny_bert):
    """SmoothQuant then GM is GM (GM divides by whatever γ is there); GM then SmoothQuant is exact and different."""
    from outlierbook.analysis.capture import capture_activations
    from outlierbook.recipe import SmoothQuant
    from outlierbook.recipe.quantize import transformed

    model, batch = tiny_bert
    ref = model(**batch).logits
    tensors = {}
    for label, ts in {"gm": (GammaMigration(),), "sq+gm": (SmoothQuant(), GammaMigration()),
                      "gm+sq": (GammaMigration(), SmoothQuant())}.items():
        m = transformed(model, Recipe(transforms=ts), [batch])
        assert (m(**batch).logits - ref).abs().max() <= 1e-4
        tensors[label] = capture_activations(m, [batch], names=["layer0.attention.ln"], placement="os")["layer0.attention.ln"]
    assert torch.allclose(tensors["sq+gm"], tensors["gm"], atol=1e-4)
    assert not torch.allclose(tensors["gm+sq"], tensors["gm"], atol=1e-2)


def test_the_composing_chapters_exactness_table(tiny_bert):
    from outlierbook.experiments.composing import transform_exactness

    model, batch = tiny_bert
    table, scale = transform_exactness(model, [batch], "layer0.attention.ln")
    assert list(table.index) == ["GM", "SQ", "SQ, shortcut not rescaled", "SQ then GM", "GM then SQ"]
    assert table.loc["GM", "Δ output"] <= 1e-4 * max(1.0, scale) and table.loc["GM", "Δ tensor vs GM"] == 0
    assert table.loc["SQ, shortcut not rescaled", "Δ output"] > 1e-2 * max(1.0, scale)
    assert table.loc["SQ then GM", "Δ tensor vs GM"] <= 1e-3 < table.loc["GM then SQ", "Δ tensor vs GM"]


class ObservesThenFails(Calibrator):
    """Feeds every activation estimator another batch (its statistics change), then fails."""

    name = "observes_then_fails"

    def run(self, qm, batches):
        for q in qm.activation_quantizers():
            q.estimator.update(torch.full((1, 4), 1e6))
        raise RuntimeError("late failure")


def test_a_failing_calibrator_restores_the_estimators_statistics(tiny_bert):
    model, batch = tiny_bert
    qm = quantize(model, Recipe(bits="W8A8", act_estimator="running_minmax"), [batch])
    before = {k: v.clone() for k, v in qm.state_dict().items() if ".estimator." in k}
    assert any(k.endswith("estimator.hi") for k in before)
    with pytest.raises(RuntimeError, match="late failure"):
        ObservesThenFails()(qm, [batch])
    after = {k: v for k, v in qm.state_dict().items() if ".estimator." in k}
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


@torch.no_grad()
def test_save_and_load_a_quantized_model_through_the_front_door(tiny_bert, tmp_path):
    """save_quantized / load_quantized: learned LSQ+ and PACT ranges and a migrated, grouped model come back
    computing the same outputs; the wrong recipe or a missing file is refused in one line."""
    from outlierbook.recipe import load_quantized, save_quantized

    model, batch = tiny_bert
    before = _state(model)
    recipe = compose("gm", "peg", bits="W6A6")
    qm = quantize(model, recipe, [batch])
    acts = qm.activation_quantizers()
    plain = [q for q in acts if q.granularity.axis is None]
    plain[0].make_pact()
    for q in plain[1:3] + qm.weight_quantizers()[:2]:
        q.make_learnable()
        q.scale_param.mul_(1.1)  # as if QAT had moved them
    out = qm(**batch).logits
    path = save_quantized(qm, tmp_path / "q" / "model.safetensors")
    back = load_quantized(model, recipe, path)
    assert torch.equal(back(**batch).logits, out) and back.mode == qm.mode
    assert back.node(plain[0].name).quantizer.pact and back.node(plain[1].name).quantizer.learnable
    assert _untouched(model, before) and not any(p.name.startswith(".") for p in path.parent.iterdir())
    with pytest.raises(ConfigError, match="saved with recipe"):
        load_quantized(model, Recipe(bits="W8A8"), path)
    with pytest.raises(ConfigError, match="no saved quantized model"):
        load_quantized(model, recipe, tmp_path / "missing.safetensors")
