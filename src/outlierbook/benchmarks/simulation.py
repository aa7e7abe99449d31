"""How much a simulated (fake-quantized) forward costs against the FP forward, and where the time goes.

``python -m outlierbook.benchmarks.simulation [--batch 32] [--seq 128] [--threads 2] [--rounds 7]``

Every variant runs on the same inputs in interleaved rounds (FP, then each variant, repeated), and the
median per variant is divided by the FP median of the same run, so machine load affects all alike:

- ``nodes, FP``: the 2021 placement's nodes attached, nothing quantized (the cost of hooks, the attention
  function and the parametrizations);
- ``weights only`` / ``activations only`` / ``W8A8``: the modes of one calibrated model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _inputs(tokenizer, batch: int, seq: int) -> dict:
    text = "the quick brown fox jumps over the lazy dog " * (seq // 8 + 1)
    enc = tokenizer([text] * batch, truncation=True, max_length=seq, padding="max_length", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def measure(batch: int = 32, seq: int = 128, threads: int = 2, rounds: int = 7, model_name: str = "all-MiniLM-L6-v2"):
    from ..models.load import load_encoder, load_tokenizer
    from ..recipe import Recipe, quantize

    torch.set_num_threads(threads)
    model = load_encoder(model_name).eval()
    inputs = _inputs(load_tokenizer(model_name), batch, seq)
    qm = quantize(model, Recipe(bits="W8A8"), [inputs])
    variants = {"FP": (model, None), "nodes, FP": (qm, (False, False)), "weights only": (qm, (True, False)),
                "activations only": (qm, (False, True)), "W8A8": (qm, (True, True))}
    times = {k: [] for k in variants}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for name, (m, mode) in variants.items():
            if mode is not None:
                m.set_mode(*mode)
            t0 = time.perf_counter()
            m(**inputs)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {k: v / med["FP"] for k, v in med.items()}, med["FP"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    ratios, fp_seconds = measure(a.batch, a.seq, a.threads, a.rounds)
    print(f"batch {a.batch} x {a.seq} tokens, {a.threads} threads, median of {a.rounds} rounds; "
          f"FP forward {fp_seconds * 1000:.0f} ms")
    for name, r in ratios.items():
        print(f"  {name:<18} {r:5.2f} x FP")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
