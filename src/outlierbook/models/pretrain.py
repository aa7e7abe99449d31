r"""Pre-training small language models from scratch (Quantizable Transformers chapter), on Accelerate.

Two families, built from ``transformers`` configs: a **BERT-style encoder** (masked LM, post-LayerNorm,
GELU) and an **OPT-style decoder** (causal LM, pre-LayerNorm, ReLU), with any
:class:`~outlierbook.models.attention_variants.AttentionVariant`. Text: the tokenised training
documents concatenated (separated by ``</s>``) and cut into blocks of ``seq_len`` tokens; MLM masks 15 %
of tokens (80 % ``[MASK]``, 10 % random, 10 % kept).

The loop: AdamW, linear warm-up then linear decay, gradient clipping, optional weight decay on LayerNorm
γ (the OPT recipe's ``--wd_LN_gamma``), an optional linear ramp of the clipped-softmax γ from 0 (``gamma_ramp``,
our remedy for dead attention at initialisation, not the paper's), safetensors checkpoints every ``checkpoint_every`` steps with the
optimizer, scheduler, RNG and data position, **resumed** automatically from the latest one; the loss curve
and the outlier statistics (``track``) are saved as JSON with them.

A checkpoint is **one set**: ``<run>/checkpoint/`` holds ``model.safetensors``, ``state.pt`` and
``history.json`` of the same step, written into a temporary folder and swapped into place in one step
(:func:`outlierbook.atomic.replace_folder`), so a crash at any point resumes from the previous complete
checkpoint, never from weights of one step with the optimizer of another. ``state.pt`` holds only
tensors and plain containers and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import recover, replace_folder, write_synced
from ..errors import ConfigError
from ..paths import cache_dir
from .attention_variants import AttentionVariant, install, set_gamma_scale
from .training import hf_loss, masked_lm_loss, run_steps


@dataclass(frozen=True)
class PretrainConfig:
    kind: str = "mlm"  # "mlm" (BERT-style encoder) or "clm" (OPT-style decoder)
    variant: AttentionVariant = field(default_factory=AttentionVariant)
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    ffn: int = 1024
    seq_len: int = 128
    vocab_size: int = 4096
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: float = 0.05
    weight_decay: float = 0.01
    wd_ln_gamma: bool = False
    gamma_ramp: float = 0.0  # clipped softmax: γ ramps linearly from 0 over this fraction of the steps
    dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 200
    track_every: int = 50
    sources: tuple = ("bbc", "bible")
    init: str | None = None  # retrofit: continue training this pretrained encoder instead of a fresh model
    freeze_encoder_steps: int = 0  # retrofit: for the first steps only the new MLM head learns
    track_quality: bool = False  # the tracker also logs FP and W8A8 quality (a different history, so another key)

    def __post_init__(self):
        if self.kind not in ("mlm", "clm"):
            raise ConfigError(f"unknown model kind {self.kind!r}; use 'mlm' (encoder) or 'clm' (decoder)")
        if self.init is not None and self.kind != "mlm":
            raise ConfigError("retrofitting continues a pretrained encoder with masked LM: use kind='mlm' with init")
        if not 0 <= self.freeze_encoder_steps <= self.steps:
            raise ConfigError(f"freeze_encoder_steps must lie in [0, steps], got {self.freeze_encoder_steps}")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        if not 0.0 <= self.gamma_ramp <= 1.0:
            raise ConfigError(f"gamma_ramp is a fraction of the training steps in [0, 1], got {self.gamma_ramp}")

    def key(self) -> str:
        d = asdict(self)
        d.pop("checkpoint_every")  # how often we save does not change the model (resuming is exact)
        for name in ("gate_init_std", "gate_scale"):  # keys of runs from before these fields existed are unchanged
            if d["variant"][name] == getattr(AttentionVariant, name):
                del d["variant"][name]
        for name, default in (("init", None), ("freeze_encoder_steps", 0), ("track_quality", False)):
            if d[name] == default:
                del d[name]
        digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.kind}-{self.variant.softmax}-{self.variant.gate or 'nogate'}-{digest}"

    def directory(self) -> Path:
        return cache_dir() / "pretrained" / self.key()


def build_model(cfg: PretrainConfig, vocab_size: int, pad_id: int):
    """A freshly initialised (seeded) encoder or decoder with the config's attention variant; with ``cfg.init``,
    the pretrained encoder with a new MLM head (see :func:`retrofit_model`)."""
    from transformers import BertConfig, BertForMaskedLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(cfg.seed)
    if cfg.init is not None:
        return install(retrofit_model(cfg.init, cfg.dropout), cfg.variant)
    if cfg.kind == "mlm":
        model = BertForMaskedLM(BertConfig(
            vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            intermediate_size=cfg.ffn, max_position_embeddings=cfg.seq_len, hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout, pad_token_id=pad_id))
    else:
        model = OPTForCausalLM(OPTConfig(
            vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            ffn_dim=cfg.ffn, max_position_embeddings=cfg.seq_len, word_embed_proj_dim=cfg.hidden, dropout=cfg.dropout,
            attention_dropout=cfg.dropout, pad_token_id=pad_id, do_layer_norm_before=True, activation_function="relu"))
    return install(model, cfg.variant)


def retrofit_model(name: str, dropout: float = 0.1):
    r"""A pretrained BERT-family encoder (``name``: the embedded model, a packaged one or a folder) as a masked LM.

    The encoder keeps its weights. The MLM head is new: its transform (dense $d	o d$, GELU, LayerNorm) is
    initialised as BERT initialises it — weights $\mathcal N(0, 0.02^2)$, biases 0, LayerNorm $\gamma = 1$,
    $eta = 0$ — and its decoder is **tied** to the pretrained word embeddings (the output bias starts at 0), so
    only $d^2 + 3d + |V|$ parameters are untrained. ``freeze_encoder_steps`` then trains that head alone
    before the encoder moves. :func:`build_model` seeds the head's initialisation with the run's seed."""
    from transformers import AutoConfig, BertForMaskedLM

    from .load import resolve

    path = resolve(name)
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "bert":
        raise ConfigError(f"retrofitting continues a BERT encoder with masked LM; {name} is a {config.model_type} "
                          "model")
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    model = BertForMaskedLM.from_pretrained(path, config=config)
    model.tie_weights()
    return model


def encoder_parameters(model) -> list:
    """Every parameter of a masked LM except its MLM head's (``cls.``): what ``freeze_encoder_steps`` freezes."""
    return [p for n, p in model.named_parameters() if not n.startswith("cls.")]


def document_separator(tokenizer) -> str:
    """The token that joins documents in a block: ``</s>``, or a WordPiece tokenizer's separator (``[SEP]``)."""
    return "</s>" if "</s>" in tokenizer.get_vocab() else tokenizer.sep_token


def token_blocks(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """All documents tokenised, joined by :func:`document_separator`, cut into ``[n_blocks, seq_len]`` (the
    tail is dropped)."""
    eos = tokenizer.convert_tokens_to_ids(document_separator(tokenizer))
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += enc + [eos]
    n = len(ids) // seq_len
    if n == 0:
        raise ConfigError(f"the text has {len(ids)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def mask_tokens(input_ids: torch.Tensor, tokenizer, generator: torch.Generator, p: float = 0.15) -> dict:
    """BERT's masking: choose ``p`` of the tokens; of those 80 % → [MASK], 10 % → random, 10 % kept."""
    labels = input_ids.clone()
    chosen = torch.rand(input_ids.shape, generator=generator) < p
    labels[~chosen] = -100
    ids = input_ids.clone()
    r = torch.rand(input_ids.shape, generator=generator)
    ids[chosen & (r < 0.8)] = tokenizer.mask_token_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    ids[rand] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[rand]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def make_batch(blocks: torch.Tensor, idx, cfg: PretrainConfig, tokenizer, generator) -> dict:
    x = blocks[idx]
    if cfg.kind == "mlm":
        return mask_tokens(x, tokenizer, generator)
    return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}


def _param_groups(model, cfg: PretrainConfig):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        is_ln = "LayerNorm" in n or "layer_norm" in n
        if n.endswith("bias") or (is_ln and not cfg.wd_ln_gamma):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


CHECKPOINT = "checkpoint"


def save_checkpoint(out: Path, model, state: dict, history: dict) -> Path:
    """Write weights, optimizer/scheduler/RNG state and history of one step as one set."""
    from safetensors.torch import save_model

    target = out / CHECKPOINT
    recover(target)
    new = Path(tempfile.mkdtemp(dir=out, prefix=f".{CHECKPOINT}.tmp-{os.getpid()}-"))
    try:
        save_model(model, str(new / "model.safetensors"))  # handles tied weights (MLM decoder = word embeddings)
        torch.save(state, new / "state.pt")
        write_synced(new / "history.json", json.dumps(history, indent=1))
        replace_folder(new, target)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return target


def load_checkpoint(out: Path, model) -> tuple[dict, dict] | None:
    """``(state, history)`` of the last complete checkpoint, with its weights loaded into ``model``;
    ``None`` when there is none."""
    from safetensors.torch import load_model

    target = out / CHECKPOINT
    recover(target)
    if not (target / "state.pt").is_file():
        return None
    load_model(model, target / "model.safetensors")
    state = torch.load(target / "state.pt", weights_only=True)
    return state, json.loads((target / "history.json").read_text())


def pretrain(cfg: PretrainConfig, tokenizer, blocks: torch.Tensor, track=None, progress: bool = True):
    """Train (or resume) ``cfg``; returns ``(model, history)``; ``track(model) -> dict`` is logged every
    ``track_every`` steps (e.g. outlier statistics on a fixed batch)."""
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    out = cfg.directory()
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, len(tokenizer), tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * cfg.steps), cfg.steps)
    history = {"config": json.loads(json.dumps(asdict(cfg), default=str)), "loss": [], "track": []}
    start = 0
    resumed = load_checkpoint(out, model)
    if resumed is not None:
        state, history = resumed
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        torch.set_rng_state(state["torch_rng"])  # dropout continues exactly where it stopped
    accelerator = Accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    n = blocks.shape[0]
    order = torch.cat([torch.randperm(n, generator=order_gen) for _ in range(cfg.steps * cfg.batch_size // n + 1)])
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1)

    def checkpoint(step: int) -> None:
        save_checkpoint(out, accelerator.unwrap_model(model),
                        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                         "torch_rng": torch.get_rng_state()}, history)

    model.train()
    ramp_steps = int(cfg.gamma_ramp * cfg.steps) if cfg.variant.softmax == "clipped" else 0

    frozen_part = encoder_parameters(accelerator.unwrap_model(model)) if cfg.freeze_encoder_steps else []

    def batches():
        for step in range(start, cfg.steps):
            for p in frozen_part:  # the head's warm-up: the encoder learns from step freeze_encoder_steps on
                p.requires_grad_(step >= cfg.freeze_encoder_steps)
            if ramp_steps:
                set_gamma_scale(model, min(1.0, step / ramp_steps))
            mask_gen.manual_seed(cfg.seed + 1 + step)  # masking depends on the step only: resumable
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            yield step, make_batch(blocks, idx, cfg, tokenizer, mask_gen)

    def after_step(step: int, loss: float) -> None:
        history["loss"].append(loss)
        if track is not None and ((step + 1) % cfg.track_every == 0 or step + 1 == cfg.steps):
            model.eval()
            history["track"].append({"step": step + 1, **track(accelerator.unwrap_model(model))})
            model.train()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint(step + 1)

    loss_of = masked_lm_loss if cfg.kind == "mlm" else hf_loss
    run_steps(model, batches(), loss_of, optimizer, scheduler, accelerator, desc=f"pre-train {cfg.key()}",
              progress=progress, initial=start, total=cfg.steps, after_step=after_step)
    if ramp_steps:
        set_gamma_scale(model, 1.0)
    return accelerator.unwrap_model(model).eval(), history
