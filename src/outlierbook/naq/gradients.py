r"""Where nonlinearities have small gradients (NAQ §2.3, Figure 1).

Element-wise activations: $f'(x)$ by autograd. Softmax $p_i = e^{z_i}/S$ with $S = \sum_j e^{z_j}$ has the
Jacobian $\partial p_i/\partial z_j = p_i(\delta_{ij} - p_j)$; its diagonal,

$$\frac{\partial p_i}{\partial z_i} = p_i(1-p_i) = \frac{e^{z_i}\,(S - e^{z_i})}{S^2} \le \frac{e^{z_i}}{S},$$

is small whenever $e^{z_i}$ is small **or** the row sum $S$ is large — NAQ's two softmax thresholds, $T_{AS}$
on the score and $T_{sum}$ on the row sum. Off-diagonal entries are bounded by $p_i p_j \le p_i$ as well.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

ACTIVATIONS = {
    "gelu": torch.nn.functional.gelu,
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def activation_derivative(name: str, x: torch.Tensor) -> torch.Tensor:
    """$f'(x)$ of a named element-wise activation, by autograd."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; use one of: {', '.join(ACTIVATIONS)}")
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ACTIVATIONS[name](x).sum(), x)
    return grad


def softmax_jacobian(z: torch.Tensor) -> torch.Tensor:
    r"""$J_{ij} = p_i(\delta_{ij} - p_j)$ for a score vector ``z`` (last dimension)."""
    p = torch.softmax(z, dim=-1)
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def softmax_diagonal(exp_z: torch.Tensor, row_sum: torch.Tensor) -> torch.Tensor:
    r"""$\partial p_i/\partial z_i = e^{z_i}(S-e^{z_i})/S^2$ as a function of $e^{z_i}$ and $S$ (requires $S \ge e^{z_i}$)."""
    return exp_z * (row_sum - exp_z) / row_sum ** 2
