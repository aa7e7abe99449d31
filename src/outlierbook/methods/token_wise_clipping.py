r"""Token-Wise Clipping (Wei et al. 2022, §4.2, Algorithm 1; notes §1.5): coarse and fine stages.

For each candidate token quantile $p$ on a grid $p_i = 1 - i\cdot\text{step}$, every activation node
(except the attention probabilities, which the authors exempt) is recalibrated on **FP**
activations with :class:`~outlierbook.quant.estimators.TokenWiseClip` ``(p)`` (the per-token extremes
are recorded once and every candidate's range derived from them, which gives the same ranges); then only the
activation quantizers are switched on (weights stay FP, as in the authors' code) and the loss is
$\sum_{\text{batches}} \mathrm{MSE}(f_q(x), f(x))$ between the quantized and the FP model outputs.
The $p$ with the smallest loss wins and its ranges stay in the model.

Grid (the authors' ``cac_step_iters``): $\text{step} = \min(0.01, \mathrm{round}_{2}(128\cdot32\cdot0.01/(B\,T)))$
and $\lfloor\{8\!:0.1,\ 6\!:0.3,\ 4\!:0.9\}[b]/\text{step}\rfloor$ candidates — 30 at 6 bits for GLUE
(B = 32, T = 128).

**Fine stage** (``learn_scales``): starting from the coarse ranges, the activation scales and zero
points become learnable (LSQ+, with LSQ's gradient scaling) and are trained with Adam (lr 1e-5,
cosine annealing to 0, 3 epochs over the calibration batches) on the same output MSE, weights in FP.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..models.training import run_steps
from ..quant.estimators import TokenExtremes
from ..quant.nodes import QuantizedModel

SPAN = {8: 0.1, 6: 0.3, 4: 0.9}


def round_sig(x: float, digits: int = 2) -> float:
    return 0.0 if x == 0 else round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def grid(bits: int, batch_size: int = 32, seq_len: int = 128) -> list[float]:
    """The authors' candidate quantiles for a bit-width and batch shape."""
    if bits not in SPAN:
        raise ConfigError(f"token-wise clipping's grid is defined for 4, 6 and 8 bits, not {bits}")
    step = min(0.01, round_sig(128 * 32 * 0.01 / (batch_size * seq_len)))
    iters = int(round(SPAN[bits] / step, 6))
    return [round(1 - i * step, 6) for i in range(iters)]


def _output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


@torch.no_grad()
def output_loss(qm: QuantizedModel, batches, fp_outputs) -> float:
    total = 0.0
    for batch, ref in zip(batches, fp_outputs):
        out = _output(qm(**batch))
        if out.dim() == 3:  # token outputs: compare real tokens only
            mask = batch["attention_mask"].bool()
            out, ref = out[mask], ref[mask]
        total += float(torch.nn.functional.mse_loss(out, ref))
    return total


@torch.no_grad()
def coarse_search(qm: QuantizedModel, batches, candidates, exempt_kinds=("attention.probs",)) -> dict:
    """Pick the token quantile with the smallest output MSE; leaves those ranges in ``qm``.

    Returns ``{"best_p", "losses": {p: loss}}``. Weight quantizers are off during the search and
    restored afterwards (they are calibrated by the caller).
    """
    batches = list(batches)
    if not batches:
        raise ConfigError("token-wise clipping needs at least one calibration batch")
    mode = qm.mode
    qm.set_mode(weights=False, acts=False)
    fp_outputs = [_output(qm(**b)) for b in batches]
    nodes = [n for n in qm.act_nodes.values() if n.quantizer is not None and n.kind not in exempt_kinds]
    exempt = [n for n in qm.act_nodes.values() if n.quantizer is not None and n.kind in exempt_kinds]

    # The FP activations do not depend on p: record every node's per-token extremes in one pass and
    # derive each candidate's TokenWiseClip(p) range from them (equal to recalibrating per p; tested).
    for n in nodes:
        n.quantizer.estimator = TokenExtremes()
    for n in nodes + exempt:
        n.quantizer.reset()
        n.quantizer.observing = True
    for b in batches:
        qm(**b)
    for n in nodes + exempt:
        n.quantizer.observing = False
    for n in exempt:
        n.quantizer.fix()
    recorders = [n.quantizer.estimator for n in nodes]

    def calibrate_with(p: float) -> None:
        for n, rec in zip(nodes, recorders):
            n.quantizer.estimator = rec.token_wise_clip(p)
            n.quantizer.fix()

    losses = {}
    for p in candidates:
        calibrate_with(p)
        qm.set_mode(weights=False, acts=True)
        losses[p] = output_loss(qm, batches, fp_outputs)
        qm.set_mode(weights=False, acts=False)
    best = min(losses, key=lambda p: (losses[p], -p))
    calibrate_with(best)
    qm.set_mode(*mode)
    return {"best_p": best, "losses": losses}


def learn_scales(qm: QuantizedModel, batches, lr: float = 1e-5, epochs: int = 3) -> list[float]:
    """The fine stage: learn activation scale/zero point from the current ranges; returns the loss curve."""
    batches = list(batches)
    if not batches:
        raise ConfigError("the fine stage needs at least one calibration batch")
    mode, was_training = qm.mode, qm.training
    qm.eval()
    qm.set_mode(weights=False, acts=False)
    with torch.no_grad():
        fp_outputs = [_output(qm(**b)) for b in batches]
    quantizers = qm.activation_quantizers()
    for q in quantizers:
        if not q.learnable:
            q.make_learnable(zero_point=True, grad_scaling=True)
    from accelerate import Accelerator

    params = [p for q in quantizers for p in q.range_parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(batches), eta_min=0.0)
    qm.set_mode(weights=False, acts=True)

    def output_mse(model, pair) -> torch.Tensor:
        """MSE between the quantized and the FP outputs (real tokens only for token outputs)."""
        batch, ref = pair
        out = _output(model(**batch))
        if out.dim() == 3:
            mask = batch["attention_mask"].bool()
            out, ref = out[mask], ref[mask]
        return torch.nn.functional.mse_loss(out, ref)

    steps = enumerate(pair for _ in range(epochs) for pair in zip(batches, fp_outputs))
    losses = run_steps(qm, steps, output_mse, optimizer, scheduler, Accelerator(), desc="TWC fine stage",
                       clip=None, total=epochs * len(batches))
    qm.set_mode(*mode)
    qm.train(was_training)
    return losses
