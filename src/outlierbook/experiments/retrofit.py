r"""Retrofitting the Quantizable Transformers fix onto an encoder that is already pretrained.

Chapter 6 pre-trains from scratch, and on this CPU its vanilla models never grow the outliers the 2023 paper
is about. The embedded all-MiniLM-L6-v2 has them (chapter 10: max inf-norm and average kurtosis in the
hundreds to thousands by the paper's own statistics). Here each attention variant is installed on that
pretrained encoder and training **continues**, with the vanilla model trained the same way as the control:

==============================  =====================================================================
``vanilla``                     softmax; the control
``clipped softmax``             $\mathrm{clip}((\zeta-\gamma)\,\mathrm{softmax} + \gamma, 0, 1)$, γ = −α/T ramped in from 0
``gated attention``             the linear gate as the authors set it up for fine-tuning, the identity
                                at step 0 (:func:`~outlierbook.models.attention_variants.nearly_open_gate`)
``softmax + 1``                 an implicit zero-logit, zero-value key (not in the four papers)
==============================  =====================================================================

Objective: masked LM on the book's pre-training text (:func:`corpus`, the pretrained model's own
tokenizer), with a new MLM head that first trains alone (``freeze_encoder_steps``; see
:func:`outlierbook.models.pretrain.retrofit_model` for its initialisation). Every ``track_every`` steps
:func:`tracker` logs the 2023 paper's outlier statistics, the share of live attention rows, and the no-op
statistics of chapter 3 (attention mass on delimiters, value norms of delimiters against other tokens).
The trained model is then evaluated as chapter 6 evaluates its own: FP perplexity, outlier statistics and
W8A8 perplexity with the best range estimator (:func:`outlierbook.experiments.quantizable.evaluate_cached`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..analysis.attention import attention_records
from ..analysis.lm_outliers import outlier_stats
from ..data.corpus import training_texts, wikitext2
from ..errors import ConfigError
from ..models.attention_variants import AttentionVariant, live_row_shares, nearly_open_gate
from ..models.lm_eval import perplexity
from ..models.load import EMBEDDED
from ..models.pretrain import PretrainConfig, document_separator, pretrain, token_blocks
from .quantizable import evaluate_cached, held_out_batches

# The paper's BERT setting: γ = −0.025 at T = 128, i.e. α = 3.2.
CLIPPED_ALPHA = 3.2


def variants(seq_len: int) -> dict[str, AttentionVariant]:
    """The four attention variants of the retrofit, by label (see the module docstring)."""
    return {"vanilla": AttentionVariant(),
            "clipped softmax": AttentionVariant(softmax="clipped", alpha=CLIPPED_ALPHA, seq_len=seq_len),
            "gated attention": nearly_open_gate(),
            "softmax + 1": AttentionVariant(softmax="plus_one")}


def configs(model: str = EMBEDDED, **settings) -> dict[str, PretrainConfig]:
    """One :class:`PretrainConfig` per variant, continuing ``model``; ``settings`` are PretrainConfig fields
    (steps, batch_size, lr, seq_len, freeze_encoder_steps, gamma_ramp, track_every, ...)."""
    bad = (set(settings) - set(PretrainConfig.__dataclass_fields__)) | ({"init", "variant", "kind"} & set(settings))
    if bad:
        raise ConfigError(f"not a retrofit setting: {', '.join(sorted(bad))}; "
                          "give PretrainConfig fields other than init, variant and kind")
    base = PretrainConfig(kind="mlm", init=model, **settings)
    return {label: replace(base, variant=v) for label, v in variants(base.seq_len).items()}


def start_config(cfg: PretrainConfig) -> PretrainConfig:
    """The common starting point of every variant: the vanilla encoder whose MLM head alone was trained for
    ``freeze_encoder_steps`` (the encoder untouched), so "start" and "end" are measured the same way."""
    if cfg.freeze_encoder_steps < 1:
        raise ConfigError("the start of a retrofit is the MLM head trained alone: set freeze_encoder_steps >= 1")
    return replace(cfg, variant=AttentionVariant(), steps=cfg.freeze_encoder_steps, gamma_ramp=0.0)


def corpus(model: str = EMBEDDED, seq_len: int = 128, sources=("bbc", "bible"), eval_blocks: int | None = 256):
    """The pretrained model's tokenizer, the book's pre-training text and WikiText-2 as blocks of ``seq_len``."""
    from ..models.load import load_tokenizer

    tok = load_tokenizer(model)
    train = token_blocks(tok, training_texts(sources), seq_len)
    wiki = [p for p in wikitext2("test").split("\n \n") if p.strip()]
    test = token_blocks(tok, wiki, seq_len)
    return tok, train, test if eval_blocks is None else test[:eval_blocks]


@torch.no_grad()
def noop_statistics(model, batch, delimiter_ids) -> dict:
    r"""Chapter 3's no-op picture, averaged over layers and heads: the attention mass real queries put on
    delimiter keys, and the mean value-vector norm $\lVert v_k\rVert$ of delimiter keys over that of the other keys
    (the paper's no-op heads attend to delimiters whose values are small, so that $\sum_k p_{qk} v_k \approx 0$)."""
    is_delim = torch.isin(batch["input_ids"], torch.tensor(sorted(delimiter_ids)))
    records = attention_records(model, {k: v for k, v in batch.items() if k != "labels"})
    mass, ratio = [], []
    for r in records:
        p = r["probs"]  # [B, H, T, T]
        mass.append(float((p * is_delim[:, None, None, :]).sum(-1).mean()))
        norms = r["values"].norm(dim=-1)  # [B, H, T]
        d, o = norms.transpose(1, 2)[is_delim], norms.transpose(1, 2)[~is_delim]
        ratio.append(float(d.mean() / o.mean()) if len(d) and len(o) else float("nan"))
    return {"delimiter_mass": sum(mass) / len(mass), "delimiter_value_norm_ratio": sum(ratio) / len(ratio)}


def delimiter_ids(tokenizer) -> set[int]:
    """The token that joins the documents of a block (the separator), "." and "," in the tokenizer's ids."""
    return set(tokenizer.convert_tokens_to_ids([document_separator(tokenizer), ".", ","]))


def tracker(test: torch.Tensor, tokenizer, n_blocks: int = 16, quality=None):
    """``track(model) -> dict`` for :func:`~outlierbook.models.pretrain.pretrain`: outlier statistics (the 2023
    paper's) and live attention rows on a fixed batch of held-out blocks, and :func:`noop_statistics`; with
    ``quality(model) -> dict`` (e.g. :func:`lm_quality`), its entries too."""
    probe = held_out_batches(test, n=1, batch_size=n_blocks)
    delims = delimiter_ids(tokenizer)

    def track(model):
        with live_row_shares(model) as shares:
            s = outlier_stats(model, probe)
        return {"max_inf_norm": s["max_inf_norm"], "avg_kurtosis": s["avg_kurtosis"],
                "live_rows": sum(shares) / len(shares), **noop_statistics(model, probe[0], delims),
                **(quality(model) if quality is not None else {})}

    return track


def lm_quality(cfg: PretrainConfig, tok, train: torch.Tensor, blocks: torch.Tensor, calib_batches: int = 2,
               batch_size: int = 16, act_estimators=("running_minmax",)):
    r"""``quality(model) -> dict`` for :func:`tracker`: FP perplexity on ``blocks`` and the W8A8 perplexity of
    the best of ``act_estimators`` (one calibration subset, PTQ seed 0) — the outcome's quality columns on a
    small fixed set, cheap enough to log during training. Training is not disturbed: the model is quantized as a
    copy and the evaluation draws no numbers from the global random state."""
    from .quantizable import _estimator_label, w8a8_perplexity

    def quality(model):
        fp = perplexity(model, blocks, cfg.kind, tok, batch_size, cfg.seed)
        per = {_estimator_label(e): w8a8_perplexity(model, cfg, tok, train, blocks, 0, calib_batches, batch_size, e)
               for e in act_estimators}
        best = min(per, key=per.get)
        return {"ppl_fp": fp, "ppl_w8a8": per[best], "w8a8_estimator": best}

    return quality


def retrofit_and_evaluate(label: str, cfg: PretrainConfig, tok, train: torch.Tensor, test: torch.Tensor,
                          progress: bool = True, **eval_kw) -> tuple[dict, dict]:
    """Continue training ``cfg`` (or resume it from its checkpoint; a finished run is loaded) with
    :func:`tracker` — and :func:`lm_quality` on the tracker's blocks when ``cfg.track_quality`` — then evaluate
    it as chapter 6 does (stored beside the checkpoint); returns (result row, history)."""
    quality = None
    if cfg.track_quality:
        quality = lm_quality(cfg, tok, train, test[:16], calib_batches=min(2, eval_kw.get("calib_batches", 2)),
                             act_estimators=eval_kw.get("act_estimators") or ("running_minmax",))
    model, history = pretrain(cfg, tok, train, track=tracker(test, tok, quality=quality), progress=progress)
    row = {"label": label, "seed": cfg.seed, "steps": cfg.steps, "softmax": cfg.variant.softmax,
           "gate": cfg.variant.gate or "", "final_loss": history["loss"][-1] if history["loss"] else float("nan"),
           **evaluate_cached(model, cfg, tok, train, test, **eval_kw)}
    return row, history


# ------------------------------------------------------------------ many runs, and the outcome table

def run_all(named: dict, seeds, tok, train: torch.Tensor, test: torch.Tensor, progress: bool = True,
            stage: str = "end", **eval_kw) -> tuple[list[dict], dict]:
    """:func:`retrofit_and_evaluate` for every ``{label: PretrainConfig}`` and training seed; returns the result
    rows (tagged with ``stage``) and ``{(label, seed): history}``. Each run resumes from its own checkpoint set."""
    rows, histories = [], {}
    for label, cfg in named.items():
        for seed in seeds:
            row, hist = retrofit_and_evaluate(label, replace(cfg, seed=seed), tok, train, test, progress=progress,
                                              **eval_kw)
            rows.append({**row, "stage": stage})
            histories[(label, seed)] = hist
    return rows, histories


OUTCOME = ("ppl_fp", "max_inf_norm", "avg_kurtosis", "ppl_w8a8")


def outcome(rows: list[dict], metrics=OUTCOME):
    """Mean and std over training seeds per label and stage (``start`` / ``end``), one row per label."""
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby(["label", "stage"], sort=False)[list(metrics)]
    mean, std = g.mean(), g.std(ddof=1)
    out = mean.join(std, rsuffix="_std")
    out["n_seeds"] = g.size()
    return out.reset_index()


# ------------------------------------------------------------------ the task objective (SST-2)

def task_configs(model: str = EMBEDDED, task: str = "sst2", seq_len: int = 128, **settings) -> dict:
    """One :class:`~outlierbook.models.tasks.FinetuneConfig` per variant (``settings``: its fields, e.g. steps,
    batch_size, lr, gamma_ramp, track_every, seed); ``gamma_ramp`` applies to the clipped softmax only."""
    from ..models.tasks import FinetuneConfig

    ramp = settings.pop("gamma_ramp", 0.0)
    unknown = set(settings) - set(FinetuneConfig.__dataclass_fields__) | ({"model", "task", "variant"} & set(settings))
    if unknown:
        raise ConfigError(f"not a task retrofit setting: {', '.join(sorted(unknown))}")
    return {label: FinetuneConfig(model=model, task=task, variant=v, gamma_ramp=ramp if v.softmax == "clipped" else 0.0,
                                  **settings)
            for label, v in variants(seq_len).items()}


def sentence_probe(setup, n: int = 32, seed: int = 0) -> list[dict]:
    """``n`` evaluation sentences of ``setup``, one unpadded sequence each (the 2023 statistics flatten
    tokens × features per sequence, so padding would enter them)."""
    from ..models.tasks import encode, subsample

    data = subsample(setup.eval_data, n, seed=seed)
    out = []
    for i in range(len(data)):
        b = None if data.text_b is None else [data.text_b[i]]
        out.append(encode(setup.tokenizer, [data.text_a[i]], b, 128))
    return out


def task_tracker(probe: list[dict], tokenizer, quality=None):
    """``track(model) -> dict`` for a task run: the 2023 statistics and live rows on ``probe``, and the no-op
    statistics on its first sentences (padding-free, one at a time); with ``quality(model) -> dict`` (e.g.
    :func:`task_quality`), its entries too."""
    delims = set(tokenizer.convert_tokens_to_ids([tokenizer.sep_token, tokenizer.cls_token, ".", ","]))

    def track(model):
        with live_row_shares(model) as shares:
            s = outlier_stats(model, probe)
        noop = [noop_statistics(model, b, delims) for b in probe[:8]]
        return {"max_inf_norm": s["max_inf_norm"], "avg_kurtosis": s["avg_kurtosis"],
                "live_rows": sum(shares) / len(shares),
                **{k: sum(n[k] for n in noop) / len(noop) for k in noop[0]},
                **(quality(model) if quality is not None else {})}

    return track


def task_quality(setup, calibration: list[dict], n: int = 128, act_estimators=("running_minmax",), seed: int = 0):
    """``quality(model) -> dict`` for :func:`task_tracker`: the FP metric and the W8A8 metric of the best of
    ``act_estimators`` (:func:`task_outcome`'s recipe) on ``n`` fixed evaluation examples of ``setup`` — cheap
    enough to log during fine-tuning. The model is quantized as a copy; its train/eval mode is restored."""
    from ..models.tasks import subsample

    small = replace(setup, eval_data=subsample(setup.eval_data, n, seed=seed))

    def quality(model):
        return {"fp": small.score(model), **best_w8a8(small, model, calibration, act_estimators)}

    return quality


def best_w8a8(setup, model, calibration: list[dict], act_estimators) -> dict:
    """``{"w8a8", "w8a8_estimator"}``: the task metric after W8A8 PTQ of a copy of ``model`` with each activation
    range estimator (symmetric per-channel weights, asymmetric per-tensor activations, the 2021/2023 placement,
    as chapter 6 quantizes its language models), and the best of them."""
    from ..recipe import Recipe, quantize

    per = {}
    for spec in act_estimators:
        spec = tuple(spec) if isinstance(spec, list) else spec
        recipe = Recipe(bits="W8A8", placement="bondarenko", weight_axis=0, act_estimator=spec)
        per[str(spec)] = setup.score(quantize(model, recipe, calibration))
    best = max(per, key=per.get)
    return {"w8a8": per[best], "w8a8_estimator": best}


def task_outcome(setup, model, probe: list[dict], calibration: list[dict], act_estimators=("running_minmax",)) -> dict:
    """FP metric, the 2023 statistics on ``probe``, and the W8A8 metric after PTQ with the best of
    ``act_estimators`` (:func:`best_w8a8`)."""
    s = outlier_stats(model, probe)
    out = {"fp": setup.score(model), "max_inf_norm": s["max_inf_norm"], "avg_kurtosis": s["avg_kurtosis"]}
    return {**out, **best_w8a8(setup, model, calibration, act_estimators)}


def task_data(task: str = "sst2", model: str = EMBEDDED, eval_limit: int | None = None, seed: int = 0,
              data_source: str = "local"):
    """The task's evaluation data, training split (the calibration pool) and metric for a retrofit, without a
    fine-tuned head: each variant trains its own (:func:`task_configs`). ``setup.model`` is ``None``; score a
    model with ``setup.score(model)``."""
    from ..data.glue import load_task, task_spec
    from ..models.load import load_tokenizer
    from ..models.tasks import TaskSetup, subsample

    spec = task_spec(task)
    if spec.name == "stsb" or spec.num_labels < 2:
        raise ConfigError(f"the task retrofit fine-tunes a classifier: {task!r} is a regression task; use sst2, mrpc or rte")
    eval_data = subsample(load_task(spec.name, "dev", source=data_source), eval_limit, seed)
    return TaskSetup(spec.name, None, load_tokenizer(model), eval_data, load_task(spec.name, "train", source=data_source),
                     "accuracy", checkpoint="retrofit")


_TASK_EVAL_SOURCES = ("experiments/retrofit.py", "analysis/lm_outliers.py", "models/attention_variants.py",
                      "models/anatomy.py", "models/attention_function.py", "quant", "recipe")


def task_outcome_cached(cfg, setup, model, probe: list[dict], calibration: list[dict],
                        act_estimators=("running_minmax",)) -> dict:
    """:func:`task_outcome`, stored beside the fine-tuned checkpoint (``outcome-<key>.json``, written atomically)
    and reused when a resumed run meets a finished model again. The key digests the estimators, the evaluation
    sentences, the probe, the calibration batches and the source of the evaluation code."""
    import hashlib
    import json

    from ..atomic import atomic_write_text
    from ..source_digest import update_with_sources

    h = hashlib.sha256(json.dumps([list(map(str, act_estimators)), setup.task, len(setup.eval_data),
                                   list(setup.eval_data.text_a[:4])], default=str).encode())
    for batch in [*probe, *calibration]:
        h.update(batch["input_ids"].numpy().tobytes())
    update_with_sources(h, _TASK_EVAL_SOURCES)
    path = cfg.path() / f"outcome-{h.hexdigest()[:12]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = task_outcome(setup, model, probe, calibration, act_estimators)
    atomic_write_text(path, json.dumps(out))
    return out


def task_run_all(named: dict, seeds, setup, probe: list[dict], calibration: list[dict],
                 act_estimators=("running_minmax",), progress: bool = True,
                 tracked_examples: int = 128) -> tuple[list[dict], dict]:
    """Fine-tune every ``{label: FinetuneConfig}`` for every seed with :func:`task_tracker` (with
    :func:`task_quality` on ``tracked_examples`` when the config's ``track_quality`` is set; a finished run is loaded from its cache), then score it with :func:`task_outcome_cached`. Returns the rows (stage ``end``) and
    ``{(label, seed): tracked statistics}``."""
    from ..models.tasks import finetune_info, get_finetuned

    plain = task_tracker(probe, setup.tokenizer)
    with_quality = task_tracker(probe, setup.tokenizer, task_quality(setup, calibration, n=tracked_examples,
                                                                     act_estimators=act_estimators))
    rows, histories = [], {}
    for label, cfg in named.items():
        for seed in seeds:
            run = replace(cfg, seed=seed)
            model = get_finetuned(run, progress=progress, track=with_quality if run.track_quality else plain)
            out = task_outcome_cached(run, setup, model, probe, calibration, act_estimators)
            rows.append({"label": label, "seed": seed, "steps": run.steps, "stage": "end", **out})
            histories[(label, seed)] = finetune_info(run).get("track", [])
    return rows, histories


@torch.no_grad()
def start_deviation(model: str, named: dict, batch: dict) -> dict[str, float]:
    r"""How far each variant, installed as training starts, moves the pretrained encoder:
    $\max |h^{v}_L - h_L|$ over the last hidden states of ``batch``. A clipped softmax starts at γ scale 0 (the
    ramp), i.e. at the softmax; the nearly open gate multiplies each head by $\sigma(0)/\tfrac12 = 1$."""
    from ..models.attention_variants import install, set_gamma_scale
    from ..models.load import load_encoder

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    reference = load_encoder(model).eval()(**inputs).last_hidden_state
    out = {}
    for label, variant in named.items():
        m = install(load_encoder(model).eval(), variant)
        if variant.softmax == "clipped":
            set_gamma_scale(m, 0.0)
        out[label] = float((m(**inputs).last_hidden_state - reference).abs().max())
    return out


def effects(rows, control: str = "vanilla", metrics=OUTCOME):
    r"""Each variant's effect against the control trained the same way, and whether it exceeds the seed spread.

    For variant $v$ and metric $m$ over training seeds: $\Delta = \bar m_v - \bar m_0$ and the spread
    $s = \max(s_v, s_0)$, the larger sample std of the two; an effect is *beyond the spread* when
    $|\Delta| > s$. With one seed there is no spread, and nothing is called beyond it. ``rows``: dicts with
    ``label``, ``seed`` and the metrics (one stage)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if control not in set(df["label"]):
        raise ConfigError(f"no rows of the control {control!r}; labels: {', '.join(map(str, df['label'].unique()))}")
    g = df.groupby("label", sort=False)[list(metrics)]
    mean, std, n = g.mean(), g.std(ddof=1), g.size()
    out = []
    for label in mean.index.drop(control):
        for m in metrics:
            spread = max(std.loc[label, m], std.loc[control, m]) if min(n[label], n[control]) > 1 else float("nan")
            delta = mean.loc[label, m] - mean.loc[control, m]
            out.append({"variant": label, "metric": m, "control": mean.loc[control, m], "variant mean": mean.loc[label, m],
                        "Δ": delta, "seed std": spread, "beyond spread": bool(abs(delta) > spread)})
    return pd.DataFrame(out).set_index(["variant", "metric"])


def pi_init_table(gate_rows, end_rows, gated: str = "gated attention", control: str = "vanilla",
                  pi_main: float = 0.5, metrics=OUTCOME):
    r"""QT-7's comparison with every row read at the **same training seeds**: the seeds $S$ of the extra
    $\pi_{init}$ runs (``gate_rows``: dicts with ``pi_init``, ``seed`` and the metrics; rows without a seed are
    ignored). For each $\pi_{init}$ (the gated run of ``end_rows`` at ``pi_main`` included) the mean and std over
    $S$, and the control's mean over $S$. A control averaged over other seeds than the fix would let the seed,
    not $\pi_{init}$, decide the FP clause.

    Returns ``(table indexed by pi_init with <metric> and <metric>_std columns and n_seeds, control means)``."""
    import pandas as pd

    gates = pd.DataFrame(gate_rows)
    gates = gates[gates["seed"].notna()] if "seed" in gates else gates.iloc[0:0]
    if gates.empty:
        raise ConfigError("no π_init runs with a training seed: run the extra π_init values (pi_inits) first")
    seeds = sorted(set(gates["seed"].astype(int)))
    ends = pd.DataFrame(end_rows)
    ends = ends[ends["seed"].notna() & ends["seed"].astype(float).isin(seeds)]
    missing = [lab for lab in (gated, control) if not (ends["label"] == lab).any()]
    if missing:
        raise ConfigError(f"no end-of-retrofit rows of {', '.join(missing)} at seeds {seeds}: "
                          "QT-7 compares with the control at the extra π_init runs' own seeds")
    main = ends[ends["label"] == gated].assign(pi_init=pi_main)
    rows = pd.concat([gates, main], ignore_index=True)
    g = rows.groupby("pi_init")[list(metrics)]
    table = g.mean().join(g.std(ddof=1), rsuffix="_std")
    table["n_seeds"] = g.size()
    return table.sort_index(), ends[ends["label"] == control][list(metrics)].mean()


def stored_qt7_readings(table, claims: list[dict], seeds) -> dict:
    """A stored full run's QT-7 verdict beside the same stored rows read at matching seeds.

    ``table`` is the run's stored rows (``experiment`` ``pi_init`` and ``mlm``), ``claims`` its stored claim
    checks, ``seeds`` its ``seeds`` parameter. The stored verdict keeps the comparison its run used (named in
    the result); the second reading applies :func:`pi_init_table` and QT-7's rule, under the *outliers present*
    precondition, to the same rows. Nothing is recomputed from a model."""
    from .. import outlier_precondition
    from . import qt_rules

    ends = table[(table["experiment"] == "mlm") & (table["stage"] == "end")].to_dict("records")
    gates = table[table["experiment"] == "pi_init"]
    pis, control = pi_init_table(gates.to_dict("records"), ends)
    passing = qt_rules.robust_pi_inits(pis.reset_index().to_dict("records"), control)
    qt7 = next(c for c in claims if c["id"] == "QT-7")
    if "training seeds" in qt7["ours"]:
        compared = f"every π_init and the control at seeds {qt7['ours']['training seeds']}"
    else:
        gate_seeds = sorted(int(x) for x in gates["seed"].dropna().unique())
        compared = f"π_init runs at seeds {gate_seeds}, the control averaged over seeds {list(seeds)}"
    holds = outlier_precondition.gated(len(passing) >= 2, {"vanilla control": qt_rules.statistics(control)})
    return {"stored verdict": qt7["holds"], "its comparison": compared,
            "same rows, matching seeds": {"π_init that pass": passing, "holds": holds}}
