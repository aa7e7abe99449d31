r"""Outlier statistics of language models, as the Quantizable Transformers code computes them (notes §3.4).

For each hooked tensor, flatten **tokens × features per sequence** and compute per sequence
$\|x\|_\infty$ and the (plain, not excess) kurtosis $\mathrm{mean}((x-\mu)^4)/(\mathrm{std}(x)^4 + 10^{-6})$ with
the unbiased std; average each over sequences. Reported: the largest averaged $\|x\|_\infty$ over the
tensors, and the average and largest kurtosis over them. Tensors: per layer the attention output
projection, the FFN output and the layer's output (the residual stream after its LayerNorm in BERT,
the decoder layer's output in OPT).
"""

from __future__ import annotations

import torch

from ..models.anatomy import anatomy


def per_sequence(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inf-norm, kurtosis) per sequence of ``x`` shaped ``[B, ...]``."""
    flat = x.detach().double().reshape(x.shape[0], -1)
    inf = flat.abs().amax(1)
    mu = flat.mean(1, keepdim=True)
    kurt = ((flat - mu) ** 4).mean(1) / (flat.std(1) ** 4 + 1e-6)
    return inf, kurt


def tracked_modules(model) -> dict[str, torch.nn.Module]:
    """Per layer: the attention output projection, the FFN output and the layer output (the residual stream)."""
    anat = anatomy(model)
    out = {}
    for i, layer in enumerate(anat.layers):
        out.update({f"layer{i}.attention.output": layer.out, f"layer{i}.ffn.output": layer.ffn_out,
                    f"layer{i}.output": layer.ffn_ln if anat.post_ln else layer.block})
    return out


@torch.no_grad()
def outlier_stats(model, batches) -> dict:
    """``{"max_inf_norm", "avg_kurtosis", "max_kurtosis", "per_tensor": {name: (inf, kurt)}}`` over ``batches``.

    Batches should be unpadded blocks (every token real), as in pre-training.
    """
    mods = tracked_modules(model)
    sums: dict[str, list] = {n: [0.0, 0.0, 0] for n in mods}
    hooks = []

    def hook_for(name):
        def hook(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            b = batch_size[0]
            inf, kurt = per_sequence(x.reshape(b, -1))
            sums[name][0] += float(inf.sum())
            sums[name][1] += float(kurt.sum())
            sums[name][2] += b
        return hook

    batch_size = [0]
    for name, m in mods.items():
        hooks.append(m.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            batch_size[0] = batch["input_ids"].shape[0]
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    per = {n: (s[0] / s[2], s[1] / s[2]) for n, s in sums.items()}
    kurts = [k for _, k in per.values()]
    return {"max_inf_norm": max(i for i, _ in per.values()), "avg_kurtosis": sum(kurts) / len(kurts),
            "max_kurtosis": max(kurts), "per_tensor": per}
