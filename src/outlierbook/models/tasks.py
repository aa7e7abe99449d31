"""Task evaluation and cached fine-tuning.

- STS-B zero-shot (the embedded model's own task): mean-pool the last hidden state over the
  attention mask, L2-normalise, score a pair by cosine similarity, report Spearman ×100 against
  the gold scores. all-MiniLM-L6-v2 publishes 82.03 on STS-B test.
- SST-2, MRPC, RTE (and STS-B as regression): a sequence-classification head fine-tuned on the
  CPU with Hugging Face Accelerate (the same loop runs on several GPUs unchanged). Checkpoints
  are cached as safetensors under ``<cache>/finetuned/<model>/<task>/<key>/``, keyed by model,
  task, steps, seed and the other hyper-parameters, so later chapters reuse them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from tqdm import tqdm

from ..atomic import recover, replace_folder
from ..data.glue import TaskData, load_task, task_spec
from ..errors import ConfigError
from ..nbsetup import progress_enabled
from ..paths import cache_dir
from .attention_variants import AttentionVariant
from .load import EMBEDDED, check_finite, default_attention, load_classifier, load_tokenizer, resolve, short_name

# ---------------------------------------------------------------- batching


def encode(tokenizer, text_a, text_b=None, max_length: int = 128) -> dict:
    """Tokenise a batch with right padding (the quantization code assumes right padding).

    ``max_length`` may not exceed the tokenizer's ``model_max_length`` (the model's positions):
    a longer sequence would fail later with a raw size mismatch inside the model."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**6 and max_length > limit:
        raise ConfigError(f"max_length {max_length} is longer than the model's {limit} positions; "
                          f"use max_length <= {limit}")
    enc = tokenizer(list(text_a), None if text_b is None else list(text_b), padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt")
    if "token_type_ids" not in getattr(tokenizer, "model_input_names", ["token_type_ids"]):
        enc.pop("token_type_ids", None)  # RoBERTa-style tokenizers: the model takes no segment ids
    return dict(enc)


def length_sorted_batches(data: TaskData, tokenizer, batch_size: int = 64, max_length: int = 128):
    """Yield ``(indices, inputs)`` in length order (little padding), deterministic."""
    lengths = [len(a) + (len(data.text_b[i]) if data.text_b else 0) for i, a in enumerate(data.text_a)]
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size].tolist()
        b = None if data.text_b is None else [data.text_b[i] for i in idx]
        yield idx, encode(tokenizer, [data.text_a[i] for i in idx], b, max_length)


def _progress(iterable, desc: str, total=None):
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not progress_enabled())


# ---------------------------------------------------------------- STS-B zero-shot


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors over real (unpadded) tokens: Σ_t m_t h_t / Σ_t m_t."""
    m = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.no_grad()
def sentence_embeddings(encoder, tokenizer, sentences, batch_size: int = 64, max_length: int = 256) -> torch.Tensor:
    data = TaskData("sentences", "any", list(sentences), None, [0] * len(sentences))
    out = torch.empty(len(sentences), encoder.config.hidden_size)
    for idx, inputs in _progress(length_sorted_batches(data, tokenizer, batch_size, max_length), "embedding",
                                 total=math.ceil(len(sentences) / batch_size)):
        hidden = encoder(**inputs).last_hidden_state
        out[idx] = torch.nn.functional.normalize(mean_pool(hidden, inputs["attention_mask"]), dim=-1)
    return out


def stsb_zero_shot(encoder, tokenizer, data: TaskData | None = None, split: str = "test", batch_size: int = 64,
                   max_length: int = 256) -> dict:
    """Spearman and Pearson ×100 of cosine similarity against gold STS-B scores."""
    data = data if data is not None else load_task("stsb", split)
    ea = sentence_embeddings(encoder, tokenizer, data.text_a, batch_size, max_length)
    eb = sentence_embeddings(encoder, tokenizer, data.text_b, batch_size, max_length)
    cos = (ea * eb).sum(-1).numpy()
    gold = np.asarray(data.labels, dtype=float)
    return {"spearman": 100 * float(spearmanr(cos, gold).statistic), "pearson": 100 * float(pearsonr(cos, gold).statistic),
            "n": len(data)}


# ---------------------------------------------------------------- classification / regression heads


def metrics_for(task: str, predictions: np.ndarray, labels) -> dict:
    """Accuracy (+ F1 for MRPC) for classification; Spearman/Pearson ×100 for STS-B regression."""
    labels = np.asarray(labels)
    if task_spec(task).kind == "regression":
        return {"spearman": 100 * float(spearmanr(predictions, labels).statistic),
                "pearson": 100 * float(pearsonr(predictions, labels).statistic)}
    pred = predictions.astype(int)
    out = {"accuracy": 100 * float((pred == labels).mean())}
    if task_spec(task).name == "mrpc":
        tp = float(((pred == 1) & (labels == 1)).sum())
        precision = tp / max(float((pred == 1).sum()), 1.0)
        recall = tp / max(float((labels == 1).sum()), 1.0)
        out["f1"] = 100 * (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return out


@torch.no_grad()
def predict(model, tokenizer, data: TaskData, batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Class ids (classification) or scores (regression, clamped to [0, 5]) in the data's order."""
    model.eval()
    regression = model.config.num_labels == 1
    out = np.zeros(len(data), dtype=float)
    for idx, inputs in _progress(length_sorted_batches(data, tokenizer, batch_size, max_length), f"eval {data.task}",
                                 total=math.ceil(len(data) / batch_size)):
        logits = model(**inputs).logits
        out[idx] = logits[:, 0].clamp(0, 5).numpy() if regression else logits.argmax(-1).numpy()
    return out


def evaluate(model, tokenizer, data: TaskData, batch_size: int = 64, max_length: int = 128) -> dict:
    return metrics_for(data.task, predict(model, tokenizer, data, batch_size, max_length), data.labels)


# ---------------------------------------------------------------- fine-tuning (Accelerate)


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run; ``key()`` names its cached checkpoint."""

    model: str = EMBEDDED
    task: str = "sst2"
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-4
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    seed: int = 0
    schedule_steps: int | None = None  # length of the linear decay when the run stops earlier (None: ``steps``)
    variant: AttentionVariant | None = None  # an attention variant installed before fine-tuning (retrofit)
    gamma_ramp: float = 0.0  # clipped softmax: γ ramps linearly from 0 over this fraction of the steps
    track_every: int = 0  # with a tracker: log its statistics every this many steps (0: never)
    track_quality: bool = False  # the tracker also logs FP and W8A8 quality (a different history, so another key)

    def __post_init__(self):
        if self.gamma_ramp and (self.variant is None or self.variant.softmax != "clipped"):
            raise ConfigError("gamma_ramp ramps a clipped softmax in: give variant=AttentionVariant(softmax='clipped', ...)")
        if not 0.0 <= self.gamma_ramp <= 1.0:
            raise ConfigError(f"gamma_ramp is a fraction of the steps in [0, 1], got {self.gamma_ramp}")

    def key(self) -> str:
        d = asdict(self)
        d["model"] = short_name(self.model)
        # keys of runs from before these fields existed are unchanged
        for name, default in (("schedule_steps", None), ("variant", None), ("gamma_ramp", 0.0), ("track_every", 0),
                              ("track_quality", False)):
            if d[name] == default:
                del d[name]
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        return f"steps{self.steps}-seed{self.seed}-{digest}"

    def path(self) -> Path:
        return cache_dir() / "finetuned" / short_name(self.model) / task_spec(self.task).name / self.key()


# Step budgets per profile: quick takes minutes on 2 CPU cores, full is the real run
# (SST-2: one epoch of 67 349 examples at batch 32 = 2105 steps; MRPC/RTE/STS-B: 3 epochs).
BUDGETS = {
    "quick": {"sst2": 100, "mrpc": 40, "rte": 30, "stsb": 100},  # STS-B at 50 steps: Spearman 7 (an untrained head)
    "full": {"sst2": 2105, "mrpc": 345, "rte": 234, "stsb": 540},
}


def budget(task: str, profile: str, **overrides) -> FinetuneConfig:
    """The fine-tuning run of ``task`` in ``profile``.

    Quick: the step budgets above. Full: the same, unless a budget was chosen on held-out training data for
    this model and task (:mod:`outlierbook.models.selection`, stored under ``results/fp_models/``); then
    its learning rate, batch size and epochs, converted to steps of the whole training split."""
    if profile not in BUDGETS:
        raise ConfigError(f"unknown profile {profile!r}; use one of: {', '.join(BUDGETS)}")
    name = task_spec(task).name
    cfg = FinetuneConfig(task=name, steps=BUDGETS[profile][name])
    if profile == "full":
        from .selection import selected_config

        chosen = selected_config(name, overrides.get("model", cfg.model))
        cfg = chosen if chosen is not None else cfg
    return replace(cfg, **overrides)


def finetune(cfg: FinetuneConfig, train: TaskData | None = None, progress: bool = True, data_source: str = "local",
             after_step=None):
    """Fine-tune encoder + a fresh head (see :mod:`outlierbook.models.training` for the loop), with
    ``cfg.variant`` installed first (its γ ramped in over ``cfg.gamma_ramp`` of the steps).

    Returns the trained model (eval mode) and the loss curve.
    """
    from .attention_variants import install, set_gamma_scale
    from .training import decay_groups, train_loader, train_loop

    spec = task_spec(cfg.task)
    torch.manual_seed(cfg.seed)
    train = train if train is not None else load_task(spec.name, "train", source=data_source)
    tokenizer = load_tokenizer(cfg.model)
    model = load_classifier(cfg.model, num_labels=spec.num_labels)
    ramp = int(cfg.gamma_ramp * cfg.steps)
    if cfg.variant is not None:
        install(model, cfg.variant)
        if ramp:
            set_gamma_scale(model, 0.0)

    def each_step(step, m):
        if ramp:
            set_gamma_scale(m, min(1.0, step / ramp))  # the scale the next step trains with
        if after_step is not None:
            after_step(step, m)

    loader = train_loader(train, tokenizer, cfg.steps, cfg.batch_size, cfg.max_length, cfg.seed)
    return train_loop(model, loader, decay_groups(model, cfg.weight_decay), cfg.lr, cfg.steps, cfg.warmup,
                      desc=f"fine-tune {spec.name}", progress=progress, schedule_steps=cfg.schedule_steps,
                      after_step=each_step if (ramp or after_step is not None) else None)


def get_finetuned(cfg: FinetuneConfig, progress: bool = True, data_source: str = "local", track=None):
    """The fine-tuned model for ``cfg``: loaded from the cache, or trained once and cached atomically.

    ``data_source`` ("local" files or the "hub") is not part of the cache key: both are the same GLUE data.
    ``track(model) -> dict`` is logged every ``cfg.track_every`` steps into ``finetune.json`` (``"track"``;
    read it with :func:`finetune_info`). A model with an attention variant comes back with it installed and
    its gates' trained parameters loaded.
    """
    from transformers import AutoModelForSequenceClassification

    path = cfg.path()
    if not (path / "model.safetensors").is_file():
        tracked: list[dict] = []

        def log(step, model):
            if track is not None and cfg.track_every and (step % cfg.track_every == 0 or step == cfg.steps):
                was = model.training
                model.eval()
                tracked.append({"step": step, **track(model)})
                model.train(was)

        model, losses = finetune(cfg, progress=progress, data_source=data_source, after_step=log)
        path.parent.mkdir(parents=True, exist_ok=True)
        recover(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
        model.save_pretrained(tmp, safe_serialization=True)
        dev = evaluate(model, load_tokenizer(cfg.model), load_task(cfg.task, "dev", source=data_source))
        meta = {"config": json.loads(json.dumps(asdict(cfg), default=str)),
                "base": resolve(cfg.model) if cfg.model != EMBEDDED else EMBEDDED,
                "loss_curve": [round(x, 5) for x in losses], "dev": dev, "track": tracked}
        (tmp / "finetune.json").write_text(json.dumps(meta, indent=1))
        replace_folder(tmp, path)  # one step: a killed run leaves no half-saved head
    model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=default_attention(str(path))).eval()
    if cfg.variant is not None:
        _restore_variant(model, cfg.variant, path / "model.safetensors")
    return check_finite(model, str(path))


def _restore_variant(model, variant, weights: Path) -> None:
    """Install ``variant`` on a loaded classifier and load the parameters it adds (the gates), which
    ``from_pretrained`` does not know and skips."""
    from safetensors.torch import load_file

    from .attention_variants import install

    install(model, variant)
    added = {n for n, _ in model.named_parameters() if "outlierbook_" in n}
    stored = {k: v for k, v in load_file(str(weights)).items() if "outlierbook_" in k}
    if set(stored) != added:
        raise ConfigError(f"{weights} does not hold the parameters of {variant}: expected {sorted(added)[:3]}…, "
                          f"found {sorted(stored)[:3]}…; delete the folder to fine-tune again")
    model.load_state_dict(stored, strict=False)


def finetune_info(cfg: FinetuneConfig) -> dict:
    """The cached run's metadata (loss curve, dev metric)."""
    f = cfg.path() / "finetune.json"
    return json.loads(f.read_text()) if f.is_file() else {}


# ---------------------------------------------------------------- one object per task for the chapters


@dataclass
class TaskSetup:
    """What a quantization chapter needs for one task: the FP model, its data and its metric.

    STS-B is evaluated zero-shot on the bare encoder (Spearman ×100); SST-2, MRPC and RTE use the
    cached fine-tuned classification head (accuracy; F1 also recorded for MRPC). ``calibration``
    holds training-split examples only.
    """

    task: str
    model: torch.nn.Module
    tokenizer: object
    eval_data: TaskData
    calibration: TaskData
    metric: str
    zero_shot: bool = False  # STS-B on the bare encoder (cosine of mean-pooled embeddings)
    checkpoint: str = ""  # which FP model: the fine-tuning run's key, or "encoder" (part of memo keys)

    def evaluate(self, model=None) -> dict:
        model = self.model if model is None else model
        if self.zero_shot:
            return stsb_zero_shot(model, self.tokenizer, self.eval_data)
        return evaluate(model, self.tokenizer, self.eval_data)

    def score(self, model=None) -> float:
        return self.evaluate(model)[self.metric]


def subsample(data: TaskData, limit: int | None, seed: int = 0) -> TaskData:
    """A seeded random subset of ``limit`` examples (all of them when ``limit`` is None or larger)."""
    if limit is None or limit >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return data.subset(idx.tolist())


def task_setup(task: str, profile: str, model: str = EMBEDDED, split: str = "dev", eval_limit: int | None = None,
               data_source: str = "local", seed: int = 0, stsb_head: bool = False,
               head: FinetuneConfig | None = None) -> TaskSetup:
    """FP model, evaluation data, calibration pool and metric of one task.

    STS-B is zero-shot on the bare encoder unless ``stsb_head=True``: then a regression head is
    fine-tuned on STS-B's training pairs (cached like the classifiers) and evaluated by Spearman.
    ``head`` replaces the profile's fine-tuning budget (:func:`budget`) with another run, e.g. a shorter
    one for a larger model; it must name the same model and task.
    """
    if head is not None and (short_name(head.model) != short_name(model) or head.task != task_spec(task).name):
        raise ConfigError(f"head fine-tunes {head.model} on {head.task}, but the setup is {model} on {task}; "
                          f"pass a FinetuneConfig with model={model!r} and task={task_spec(task).name!r}")
    spec = task_spec(task)
    tokenizer = load_tokenizer(model)
    eval_data = subsample(load_task(spec.name, split, source=data_source), eval_limit, seed)
    train = load_task(spec.name, "train", source=data_source)
    if spec.name == "stsb" and stsb_head:
        cfg = head or budget("stsb", profile, model=model, seed=seed)
        regressor = get_finetuned(cfg, data_source=data_source)
        return TaskSetup("stsb", regressor, tokenizer, eval_data, train, "spearman", checkpoint=cfg.key())
    if spec.name == "stsb":
        from .load import load_encoder

        sentences = [s for pair in zip(train.text_a, train.text_b) for s in pair]
        calibration = TaskData("stsb", "train", sentences, None, [0.0] * len(sentences))
        return TaskSetup("stsb", load_encoder(model), tokenizer, eval_data, calibration, "spearman", zero_shot=True,
                         checkpoint="encoder")
    cfg = head or budget(spec.name, profile, model=model, seed=seed)
    classifier = get_finetuned(cfg, data_source=data_source)
    return TaskSetup(spec.name, classifier, tokenizer, eval_data, train, "accuracy", checkpoint=cfg.key())
