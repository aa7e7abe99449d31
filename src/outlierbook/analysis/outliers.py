r"""Outlier statistics, with the papers' own definitions.

- **Outlier** (Bondarenko et al. 2021, App. D; 2023, Fig. 1): an element with
  $|x - \mu| > 6\sigma$, where $\mu, \sigma$ are the mean and standard deviation of the whole tensor.
- **Kurtosis** (2023 code, ``utils.py``): per sequence, over all tokens × features,
  $\kappa = \mathbb E[(x-\mu)^4] / (\sigma^4 + 10^{-6})$ with the *unbiased* $\sigma$ — the plain fourth
  standardised moment (a Gaussian gives 3), **not** excess kurtosis. Averaged over sequences.
- **Infinity norm**: per sequence, $\max |x|$ over tokens × features, averaged over sequences (the
  2023 code also reports the maximum over sequences).
- **Per-token range** (2021, Fig. 2a): $\max_j x_{t,j} - \min_j x_{t,j}$ for each token $t$.

Activations are ``[tokens, features]`` tensors of real tokens (see :mod:`.capture`), with the
sequence lengths that split them back into sequences.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import torch

DELIMITERS = ("[SEP]", "[CLS]", ".", ",")


def outlier_mask(x: torch.Tensor, n_std: float = 6.0) -> torch.Tensor:
    x = x.float()
    return (x - x.mean()).abs() > n_std * x.std()


def outlier_counts(x: torch.Tensor, n_std: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Outliers per hidden dimension ``[d]`` and per token ``[N]``."""
    m = outlier_mask(x, n_std)
    return m.sum(0), m.sum(1)


def dims_holding(per_dim: torch.Tensor, share: float = 0.9) -> int:
    """Smallest number of dimensions that together hold ``share`` of all outliers (0 if none)."""
    total = int(per_dim.sum())
    if total == 0:
        return 0
    cum = torch.cumsum(per_dim.sort(descending=True).values, 0)
    return int((cum < share * total).sum()) + 1


def kurtosis(x: torch.Tensor) -> float:
    """Plain (not excess) kurtosis of all elements, the 2023 code's formula."""
    x = x.double().flatten()
    mu = x.mean()
    return float(((x - mu) ** 4).mean() / (x.std() ** 4 + 1e-6))


def split_sequences(x: torch.Tensor, lengths) -> list[torch.Tensor]:
    return list(torch.split(x, list(lengths)))


def sequence_stats(x: torch.Tensor, lengths) -> dict:
    """Kurtosis and infinity norm per sequence; mean over sequences (and max of the norm)."""
    seqs = split_sequences(x, lengths)
    k = [kurtosis(s) for s in seqs]
    inf = [float(s.abs().max()) for s in seqs]
    return {"kurtosis": float(np.mean(k)), "inf_norm": float(np.mean(inf)), "max_inf_norm": float(np.max(inf))}


def token_ranges(x: torch.Tensor) -> torch.Tensor:
    return x.amax(1) - x.amin(1)


def token_share(outliers_per_token: torch.Tensor, tokens: list[str], groups: dict[str, tuple]) -> dict:
    """Share of all outliers that fall on tokens of each group (e.g. delimiters)."""
    total = int(outliers_per_token.sum())
    out = {}
    for label, members in groups.items():
        hit = torch.tensor([t in members for t in tokens])
        out[label] = float(outliers_per_token[hit].sum()) / total if total else float("nan")
    return out


def top_tokens(outliers_per_token: torch.Tensor, tokens: list[str], k: int = 10) -> list[tuple[str, int]]:
    counts: Counter = Counter()
    for t, c in zip(tokens, outliers_per_token.tolist()):
        if c:
            counts[t] += c
    return counts.most_common(k)


def top_dims(values: torch.Tensor, k: int = 10) -> list[int]:
    return torch.argsort(values, descending=True)[:k].tolist()


def gamma_overlap(ln_output: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, k: int = 10) -> dict:
    r"""Outlier Suppression's γ-amplifier test for one LayerNorm.

    $\tilde X = \gamma \odot \hat X + \beta = \gamma \odot X'$ with the non-scaling output $X' = \hat X + \beta/\gamma = \tilde X/\gamma$
    (Outlier Suppression, Eq. 3).
    Returns per-dimension max $|\tilde X|$ and max $|X'|$, and the overlap of the top-``k`` dimensions
    of max $|\tilde X|$ and of $|\gamma|$.
    """
    x_prime = ln_output / gamma
    mx, mxp = ln_output.abs().amax(0), x_prime.abs().amax(0)
    a, b = set(top_dims(mx, k)), set(top_dims(gamma.abs(), k))
    return {"max_abs_x_tilde": mx, "max_abs_x_prime": mxp, "overlap": len(a & b), "shared_dims": sorted(a & b),
            "ratio_x_tilde": float(mx.max() / mx.median()), "ratio_x_prime": float(mxp.max() / mxp.median())}


def tokens_of(batches, tokenizer) -> tuple[list[str], list[int]]:
    """Token strings of the real tokens of ``batches`` (capture order) and the sequence lengths."""
    tokens, lengths = [], []
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"].bool()
        for row, m in zip(ids, mask):
            real = row[m].tolist()
            tokens += tokenizer.convert_ids_to_tokens(real)
            lengths.append(len(real))
    return tokens, lengths


def layer_summary(acts: dict, lengths, n_layers: int, kinds=("ffn.output", "ffn.residual", "ffn.ln", "attention.ln")) -> pd.DataFrame:
    """Kurtosis / infinity norm per layer and kind (the 2023 paper's outlier metrics)."""
    rows = []
    for i in range(n_layers):
        for kind in kinds:
            name = f"layer{i}.{kind}"
            if name in acts:
                rows.append({"layer": i, "kind": kind, **sequence_stats(acts[name], lengths)})
    return pd.DataFrame(rows)
