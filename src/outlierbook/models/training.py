r"""The one training loop of the book, on Accelerate.

:func:`run_steps` is the loop itself: for each batch, $\ell = $ ``loss_of(model, batch)``, backward,
clip the gradient norm, one optimiser and one scheduler step. Every trainer in the book goes through
it: fine-tuning and quantization-aware training (:func:`train_loop`: AdamW, linear warm-up then linear
decay to zero, clipping at 1.0, the Hugging Face head's own loss), pre-training
(:mod:`outlierbook.models.pretrain`: the same, plus checkpoints and resumption) and Token-Wise
Clipping's fine stage (:mod:`outlierbook.methods.token_wise_clipping`: Adam on the ranges only,
cosine decay, the MSE to the FP model's outputs, no clipping). ``Accelerator`` makes the same loop
run on one CPU here and on several GPUs (``accelerate launch``) unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from ..data.glue import TaskData, task_spec
from ..nbsetup import progress_enabled


def sample_order(n_examples: int, steps: int, batch_size: int, seed: int) -> list[int]:
    """Example indices for ``steps`` batches: seeded permutations of the data, concatenated (epochs)."""
    generator = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    order = torch.cat([torch.randperm(n_examples, generator=generator) for _ in range(math.ceil(needed / n_examples))])
    return order[:needed].tolist()


def train_loader(train: TaskData, tokenizer, steps: int, batch_size: int, max_length: int, seed: int):
    """A DataLoader that tokenises labelled batches on the fly (right padding)."""
    from .tasks import encode

    kind = task_spec(train.task).kind

    def collate(indices):
        b = None if train.text_b is None else [train.text_b[i] for i in indices]
        inputs = encode(tokenizer, [train.text_a[i] for i in indices], b, max_length)
        dtype = torch.float32 if kind == "regression" else torch.long
        inputs["labels"] = torch.tensor([train.labels[i] for i in indices], dtype=dtype)
        return inputs

    order = sample_order(len(train), steps, batch_size, seed)
    return torch.utils.data.DataLoader(order, batch_size=batch_size, shuffle=False, collate_fn=collate)


NO_DECAY = ("bias", "LayerNorm.weight", "layernorm.weight", "norm.weight")


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not n.endswith(NO_DECAY)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n.endswith(NO_DECAY)], "weight_decay": 0.0},
    ]


def train_loop(model, loader, groups: list[dict], lr: float, steps: int, warmup: float, desc: str,
               progress: bool = True, schedule_steps: int | None = None, after_step=None):
    """Run the loop; returns ``(unwrapped model in eval mode, per-step losses)``.

    The learning rate rises linearly over the first ``warmup · S`` steps and falls linearly to zero at step
    ``S = schedule_steps`` (default: ``steps``, the loader's length). A run may stop before ``S``: that is
    how a budget chosen at an epoch of a longer schedule is reproduced. ``after_step(step, model)`` is
    called after every optimiser step with the unwrapped model (e.g. to evaluate a held-out split at epoch
    ends); it must leave the model as it found it (train mode)."""
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    accelerator = Accelerator()
    optimizer = torch.optim.AdamW(groups, lr=lr)
    total = schedule_steps or steps
    if total < steps:
        raise ValueError(f"schedule_steps {total} is shorter than the run's {steps} steps; the rate would reach zero early")
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup * total), total)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    after = None if after_step is None else (lambda step, loss: after_step(step + 1, accelerator.unwrap_model(model)))
    losses = run_steps(model, enumerate(loader), hf_loss, optimizer, scheduler, accelerator, desc=desc,
                       progress=progress, total=len(loader), after_step=after)
    return accelerator.unwrap_model(model).eval(), losses


def hf_loss(model, batch) -> torch.Tensor:
    """The loss a Hugging Face model computes itself from ``labels`` in the batch."""
    return model(**batch).loss


def masked_lm_loss(model, batch) -> torch.Tensor:
    r"""A BERT masked-LM loss that projects only the labelled tokens onto the vocabulary.

    .. math:: \ell = \frac{1}{|M|} \sum_{t \in M} -\log \operatorname{softmax}(W h_t + b)_{y_t},
              \qquad M = \{t : y_t \ne -100\}

    the same mean cross-entropy as ``BertForMaskedLM(**batch).loss``, which projects every token and then
    ignores the unlabelled ones. With 15 % of tokens labelled and a 30 522-word vocabulary the projection is
    over half of MiniLM's training cost, so this skips about 85 % of it. Other models: their own loss."""
    if not (hasattr(model, "bert") and hasattr(model, "cls")):
        return hf_loss(model, batch)
    labels = batch["labels"]
    hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
    chosen = labels != -100
    return torch.nn.functional.cross_entropy(model.cls(hidden[chosen]), labels[chosen])


def run_steps(model, steps, loss_of, optimizer, scheduler, accelerator, desc: str, progress: bool = True,
              clip: float | None = 1.0, initial: int = 0, total: int | None = None, before_step=None,
              after_step=None) -> list[float]:
    """The loop every trainer shares; returns this call's per-step losses.

    ``steps`` yields ``(step, batch)``; for each: ``before_step(step)``, $\ell$ = ``loss_of(model, batch)``,
    backward, gradient norm clipped at ``clip`` (``None``: not clipped), optimiser step, scheduler step,
    gradients cleared, then ``after_step(step, loss)``. Gradients are also cleared before the first step,
    so parameters that were trained before start clean. ``model``, ``optimizer`` and ``scheduler`` are
    the ones ``accelerator`` prepared; ``initial``/``total`` only position the progress bar (resumed runs).
    """
    losses: list[float] = []
    optimizer.zero_grad()
    shown = progress and progress_enabled() and accelerator.is_local_main_process
    bar = tqdm(steps, desc=desc, initial=initial, total=total, disable=not shown)
    for step, batch in bar:
        if before_step is not None:
            before_step(step)
        loss = loss_of(model, batch)
        accelerator.backward(loss)
        if clip is not None:
            accelerator.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(step, losses[-1])
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses
