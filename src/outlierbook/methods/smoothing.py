r"""SmoothQuant's smoothing (Xiao et al. 2023) on a post-LN encoder, and why Gamma Migration is its special case.

A LayerNorm's output $\tilde X = \gamma\odot\hat X + \beta$ is read by Linear layers and — in a post-LN
encoder — by the residual shortcut of the next sum. For any positive per-channel $s$,

$$\tilde X = s \odot \big(\tfrac{\gamma}{s}\odot\hat X + \tfrac{\beta}{s}\big), \qquad
W\tilde x = \big(W\,\mathrm{diag}(s)\big)\,\tfrac{\tilde x}{s}, \qquad \text{shortcut: } \tilde x = s\odot\tfrac{\tilde x}{s},$$

so dividing the LN's γ and β by $s$, multiplying the consumers' input columns by $s$ **and the shortcut by
$s$** leaves the function unchanged while the tensor that gets quantized becomes $\tilde X / s$.
SmoothQuant (written for pre-LN decoders, where the LN output feeds only Linear layers) chooses

$$s_j = \frac{\max_t |\tilde X_{t,j}|^{\alpha}}{\max_i |W_{i,j}|^{1-\alpha}}, \qquad \alpha = 0.5,$$

from calibration data, balancing the activation's and the weight's range per channel; its
``smooth_ln_fcs`` rescales γ, β and the consumers only — on a post-LN encoder that is **not** exact, because
the shortcut then carries $\tilde X/s$ instead of $\tilde X$ (``rescale_shortcut=False`` reproduces it).
**Gamma Migration is the case $s = \gamma$**: the LN then outputs $\hat X + \beta/\gamma$ (Outlier
Suppression's non-scaling output), the same rescaling of readers follows, and no data is needed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .gamma_migration import layernorm_readers


def smoothing_scales(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float = 0.5,
                     floor: float = 1e-5) -> torch.Tensor:
    """$s_j = \\max|X_j|^{\\alpha} / \\max|W_{:,j}|^{1-\\alpha}$, clamped below at ``floor``."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"SmoothQuant's alpha must lie in [0, 1], got {alpha}")
    s = act_max.clamp(min=floor).pow(alpha) / weight_max.clamp(min=floor).pow(1 - alpha)
    return s.clamp(min=floor)


@torch.no_grad()
def smooth(model: nn.Module, batches, alpha: float = 0.5, rescale_shortcut: bool = True) -> dict[str, torch.Tensor]:
    """Smooth every LayerNorm → readers pair of a post-LN encoder in place; returns ``{label: s}``.

    The activation maxima are measured on ``batches`` (FP model, real tokens only).
    """
    from ..analysis.capture import capture_activations
    from ..models.anatomy import anatomy

    anat = anatomy(model)
    if not anat.post_ln:
        raise ConfigError("this smoothing is written for post-LN encoders; a pre-LN model needs no shortcut rescaling")
    pairs = layernorm_readers(anat)
    acts = capture_activations(model, batches, names=[label for label, *_ in pairs], placement="os")
    scales = {}
    for label, ln, readers in pairs:
        w_max = torch.cat([lin.weight.detach().abs() for lin in readers.consumers]).amax(0)  # over output rows
        scales[label] = smoothing_scales(acts[label].abs().amax(0), w_max, alpha)
    for label, ln, readers in pairs:  # measure everything first: the maxima are those of the FP model
        s = scales[label]
        if hasattr(ln, "divide"):  # an already migrated (non-scaling) LayerNorm
            ln.divide(s)
        else:
            ln.weight.div_(s)
            ln.bias.div_(s)
        readers.rescale(s, shortcut=rescale_shortcut)
    return scales
