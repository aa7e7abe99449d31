r"""Does it hold at base size? The papers' headline experiments on a 12-layer, 768-wide encoder.

Every other chapter measures the embedded all-MiniLM-L6-v2 (6 layers, width 384, 22 M parameters);
the four papers measure BERT-base-size models (12 layers, width 768, 110 M). This module runs the
same experiments, with the same functions and protocols, on **all-mpnet-base-v2** (BERT-base size,
offline), so each number can stand beside the MiniLM number of its own chapter and the paper's:

==================  ===============================================  ===========================
experiment          function (protocol of)                           MiniLM number from
==================  ===============================================  ===========================
outlier anatomy     :func:`outlier_anatomy` (chapter 3)              computed here, both models
W/A bit sweep       ``problem.weight_act_sweep`` (chapter 2)         ``02_the_problem``
leave-one-out       ``understanding.leave_one_out`` (chapter 4)      ``04_understanding`` Table 2
mixed precision     ``understanding.mixed_precision`` (chapter 4)    ``04_understanding`` Table 4
PEG                 :func:`peg_rows` (chapter 4's Table 5 rows)      ``04_understanding`` Table 5
MinMax/GM/TWC       ``outlier_suppression.run_methods`` (chapter 5)  ``05_outlier_suppression``
NAQ avoided share   ``naq.sweep`` + ``naq.best_within`` (chapter 7)  ``07_naq``
==================  ===============================================  ===========================

Where MPNet differs from BERT: MPNet adds a learned **relative position bias** to the scaled scores;
the ``attention.scores`` node quantizes $QK^\top$ *before* the scaling, the bias and the mask (as it
sits before the mask for BERT), so the bias is added in float (:mod:`outlierbook.models.attention_function`).
Its tokenizer writes ``<s>`` / ``</s>`` where BERT writes ``[CLS]`` / ``[SEP]``: :func:`delimiters`
reads them from the tokenizer.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..analysis import outliers as ol
from ..analysis.capture import capture_activations
from ..errors import ConfigError
from ..models.anatomy import anatomy
from ..models.load import EMBEDDED
from ..models.tasks import FinetuneConfig
from . import understanding as ux

MODEL = "all-mpnet-base-v2"
REFERENCE = EMBEDDED

# The CPU budget of a classification head on the base-size model (encoder and head trained together with
# AdamW, linear warm-up and decay; Hugging Face Accelerate). Full: 500 steps of 16 SST-2 phrases
# (8 000 examples, an eighth of an epoch) at 2.4 s a step on 2 cores, about 20 minutes.
HEADS = {"quick": {"steps": 20, "batch_size": 8, "lr": 2e-5}, "full": {"steps": 500, "batch_size": 16, "lr": 2e-5}}


def head_config(task: str, profile: str, model: str = MODEL, seed: int = 0) -> FinetuneConfig:
    """The fine-tuning run of ``task``'s head on ``model`` in ``profile`` (see :data:`HEADS`)."""
    if profile not in HEADS:
        raise ConfigError(f"unknown profile {profile!r}; use one of: {', '.join(HEADS)}")
    return FinetuneConfig(model=model, task=task, seed=seed, **HEADS[profile])


def delimiters(tokenizer) -> dict[str, tuple]:
    """The 2023 paper's delimiter set in this tokenizer's spelling: its separator, "." and ",", and the
    same set plus the sequence-start token (``[SEP]``/``[CLS]`` for BERT, ``</s>``/``<s>`` for MPNet)."""
    sep, cls = tokenizer.sep_token, tokenizer.cls_token
    return {"delimiters": (sep, ".", ","), "delimiters + start": (sep, cls, ".", ",")}


def sentence_batches(setup, n: int, batch_size: int = 32, max_length: int = 128, seed: int = 0) -> list[dict]:
    """``n`` evaluation sentences of ``setup`` (first sentence of each pair), seeded, in batches."""
    from ..models.tasks import encode, subsample

    text = subsample(setup.eval_data, n, seed=seed)
    return [encode(setup.tokenizer, text.text_a[i:i + batch_size], None, max_length)
            for i in range(0, len(text), batch_size)]


@torch.no_grad()
def outlier_anatomy(model, tokenizer, batches, k: int = 10) -> tuple[pd.DataFrame, dict]:
    r"""Chapter 3's measurements on one model, per layer and summarised.

    Per layer $\ell$: outliers ($|x-\mu| > 6\sigma$) in the FFN output, the fewest dimensions holding 90 % of
    them, their share on delimiters, the top-``k`` overlap of $|\gamma|$ and $\max|\tilde X|$ at the MHA-LN
    (Outlier Suppression's Fig. 1), the FFN output/input range ratio (Bondarenko 2021, Fig. 2a), and the
    2023 paper's outlier metrics of the layer output (the FFN-LN output): kurtosis and infinity norm,
    averaged over sequences (max inf-norm: the largest over sequences).

    The summary holds what the claims read: the largest share of dimensions holding 90 % of the outliers,
    over every layer with outliers and over the last two (QT-1's rule since the ledger's 2026-11-29 change),
    the delimiter share in the last two layers, the number of MHA-LN
    layers whose top-``k`` sets share a dimension (OS-1), the range ratios of the last two layers (PEG-3),
    and the largest max inf-norm and mean kurtosis over layer outputs (the ledger's *outliers present*).
    """
    layers = anatomy(model).layers
    n = len(layers)
    names = [f"layer{i}.{kind}" for i in range(n) for kind in ("attention.ln", "ffn.output", "ffn.ln")]
    acts = capture_activations(model, batches, names=names)
    tokens, lengths = ol.tokens_of(batches, tokenizer)
    groups = delimiters(tokenizer)
    d = model.config.hidden_size
    rows, last_two = [], torch.zeros(0)
    for i, layer in enumerate(layers):
        ffn_out = acts[f"layer{i}.ffn.output"]
        per_dim, per_tok = ol.outlier_counts(ffn_out)
        shares = ol.token_share(per_tok, tokens, groups)
        ln = layer.attention_ln
        g = ol.gamma_overlap(acts[f"layer{i}.attention.ln"], ln.weight.detach(), ln.bias.detach(), k=k)
        stats = ol.sequence_stats(acts[f"layer{i}.ffn.ln"], lengths)
        r_in, r_out = ol.token_ranges(acts[f"layer{i}.attention.ln"]), ol.token_ranges(ffn_out)
        rows.append({"layer": i, "outliers": int(per_dim.sum()), "dims holding 90 %": ol.dims_holding(per_dim, 0.9),
                     "share on delimiters (%)": 100 * shares["delimiters"],
                     "share on delimiters + start (%)": 100 * shares["delimiters + start"],
                     f"top-{k} overlap |γ| vs max|X̃|": g["overlap"],
                     "range ratio FFN out/in": float(r_out.max() / r_in.max()),
                     "kurtosis": stats["kurtosis"], "max inf-norm": stats["max_inf_norm"]})
        if i >= n - 2:
            last_two = torch.cat([last_two, per_tok.float()])
    table = pd.DataFrame(rows)
    with_outliers = table[table["outliers"] > 0]
    last_with = with_outliers[with_outliers["layer"] >= n - 2]
    tokens_last_two = tokens * 2  # the two layers' per-token counts, concatenated in capture order
    summary = {
        "layers": n, "hidden": d, "tokens": len(tokens), "sentences": len(lengths),
        "max share of dims holding 90 % (%)": (100 * float((with_outliers["dims holding 90 %"] / d).max())
                                               if len(with_outliers) else float("nan")),
        "max share of dims holding 90 %, last two layers (%)": (100 * float((last_with["dims holding 90 %"] / d).max())
                                                                if len(last_with) else float("nan")),
        "share on delimiters, last two layers (%)": 100 * ol.token_share(last_two, tokens_last_two, groups)["delimiters"],
        "MHA-LN layers with overlap": int((table[f"top-{k} overlap |γ| vs max|X̃|"] >= 1).sum()),
        "range ratio, last two layers": [round(float(v), 2) for v in table["range ratio FFN out/in"].tail(2)],
        "max inf-norm": float(table["max inf-norm"].max()),
        "mean kurtosis": float(table["kurtosis"].mean()),
    }
    return table, summary


def peg_rows(hidden: int) -> list[str]:
    """The Table 5 rows the base-size chapter runs: per-tensor, per-embedding from 16 sequences, and
    K = 3 and 6 with and without the range-based permutation (FFN only)."""
    return ["1 (=per-tensor)", ux.per_embedding_reference(hidden), "3 (only FFN)", "3 + P (only FFN)",
            "6 (only FFN)", "6 + P (only FFN)"]


def peg_subset(setup, seeds, perm_batches, memo=None) -> pd.DataFrame:
    """Chapter 4's Table 5, restricted to :func:`peg_rows` (same configs, settings and memo keys)."""
    hidden = setup.model.config.hidden_size
    configs, permuted = ux.peg_configs(hidden)
    wanted = peg_rows(hidden)
    return ux.configured_ptq(setup, seeds, {k: configs[k] for k in wanted}, perm_batches=perm_batches,
                             peg_kinds={k: v for k, v in permuted.items() if k in wanted},
                             settings=ux.peg_settings(hidden), desc="PEG", memo=memo)


# ------------------------------------------------------------------ beside MiniLM and the papers

OS_METHODS = {"minmax": "MinMax", "gm+minmax": "MinMax + GM", "twc": "TWC", "gm+twc": "GM + TWC"}
PAPER_TASK = {"stsb": "STS-B", "sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE"}


def relabel(label: str, hidden: int, layers: int, to_hidden: int, to_layers: int) -> str:
    """A row label of one model in another's terms: ``768 (=per-embd.)`` ↔ ``384 (=per-embd.)``,
    ``layers 10, 11`` ↔ ``layers 4, 5``."""
    out = label.replace(f"{hidden} (", f"{to_hidden} (")
    return out.replace(f"layers {layers - 2}, {layers - 1}", f"layers {to_layers - 2}, {to_layers - 1}")


def reference_key(experiment: str, label: str, task: str) -> tuple[str, str] | None:
    """(chapter, metrics key) of the MiniLM number stored by the chapter that ran ``experiment``; ``label``
    is already in MiniLM's terms (:func:`relabel`). ``None`` where that chapter has no such row."""
    if experiment == "sweep":
        return "02_the_problem", f"sweep/{label}/{task}"
    if experiment in ("table2", "table4", "table5"):
        return "04_understanding", f"{experiment}/{label}/{task}"
    if experiment == "6-6-6":
        return "05_outlier_suppression", f"table3/{label}/{task}"
    if experiment == "8-8-8":
        if label == "FP32":
            return "05_outlier_suppression", f"table4/32-32-32/FP32/{task}"
        name = {"MinMax": "MinMax", "GM + TWC": "Ours (GM + TWC)"}.get(label)
        return None if name is None else ("05_outlier_suppression", f"table4/8-8-8/{name}/{task}")
    if experiment == "naq":
        return "07_naq", f"best/{task}/{label}"
    raise ConfigError(f"unknown experiment {experiment!r}")


# (paper file, table, setting) per our row label; the paper's column is the task's GLUE name.
PAPER_ROWS = {
    "sweep": ("understanding", "Table 1", {s: s for s in ("FP32", "W8A8", "W32A8", "W8A32")}),
    "table2": ("understanding", "Table 2", None),  # same labels as ours (BERT-base is 12 layers, like MPNet)
    "table4": ("understanding", "Table 4", None),
    "table5": ("understanding", "Table 5", {"FP32": "FP32", "1 (=per-tensor)": "1 (=per-tensor)", "3 (only FFN)": "3 (only FFN)",
                                            "3 + P (only FFN)": "3 + P (only FFN)", "6 (only FFN)": "6 (only FFN)",
                                            "6 + P (only FFN)": "6 + P (only FFN)",
                                            "768 (=per-embd., 16 seq.)": "768 (=per-embd.)"}),
    "6-6-6": ("outlier_suppression", "Table 3", None),
    "8-8-8": ("outlier_suppression", "Table 4", {"FP32": "FP32 32-32-32", "MinMax": "MinMax 8-8-8",
                                                 "GM + TWC": "Ours 8-8-8"}),
}


def beside(ours: pd.DataFrame, experiment: str, tasks, metrics_of, hidden: int, layers: int,
           ref_hidden: int = 384, ref_layers: int = 6) -> pd.DataFrame:
    """Per row of ``ours`` (index: row label, one column per task), the base-size number, the MiniLM number
    stored by its own chapter's full run (``metrics_of(chapter)`` → that run's metrics, or ``None``), and the
    paper's BERT-base number (:data:`PAPER_ROWS`), as columns ``(task, "MPNet" | "MiniLM" | "paper")``."""
    from ..compare import load_paper

    cols = {}
    mapping = PAPER_ROWS.get(experiment)
    paper = None if mapping is None else load_paper(mapping[0], mapping[1])
    for task in tasks:
        mpnet, minilm, theirs = [], [], []
        for label in ours.index:
            mpnet.append(float(ours.loc[label, task]) if task in ours.columns else float("nan"))
            key = reference_key(experiment, relabel(label, hidden, layers, ref_hidden, ref_layers), task)
            stored = None if key is None else metrics_of(key[0])
            minilm.append(float(stored.get(key[1], float("nan"))) if stored else float("nan"))
            value = float("nan")
            if paper is not None and mapping is not None:
                setting = label if mapping[2] is None else mapping[2].get(label)
                hit = paper[(paper["setting"] == setting) & (paper["metric"] == PAPER_TASK[task])]
                value = float(hit["value"].iloc[0]) if setting is not None and len(hit) else float("nan")
            theirs.append(value)
        cols[(task, "MPNet")] = mpnet
        cols[(task, "MiniLM")] = minilm
        cols[(task, "paper")] = theirs
    return pd.DataFrame(cols, index=ours.index)
