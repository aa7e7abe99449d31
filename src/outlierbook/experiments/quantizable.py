"""The Quantizable Transformers experiments: data, the live-row check, pre-training with outlier
tracking, and the evaluation of a trained model (FP perplexity, outlier statistics, W8A8 perplexity)."""

from __future__ import annotations

import torch

from ..analysis.lm_outliers import outlier_stats
from ..data.corpus import training_texts, wikitext2
from ..models.attention_variants import attention_modules, live_rows
from ..models.lm_eval import perplexity
from ..models.pretrain import PretrainConfig, build_model, make_batch, pretrain, token_blocks
from ..models.tokenizer import train_tokenizer
from ..quant.calibrate import calibrate
from ..quant.nodes import quantize_model


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
    shares = []

    def grab(module, args, out):
        shares.append(live_rows(out[1]))

    hooks = [m.register_forward_hook(grab) for m in attention_modules(model)]
    try:
        gen = torch.Generator().manual_seed(cfg.seed)
        model(**{k: v for k, v in make_batch(blocks, torch.arange(min(n, len(blocks))), cfg, tok, gen).items()
                 if k != "labels"})
    finally:
        for h in hooks:
            h.remove()
    return sum(shares) / len(shares)


def held_out_batches(blocks: torch.Tensor, n: int = 4, batch_size: int = 16) -> list[dict]:
    return [{"input_ids": blocks[i:i + batch_size], "attention_mask": torch.ones_like(blocks[i:i + batch_size])}
            for i in range(0, min(n * batch_size, len(blocks)), batch_size)]


def train_with_tracking(cfg: PretrainConfig, tok, train: torch.Tensor, test: torch.Tensor, progress: bool = True):
    """Pre-train (or resume) with the outlier statistics of a fixed held-out batch logged during training."""
    probe = held_out_batches(test, n=1)

    def track(model):
        s = outlier_stats(model, probe)
        return {k: s[k] for k in ("max_inf_norm", "avg_kurtosis", "max_kurtosis")}

    return pretrain(cfg, tok, train, track=track, progress=progress)


def evaluate_trained(model, cfg: PretrainConfig, tok, train: torch.Tensor, test: torch.Tensor,
                     calib_batches: int = 16, batch_size: int = 16, act_estimator="running_minmax") -> dict:
    """FP perplexity, outlier statistics and W8A8 perplexity (symmetric weights, asymmetric activations,
    the 2021/2023 placement, ranges from ``calib_batches`` training batches; LM head FP)."""
    out = {"ppl_fp": perplexity(model, test, cfg.kind, tok, batch_size, cfg.seed)}
    stats = outlier_stats(model, held_out_batches(test))
    out.update({k: stats[k] for k in ("max_inf_norm", "avg_kurtosis", "max_kurtosis")})
    qm = quantize_model(model, placement="bondarenko", weight_bits=8, act_bits=8, act_estimator=act_estimator)
    try:
        calibrate(qm, held_out_batches(train, n=calib_batches, batch_size=batch_size))
        qm.set_mode(weights=True, acts=True)
        out["ppl_w8a8"] = perplexity(qm, test, cfg.kind, tok, batch_size, cfg.seed)
    finally:
        qm.remove()
    return out
