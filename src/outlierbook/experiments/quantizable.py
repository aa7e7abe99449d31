"""The Quantizable Transformers experiments: data, the live-row check, pre-training with outlier
tracking, and the evaluation of a trained model (FP perplexity, outlier statistics, W8A8 perplexity)."""

from __future__ import annotations

import hashlib
import json
import math

import torch

from ..analysis.lm_outliers import outlier_stats
from ..atomic import atomic_write_text
from ..data.corpus import training_texts, wikitext2
from ..errors import ConfigError
from ..models.attention_variants import live_row_shares
from ..models.lm_eval import perplexity
from ..models.pretrain import PretrainConfig, build_model, make_batch, pretrain, token_blocks
from ..models.tokenizer import train_tokenizer
from ..recipe import Recipe, quantize
from ..source_digest import update_with_sources


def corpus(cfg: PretrainConfig, eval_blocks: int | None = 256):
    """Tokenizer (trained on the training text only), training blocks, WikiText-2 evaluation blocks."""
    texts = training_texts(cfg.sources)
    tok = train_tokenizer(texts, cfg.vocab_size)
    train = token_blocks(tok, texts, cfg.seq_len)
    wiki = [p for p in wikitext2("test").split("\n \n") if p.strip()]
    test = token_blocks(tok, wiki, cfg.seq_len)
    return tok, train, test if eval_blocks is None else test[:eval_blocks]


@torch.no_grad()
def live_row_share_at_init(cfg: PretrainConfig, tok, blocks: torch.Tensor, n: int = 8) -> float:
    """Share of attention rows with any non-zero probability in the freshly initialised model (notes §3.7)."""
    model = build_model(cfg, len(tok), tok.pad_token_id).eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    with live_row_shares(model) as shares:
        model(**{k: v for k, v in make_batch(blocks, torch.arange(min(n, len(blocks))), cfg, tok, gen).items()
                 if k != "labels"})
    return sum(shares) / len(shares)


def held_out_batches(blocks: torch.Tensor, n: int = 4, batch_size: int = 16) -> list[dict]:
    return [{"input_ids": blocks[i:i + batch_size], "attention_mask": torch.ones_like(blocks[i:i + batch_size])}
            for i in range(0, min(n * batch_size, len(blocks)), batch_size)]


def train_with_tracking(cfg: PretrainConfig, tok, train: torch.Tensor, test: torch.Tensor, progress: bool = True):
    """Pre-train (or resume) with the outlier statistics of a fixed held-out batch logged during training,
    and the share of attention rows that keep any non-zero probability (``live_rows``, notes §3.7)."""
    probe = held_out_batches(test, n=1)

    def track(model):
        with live_row_shares(model) as shares:
            s = outlier_stats(model, probe)
        return {**{k: s[k] for k in ("max_inf_norm", "avg_kurtosis", "max_kurtosis")},
                "live_rows": sum(shares) / len(shares)}

    return pretrain(cfg, tok, train, track=track, progress=progress)


def calibration_subset(blocks: torch.Tensor, n_batches: int, batch_size: int, seed: int) -> list[dict]:
    """``n_batches`` batches of randomly chosen training blocks: the paper's "different random subsets of
    training data are used for quantizer range estimation", one subset per PTQ seed."""
    if n_batches < 1 or batch_size < 1:
        raise ConfigError("calibration needs at least one batch of at least one block")
    idx = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[: n_batches * batch_size]
    return held_out_batches(blocks[idx], n=n_batches, batch_size=batch_size)


def w8a8_perplexity(model, cfg: PretrainConfig, tok, train: torch.Tensor, test: torch.Tensor, seed: int = 0,
                    calib_batches: int = 16, batch_size: int = 16, act_estimator="running_minmax") -> float:
    """Perplexity after W8A8 PTQ: symmetric per-channel weights, asymmetric per-tensor activations, the
    2021/2023 placement (scores before and probabilities after the variant's softmax, context after the
    gate; the gate itself and the LM head FP), static ranges from one seeded calibration subset."""
    recipe = Recipe(bits="W8A8", placement="bondarenko", weight_axis=0, act_estimator=act_estimator)
    qm = quantize(model, recipe, calibration_subset(train, calib_batches, batch_size, seed))
    return perplexity(qm, test, cfg.kind, tok, batch_size, cfg.seed)


def _estimator_label(spec) -> str:
    if isinstance(spec, str):
        return spec
    name, kw = spec
    return name + "".join(f":{v}" for v in kw.values())


def evaluate_trained(model, cfg: PretrainConfig, tok, train: torch.Tensor, test: torch.Tensor,
                     calib_batches: int = 16, batch_size: int = 16, act_estimator="running_minmax",
                     ptq_seeds=(0,), act_estimators=None) -> dict:
    """FP perplexity, outlier statistics on held-out blocks, and W8A8 perplexity.

    W8A8 is run for every range estimator in ``act_estimators`` (default: just ``act_estimator``) and every
    PTQ seed; like the paper we report the best estimator's mean (``ppl_w8a8``, ``ppl_w8a8_std``,
    ``w8a8_estimator``) and keep each estimator's mean as ``ppl_w8a8/<estimator>``.
    """
    out = {"ppl_fp": perplexity(model, test, cfg.kind, tok, batch_size, cfg.seed)}
    stats = outlier_stats(model, held_out_batches(test))
    out.update({k: stats[k] for k in ("max_inf_norm", "avg_kurtosis", "max_kurtosis")})
    per = {}
    for spec in act_estimators or [act_estimator]:
        vals = torch.tensor([w8a8_perplexity(model, cfg, tok, train, test, s, calib_batches, batch_size, spec)
                             for s in ptq_seeds], dtype=torch.float64)
        per[_estimator_label(spec)] = (float(vals.mean()), float(vals.std()) if len(vals) > 1 else 0.0)
    best = min(per, key=lambda k: per[k][0])
    out.update(ppl_w8a8=per[best][0], ppl_w8a8_std=per[best][1], w8a8_estimator=best)
    out.update({f"ppl_w8a8/{k}": v[0] for k, v in per.items()})
    return out


_EVAL_SOURCES = ("experiments/quantizable.py", "models/lm_eval.py", "models/attention_variants.py",
                 "models/anatomy.py", "models/attention_function.py", "analysis/lm_outliers.py", "quant", "recipe")


def evaluation_key(test: torch.Tensor, eval_kw: dict) -> str:
    """A digest of everything an evaluation depends on besides the checkpoint: the settings, the evaluation
    blocks, and the source of the evaluation code (so an edited quantizer never reuses a stale result)."""
    h = hashlib.sha256(json.dumps(eval_kw, sort_keys=True, default=str).encode())
    h.update(test.numpy().tobytes())
    update_with_sources(h, _EVAL_SOURCES)
    return h.hexdigest()[:12]


def evaluate_cached(model, cfg: PretrainConfig, tok, train: torch.Tensor, test: torch.Tensor, **eval_kw) -> dict:
    """:func:`evaluate_trained`, stored beside the checkpoint (``eval-<key>.json``, written atomically) and
    reused when the same trained model is evaluated the same way again — e.g. when a long run resumes."""
    path = cfg.directory() / f"eval-{evaluation_key(test, eval_kw)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = evaluate_trained(model, cfg, tok, train, test, **eval_kw)
    atomic_write_text(path, json.dumps(out))
    return out


def train_and_evaluate(label: str, cfg: PretrainConfig, tok, train: torch.Tensor, test: torch.Tensor,
                       progress: bool = True, **eval_kw) -> tuple[dict, dict]:
    """Pre-train ``cfg`` (or load it from its checkpoint) and evaluate it (or load that evaluation);
    returns (result row, history)."""
    model, history = train_with_tracking(cfg, tok, train, test, progress=progress)
    row = {"label": label, "kind": cfg.kind, "seed": cfg.seed, "softmax": cfg.variant.softmax,
           "gamma": cfg.variant.effective_gamma, "zeta": cfg.variant.zeta, "gate": cfg.variant.gate or "",
           "pi_init": cfg.variant.pi_init if cfg.variant.gate else None, "seq_len": cfg.seq_len,
           "final_loss": history["loss"][-1], **evaluate_cached(model, cfg, tok, train, test, **eval_kw)}
    return row, history


METRICS = ("ppl_fp", "max_inf_norm", "avg_kurtosis", "ppl_w8a8")


def mean_std(rows, by=("label",), metrics=METRICS):
    """Mean and (sample) std over training seeds of each metric, per group (pandas, one row per group)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby(list(by), sort=False)[list(metrics)]
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    out = mean.copy()
    for m in metrics:
        out[f"{m}_std"] = std[m]
    out["n_seeds"] = g.size()
    return out.reset_index()


def relative_log_ppl(ppl: float, reference: float) -> float:
    """Figure 6 (a): relative FP log-perplexity, $\log \mathrm{ppl}_{ref} / \log \mathrm{ppl}$ (> 1 is better)."""
    return math.log(reference) / math.log(ppl)


def run_models(named: dict, seeds, data: dict, progress: bool = True, **eval_kw) -> tuple[list[dict], dict]:
    """Train and evaluate every ``{label: PretrainConfig}`` for every training seed.

    ``data`` maps a sequence length T to its ``(tokenizer, train_blocks, test_blocks)``. Identical configs
    share one checkpoint directory, so a model that appears in several experiments is trained once.
    Returns the result rows and ``{(label, seed): history}``.
    """
    from dataclasses import replace

    rows, histories = [], {}
    for label, cfg in named.items():
        if cfg.seq_len not in data:
            raise ConfigError(f"{label}: no data prepared for sequence length {cfg.seq_len}; have {sorted(data)}")
        tok, train, test = data[cfg.seq_len]
        for seed in seeds:
            row, hist = train_and_evaluate(label, replace(cfg, seed=seed), tok, train, test, progress=progress, **eval_kw)
            rows.append(row)
            histories[(label, seed)] = hist
    return rows, histories


def stored_tables(table) -> dict:
    """The chapter's result tables rebuilt from a stored run's rows (``table.csv``, one row per model and
    seed, tagged by ``experiment``): Table 1 and Table 2 as seed means (:func:`mean_std`), Figures 6 and 7
    as their per-model rows. Lets a quick build show the full run's tables, not only its verdicts.
    Experiments the run did not store are left out."""
    out = {}
    for key in ("table1", "table2"):
        rows = table[table["experiment"] == key] if "experiment" in table else table.iloc[:0]
        if len(rows):
            out[key] = mean_std(rows.to_dict("records")).set_index("label")
    columns = {"figure6": ["seq_len", "alpha", "ppl_fp", "relative log-ppl", "max_inf_norm", "avg_kurtosis"],
               "figure7": ["pi_init", "ppl_fp", "max_inf_norm", "avg_kurtosis", "ppl_w8a8"]}
    for key, cols in columns.items():
        rows = table[table["experiment"] == key] if "experiment" in table else table.iloc[:0]
        if len(rows):
            shown = rows[[c for c in cols if c in rows]].reset_index(drop=True)
            out[key] = shown.astype({"seq_len": int}) if "seq_len" in shown else shown
    return out


PAPER_MODEL = {"encoder": "BERT", "decoder": "OPT"}
PAPER_METRIC = {"ppl_fp": "FP ppl", "max_inf_norm": "max inf-norm", "avg_kurtosis": "avg kurtosis",
                "ppl_w8a8": "W8A8 ppl"}


def table2_setting(label: str) -> str:
    """Our Table 2 label as the paper's row: our encoder is its BERT, our decoder its OPT."""
    kind, attention = label.split(" ", 1)
    return f"{PAPER_MODEL[kind]} {attention}"


def table1_setting(label: str) -> str:
    """Our Table 1 label ("vanilla", "γ=-0.03·128/T, ζ=1") as the paper's row ("gamma=-0.03, zeta=1")."""
    if label == "vanilla":
        return "gamma=0, zeta=1 (vanilla)"
    gamma, zeta = (part.split("=", 1)[1] for part in label.split(", "))
    return f"gamma={gamma.split('·')[0]}, zeta={zeta}"


def beside_paper(table, paper, setting_of):
    """A table of ours beside the paper's numbers, one row per our label (and the paper's row it
    matches, ``setting_of(label)``). ``table`` is our seed-mean table indexed by label with
    ``<metric>_std`` columns (:func:`mean_std`); ``paper`` the transcribed rows of the same table.
    Columns: for each metric, the paper's value and ours as "mean ± std" over training seeds (the
    mean alone for one seed).
    The absolute values are not comparable (models a hundred times smaller, trained on far fewer
    tokens); the comparable quantity is each fix's effect relative to its model's vanilla row."""
    import pandas as pd

    paper = paper.pivot(index="setting", columns="metric", values="value")
    rows = {}
    for label in table.index:
        setting = setting_of(label)
        row = {}
        for ours, theirs in PAPER_METRIC.items():
            row[(theirs, "paper")] = paper.loc[setting, theirs] if setting in paper.index else float("nan")
            mean, n = float(table.loc[label, ours]), int(table.loc[label, "n_seeds"]) if "n_seeds" in table else 1
            std = float(table.loc[label, f"{ours}_std"]) if f"{ours}_std" in table and n > 1 else None
            row[(theirs, "ours")] = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
        rows[label] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out
