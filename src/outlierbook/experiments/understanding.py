"""The 2021 chapter's experiments (Bondarenko et al.): range-setting search, leave-one-out, mixed
precision, per-embedding-group PTQ, QAT and low-bit weights — all on the 2021 placement.

Common setup (the paper's §5): every Linear output, residual sum, LayerNorm output and the softmax
input/output quantized; weights symmetric **per tensor**, activations asymmetric per tensor, static
ranges. Unless a function says otherwise, activation ranges come from current min-max on a
single training sequence, and each number is the median over calibration seeds (which sequence).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm import tqdm

from ..analysis.sensitivity import fp32_kinds
from ..errors import ConfigError
from ..memo import kept
from ..methods.peg import FFN_KINDS, peg_config
from ..nbsetup import progress_enabled
from ..models.anatomy import anatomy
from ..quant.calibrate import calibration_batches
from ..quant.nodes import QuantizedModel, candidate_names
from ..recipe import Bits, PegPermutation, Ranges, Recipe, quantize
from ..seeds import summarize

# Activation kinds whose output has the hidden size d (PEG's per-embedding "all" setting).
HIDDEN_KINDS = ("embeddings.sum", "embeddings.ln", "attention.q", "attention.k", "attention.v", "attention.context",
                "attention.output", "attention.residual", "attention.ln", "ffn.output", "ffn.residual", "ffn.ln")
WORD_EMBEDDINGS = "weight:*word_embeddings"


@dataclass(frozen=True)
class RangeSetting:
    """One point of the paper's Appendix B.2 search: weight estimator, activation estimator, bs × nb."""

    weights: str = "current_minmax"
    acts: str = "current_minmax"
    batch_size: int = 1
    n_batches: int = 1

    @property
    def label(self) -> str:
        w = {"current_minmax": "min-max"}.get(self.weights, self.weights)
        a = self.acts.replace("_", " ")
        return f"W {w} | A {a} (bs={self.batch_size}, nb={self.n_batches})"


def range_grid(weights=("current_minmax", "mse"), acts=(("current_minmax", 1, 1),)) -> list[RangeSetting]:
    """All combinations of weight estimators and ``(act estimator, bs, nb)`` triples."""
    return [RangeSetting(w, a, bs, nb) for w in weights for a, bs, nb in acts]


def recipe(weight_bits=8, act_bits=8, setting: RangeSetting = RangeSetting(), config: dict | None = None,
           weight_axis=None, peg_kinds: tuple | None = None) -> Recipe:
    """The chapter's setup as a recipe: 2021 placement, per-tensor weights, the setting's estimators;
    ``peg_kinds``: the per-group kinds that get the range-based permutation."""
    calibrators = (PegPermutation(tuple(peg_kinds)), Ranges()) if peg_kinds else (Ranges(),)
    return Recipe(bits=Bits(weight_bits, weight_bits, act_bits), placement="bondarenko", weight_axis=weight_axis,
                  act_estimator=setting.acts, weight_estimator=setting.weights, overrides=config or {},
                  calibrators=calibrators)


def batches_for(setup, setting: RangeSetting, seed: int):
    return calibration_batches(setup.calibration, setup.tokenizer, n=setting.batch_size * setting.n_batches,
                               batch_size=setting.batch_size, seed=seed)


def _progress(items, desc):
    return tqdm(items, desc=desc, disable=not progress_enabled())


def _setting_key(setting: RangeSetting) -> dict:
    return {"weights": setting.weights, "acts": setting.acts, "bs": setting.batch_size, "nb": setting.n_batches}


# ------------------------------------------------------------------ Table 1 with the B.2 search

MODES = {"W8A8": (True, True), "W32A8": (False, True), "W8A32": (True, False)}


def range_search(setup, grid: list[RangeSetting], seeds, memo=None) -> pd.DataFrame:
    """W8A8 / W32A8 / W8A32 for every range setting and seed (long format: setting, seed, mode, value).

    Activation ranges are estimated on the FP model and weight ranges from the weights alone, so
    W32A8 depends only on (activation estimator, bs, nb, seed) and W8A32 only on the weight estimator:
    each is evaluated once and shared by the settings that agree on it (a test checks the equality
    with evaluating every mode of every setting).
    """
    rows, w32a8, w8a32 = [], {}, {}
    for setting in _progress(grid, f"range search {setup.task}"):
        for seed in seeds:
            act_key = (setting.acts, setting.batch_size, setting.n_batches, seed)

            def run(setting=setting, seed=seed, act_key=act_key):
                qm = quantize(setup.model, recipe(setting=setting), batches_for(setup, setting, seed))
                values = {"W8A8": setup.score(qm.set_mode(True, True))}
                values["W32A8"] = w32a8[act_key] if act_key in w32a8 else setup.score(qm.set_mode(False, True))
                values["W8A32"] = (w8a32[setting.weights] if setting.weights in w8a32
                                   else setup.score(qm.set_mode(True, False)))
                return values

            values = kept(memo, setup, {"experiment": "range_search", **_setting_key(setting), "seed": seed}, run)
            w32a8.setdefault(act_key, values["W32A8"])
            w8a32.setdefault(setting.weights, values["W8A32"])
            values.update(W32A8=w32a8[act_key], W8A32=w8a32[setting.weights])
            rows += [{"task": setup.task, "setting": setting.label, "seed": seed, "mode": mode, "value": values[mode]}
                     for mode in MODES]
    return pd.DataFrame(rows)


def best_setting(search: pd.DataFrame) -> pd.DataFrame:
    """Per task, the setting with the best median W8A8 score, and its median W8A8/W32A8/W8A32."""
    med = search.groupby(["task", "setting", "mode"], sort=False)["value"].median().unstack("mode")
    best = med.loc[med.groupby("task", sort=False)["W8A8"].idxmax()]
    return best.reset_index()


# ------------------------------------------------------------------ Table 2: leave-one-out

def leave_one_out_groups(n_layers: int) -> dict[str, list[str]]:
    return {
        "all": [],
        "all, except softmax input": ["attention.scores"],
        "all, except sum of embeddings": ["embeddings.sum"],
        "all, except self-attention output": ["attention.output"],
        "all, except softmax output": ["attention.probs"],
        "all, except residual connections after FFN": ["ffn.residual"],
        f"same as above, but for layers {n_layers - 2}, {n_layers - 1} only":
            [f"layer{n_layers - 2}.ffn.residual", f"layer{n_layers - 1}.ffn.residual"],
    }


def leave_one_out(setup, seeds, memo=None) -> pd.DataFrame:
    """W32A8 (current min-max, one sequence) with one activation kind at a time left in FP32: the
    median over seeds (the paper's statistic) beside mean and std."""
    groups = leave_one_out_groups(len(anatomy(setup.model).layers))
    per: dict[str, list[float]] = {}
    for seed in _progress(list(seeds), f"leave-one-out {setup.task}"):
        def run(seed=seed):
            qm = quantize(setup.model, recipe(), batches_for(setup, RangeSetting(), seed))
            qm.set_mode(weights=False, acts=True)
            scores = {}
            for label, kinds in groups.items():
                with fp32_kinds(qm, kinds):
                    scores[label] = setup.score(qm)
            return scores

        scores = kept(memo, setup, {"experiment": "leave_one_out", "seed": seed}, run)
        for label in groups:
            per.setdefault(label, []).append(scores[label])
    return pd.DataFrame([{"task": setup.task, "quantized activations": k, **_spread(v)} for k, v in per.items()])


def _spread(values) -> dict:
    """``value`` (the median over seeds, as the paper reports) and the mean ± std beside it."""
    s = summarize(values)
    return {"value": s["median"], "mean": s["mean"], "std": s["std"], "n_seeds": s["n_seeds"]}


# ------------------------------------------------------------------ Table 4: mixed precision

def output_nodes(model) -> list[str]:
    """The model's final output node(s): pooler + logits for a classifier, the last LN for a bare encoder.
    ``model``: an FP model or a :class:`QuantizedModel`."""
    anat = model.parts if isinstance(model, QuantizedModel) else anatomy(model)
    acts = candidate_names(anat)["act"]
    names = [n for n in ("pooler.output", "classifier.output") if n in acts]
    if "classifier.output" not in names:
        names.append(f"layer{len(anat.layers) - 1}.ffn.ln")
    return names


def mixed_precision_configs(qm) -> dict[str, dict]:
    star = {"ffn.residual": 16}
    dagger = {**star, "attention.ln": 16, "ffn.output": 16}
    return {"W8A8 PTQ": {}, "MP-PTQ*": star, "MP-PTQ*†": dagger,
            "MP-PTQ*†‡": {**dagger, **{n: 16 for n in output_nodes(qm)}}}


def sixteen_bit_share(qm: QuantizedModel) -> tuple[int, int]:
    acts = qm.activation_quantizers()
    return sum(q.grid.bits == 16 for q in acts), len(acts)


def configured_ptq(setup, seeds, configs: dict[str, dict], weight_bits=8, act_bits=8, perm_batches=None,
                   peg_kinds: dict[str, tuple] | None = None, settings: dict[str, RangeSetting] | None = None,
                   desc="PTQ", memo=None) -> pd.DataFrame:
    """Median W{weight_bits}A{act_bits} score of each named node config (current min-max, one sequence,
    unless ``settings`` gives a config its own range setting, e.g. one batch of 16 sequences).

    ``peg_kinds`` maps a config name to the kinds whose PEG groups get a range-based permutation,
    computed on ``perm_batches`` of the FP model before calibration.
    """
    rows = []
    for label, config in _progress(list(configs.items()), f"{desc} {setup.task}"):
        values, share = [], None
        kinds = peg_kinds.get(label) if peg_kinds else None
        setting = (settings or {}).get(label, RangeSetting())
        for seed in seeds:
            def run(seed=seed, config=config, kinds=kinds, setting=setting):
                qm = quantize(setup.model, recipe(weight_bits, act_bits, setting=setting, config=config,
                                                  peg_kinds=kinds),
                              batches_for(setup, setting, seed),
                              calibration={"peg_permutation": perm_batches} if kinds else None)
                return {"value": setup.score(qm.set_mode(weights=True, acts=True)), "share": sixteen_bit_share(qm)}

            key = {"experiment": desc, "config": config, "label": label, "bits": [weight_bits, act_bits],
                   "permuted": list(kinds or ()), **_setting_key(setting), "seed": seed,
                   "perm_examples": sum(len(b["input_ids"]) for b in perm_batches) if kinds else 0}
            result = kept(memo, setup, key, run)
            values.append(result["value"])
            share = result["share"]
        rows.append({"task": setup.task, "config": label, **_spread(values),
                     "16-bit quantizers": share[0], "activation quantizers": share[1]})
    return pd.DataFrame(rows)


def mixed_precision(setup, seeds, memo=None) -> pd.DataFrame:
    return configured_ptq(setup, seeds, mixed_precision_configs(setup.model), desc="mixed precision", memo=memo)


# ------------------------------------------------------------------ Table 5: PEG

PER_EMBEDDING_SEQUENCES = 16  # the ledger's PEG-5 reference: per-embedding ranges from >= 16 sequences


def per_embedding_reference(hidden: int) -> str:
    """The name of Table 5's added row: per-embedding PTQ whose ranges come from 16 sequences, not one."""
    return f"{hidden} (=per-embd., {PER_EMBEDDING_SEQUENCES} seq.)"


def peg_configs(hidden: int) -> tuple[dict[str, dict], dict[str, tuple]]:
    """Table 5's rows: node configs and which of them use the range-based permutation. Every row is
    calibrated on one sequence, as in the paper, except :func:`per_embedding_reference` (see
    :func:`peg_settings`): with one sequence a per-dimension range sees only that sequence's few tokens."""
    configs = {
        "1 (=per-tensor)": {},
        f"{hidden} (=per-embd.)": peg_config(None, HIDDEN_KINDS),
        per_embedding_reference(hidden): peg_config(None, HIDDEN_KINDS),
        f"{hidden} (only FFN)": peg_config(None, FFN_KINDS),
        "6 (only FFN)": peg_config(6, FFN_KINDS),
        "3 (only FFN)": peg_config(3, FFN_KINDS),
        "3 + P (only FFN)": peg_config(3, FFN_KINDS),
        "6 + P (only FFN)": peg_config(6, FFN_KINDS),
    }
    return configs, {"3 + P (only FFN)": FFN_KINDS, "6 + P (only FFN)": FFN_KINDS}


def peg_settings(hidden: int) -> dict[str, RangeSetting]:
    """Table 5's range settings that differ from one sequence: the reference row's one batch of 16."""
    return {per_embedding_reference(hidden): RangeSetting(batch_size=PER_EMBEDDING_SEQUENCES)}


def peg_table(setup, seeds, perm_batches, memo=None) -> pd.DataFrame:
    hidden = setup.model.config.hidden_size
    configs, permuted = peg_configs(hidden)
    return configured_ptq(setup, seeds, configs, perm_batches=perm_batches, peg_kinds=permuted,
                          settings=peg_settings(hidden), desc="PEG", memo=memo)


# ------------------------------------------------------------------ QAT and low-bit weights

def low_bit_config(embedding_bits: int | None = None) -> dict:
    """MSE ranges for low-bit weights (the paper's choice below 8 bits); optional word-embedding bits."""
    cfg = {"weight:*": {"estimator": "mse"}}
    if embedding_bits is not None:
        cfg[WORD_EMBEDDINGS] = {"bits": embedding_bits, "estimator": "mse"}
    return cfg


def qat_run(setup, weight_bits=8, act_bits=8, config: dict | None = None, steps: int | str = 100, batch_size: int = 32,
            lr: float = 2e-5, seed: int = 0, init_batch: int = 16, progress: bool = True, memo=None) -> dict:
    """QAT of a copy of the FP model, ranges initialised by PTQ (current min-max on one batch of
    ``init_batch`` training examples, as the authors' QAT README does) and then learned, for ``steps`` steps
    (``"epoch"``: one pass over the task's training split)."""
    from ..methods.qat import qat_and_score, resolve_steps

    if setup.zero_shot:
        raise ConfigError("QAT needs a trained head; use task_setup(..., stsb_head=True) for STS-B")
    steps = resolve_steps(steps, len(setup.calibration), batch_size)

    def run():
        qm = quantize(setup.model, recipe(weight_bits, act_bits, config=config),
                      calibration_batches(setup.calibration, setup.tokenizer, init_batch, init_batch, seed))
        result = qat_and_score(qm.set_mode(weights=True, acts=True), setup, steps=steps, batch_size=batch_size,
                               lr=lr, seed=seed, progress=progress)
        return {"task": setup.task, "weight_bits": weight_bits, "act_bits": act_bits, **result, "steps": steps}

    key = {"experiment": "qat", "bits": [weight_bits, act_bits], "config": config, "steps": steps,
           "batch_size": batch_size, "lr": lr, "seed": seed, "init_batch": init_batch}
    return kept(memo, setup, key, run)


def weight_ptq(setup, weight_bits: int, seeds, config: dict | None = None, memo=None) -> float:
    """W{bits}A32 PTQ with MSE weight ranges (median over seeds; only the weights are quantized)."""
    values = []
    for seed in seeds:
        def run(seed=seed):
            qm = quantize(setup.model, recipe(weight_bits, None, config=config or low_bit_config()),
                          batches_for(setup, RangeSetting(), seed))
            return setup.score(qm.set_mode(weights=True, acts=False))

        values.append(kept(memo, setup, {"experiment": "weight_ptq", "bits": weight_bits, "config": config,
                                          "seed": seed}, run))
    return statistics.median(values)


def word_embedding_share(model: torch.nn.Module) -> float:
    """Parameters of the word-embedding table over all parameters of ``model``."""
    tables = [m.weight.numel() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Embedding) and n.endswith("word_embeddings")]
    if len(tables) != 1:
        raise ConfigError(f"expected one word-embedding table, found {len(tables)}")
    return tables[0] / sum(p.numel() for p in model.parameters())


def bert_base_skeleton() -> torch.nn.Module:
    """BERT-base's architecture (``BertConfig()``'s defaults: 30 522 tokens, 12 × 768) with weights on the
    meta device: parameter counts without downloading anything."""
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        return BertModel(BertConfig())


def memory_reduction(model: torch.nn.Module, weight_bits: int, word_embedding_bits: int | None = None) -> dict:
    """FP32 size over quantized size, from the model's actual parameter counts.

    ``weights only``: the quantized tensors (Linear weights and embedding tables) — the paper's
    definition (×8.00 for 4-bit weights); ``whole model``: biases and LayerNorm parameters kept in FP32.
    """
    quantized_bits = fp_bits = other = 0
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            n = module.weight.numel()
            bits = word_embedding_bits if (word_embedding_bits and name.endswith("word_embeddings")) else weight_bits
            quantized_bits += bits * n
            fp_bits += 32 * n
    total = sum(p.numel() for p in model.parameters())
    other = 32 * total - fp_bits
    return {"weights only": fp_bits / quantized_bits, "whole model": 32 * total / (quantized_bits + other)}
