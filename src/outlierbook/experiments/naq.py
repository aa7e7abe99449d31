"""The NAQ chapter's experiments: threshold sweeps on the embedded encoder, MAC shares, energy."""

from __future__ import annotations

import itertools
import math

import pandas as pd
from tqdm import tqdm

from ..naq.macs import relative_energy
from ..naq.wrapper import naq_executing
from ..nbsetup import progress_enabled

INF = math.inf


def macs_from_counts(stats, config) -> dict:
    """Pre-nonlinearity and other MACs of the evaluated data, from NAQ's element counts.

    FFN1 elements = tokens × d_ff per layer, each d MACs; score elements = (query, key) pairs × heads per
    layer, each d_head MACs. The rest per token and layer: Q, K, V, output ($4d^2$) and FFN2 ($d\\,d_{ff}$);
    the context product has as many MACs as the scores.
    """
    d, dff = config.hidden_size, config.intermediate_size
    d_head = d // config.num_attention_heads
    low_ffn, tot_ffn = stats.counts["ffn"]
    low_att, tot_att = stats.counts["attention"]
    token_layers = tot_ffn / dff
    pre = tot_ffn * d + tot_att * d_head
    avoided = low_ffn * d + low_att * d_head
    other = token_layers * (4 * d * d + d * dff) + tot_att * d_head
    return {"pre_macs": pre, "other_macs": other, "avoided_share": avoided / pre if pre else float("nan"),
            "share_ffn": low_ffn / tot_ffn if tot_ffn else float("nan"),
            "share_attention": low_att / tot_att if tot_att else float("nan"),
            "pre_share_of_all": pre / (pre + other) if pre + other else float("nan")}


def naq_point(setup, t_qp=-INF, t_as=-INF, t_sum=INF, bits: int = 4, max_input: float = 4.0) -> dict:
    """Score the task with NAQ at one threshold setting; shares, MACs and relative energies."""
    with naq_executing(setup.model, t_qp=t_qp, t_as=t_as, t_sum=t_sum, bits=bits, max_input=max_input) as naq:
        value = setup.score(naq)
        m = macs_from_counts(naq.stats, setup.model.config)
    p = m["avoided_share"]
    return {"task": setup.task, "t_qp": t_qp, "t_as": t_as, "t_sum": t_sum, "value": value, **m,
            "energy_vs_fp16": relative_energy(m["pre_macs"], m["other_macs"], p, "fp16"),
            "energy_vs_int8": relative_energy(m["pre_macs"], m["other_macs"], p, "int8")}


def sweep(setup, qp_values, as_values, sum_values, combined_pairs=(), memo=None, **kw) -> pd.DataFrame:
    """T_QP alone (attention in FP), (T_AS, T_sum) alone (FFN in FP), and every T_QP with each
    ``(T_AS, T_sum)`` of ``combined_pairs``. With a :class:`~outlierbook.memo.Memo`, each point is kept on disk
    (a stopped full run resumes at the point in progress)."""
    from ..memo import kept

    points = [(q, -INF, INF) for q in qp_values] + [(-INF, a, s) for a in as_values for s in sum_values]
    points += [(q, a, s) for q, (a, s) in itertools.product(qp_values, combined_pairs) if q != -INF]
    points = list(dict.fromkeys(points))
    rows = []
    for p in tqdm(points, desc=f"NAQ sweep {setup.task}", disable=not progress_enabled()):
        key = {"experiment": "naq_point", "thresholds": [str(v) for v in p], **{k: v for k, v in sorted(kw.items())}}
        row = kept(memo, setup, key, lambda p=p: naq_point(setup, *p, **kw))
        # a stored point comes back with its keys sorted: put them in naq_point's order
        rows.append({**{k: row[k] for k in POINT_ORDER if k in row}, **row})
    return pd.DataFrame(rows)


POINT_ORDER = ("task", "t_qp", "t_as", "t_sum", "value", "pre_macs", "other_macs", "avoided_share", "share_ffn",
               "share_attention", "pre_share_of_all", "energy_vs_fp16", "energy_vs_int8")


def best_within(df: pd.DataFrame, fp_value: float, max_drop: float) -> pd.Series | None:
    """The point that avoids the most pre-nonlinearity FP compute while losing at most ``max_drop``."""
    ok = df[fp_value - df["value"] <= max_drop]
    return None if ok.empty else ok.loc[ok["avoided_share"].idxmax()]


# Our stored metric (``{task}`` per task) for each quantity the paper reports (results/paper/naq.csv).
PAPER_QUANTITIES = {
    "pre-nonlinearity share of computation": "pre_share/T128",
    "share of FP pre-nonlinearity computation avoided (GPTQ LLMs)": "best/{task}/avoided_share",
    "share of FP pre-nonlinearity computation avoided (PTQ4ViT)": "best/{task}/avoided_share",
    "relative energy against an FP16 baseline (GPTQ LLMs)": "best/{task}/energy_vs_fp16",
    "relative energy against an INT8 baseline (PTQ4ViT)": "best/{task}/energy_vs_int8",
}


def paper_text(rows: pd.DataFrame) -> str:
    """The paper's statement of one quantity: a range "0.24–0.62", "more than 0.40" or "lowest reported 0.71"."""
    v = dict(zip(rows["metric"], rows["value"]))
    if "from" in v and "to" in v:
        return f"{v['from']:.2f}–{v['to']:.2f}"
    (what, value), = v.items()
    return f"{what} {value:.2f}"


def beside_paper(metrics: dict, tasks, paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's NAQ numbers beside ours: one row per quantity the paper reports, its statement
    (:func:`paper_text`), its source, and our value per task (``metrics``: a run's flat metrics; our
    avoided share and energies are at each task's best point within one metric point of FP). The
    paper's models are LLMs and ViTs, so ours is read against its range, not matched to a number."""
    rows = []
    for quantity, key in PAPER_QUANTITIES.items():
        theirs = paper[paper["setting"] == quantity]
        row = {"quantity": quantity, "paper": paper_text(theirs),
               "source": f"{theirs['table'].iloc[0]}, {theirs['page'].iloc[0]}"}
        for t in tasks:
            value = metrics.get(key.format(task=t))
            row[t] = float(value) if value is not None else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index("quantity")
