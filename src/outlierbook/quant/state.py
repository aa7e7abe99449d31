"""Module state that loads into a fresh module.

``nn.Module`` leaves a buffer registered as ``None`` (a range not estimated yet, a permutation not
computed yet) out of its ``state_dict`` and, when loading, skips it. A quantizer wrapped fresh from a
recipe has such buffers; :func:`adopt_unset_buffers` lets it take them from a calibrated state.
"""

from __future__ import annotations

from torch import nn


def adopt_unset_buffers(module: nn.Module, state_dict: dict, prefix: str) -> list[str]:
    """Set each of ``module``'s buffers that is ``None`` from ``state_dict[prefix + name]`` when present
    (the normal loading then copies the values). Returns the names adopted."""
    adopted = []
    for name, value in list(module._buffers.items()):
        stored = state_dict.get(prefix + name)
        if value is None and stored is not None:
            module._buffers[name] = stored.detach().clone()
            adopted.append(name)
    return adopted
