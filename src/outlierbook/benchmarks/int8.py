"""Latency and size of the deployable variants against FP32 ONNX Runtime, measured side by side.

``python -m outlierbook.benchmarks.int8 [--threads 1 2] [--shapes 1x128 32x128] [--rounds 20]``

The embedded encoder, calibrated on STS-B training sentences. Every variant runs the same inputs in
interleaved rounds (each variant once per round, the first round dropped as warm-up), and each median
is divided by the median of ``ORT FP32`` from the same rounds, so machine load affects all alike. Sizes
are the bytes a deployment ships (the ONNX file, or PyTorch's state dict).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

REFERENCE = "ORT FP32"


@torch.no_grad()
def latency_ratios(variants: dict, inputs: dict, rounds: int = 20) -> dict[str, float]:
    """Median latency of each variant on ``inputs`` divided by the reference's median, interleaved rounds."""
    times = {name: [] for name in variants}
    for _ in range(rounds + 1):
        for name, v in variants.items():
            t0 = time.perf_counter()
            v.model(**inputs)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {k: v / med[REFERENCE] for k, v in med.items()}


def inputs_of(tokenizer, batch: int, seq: int) -> dict:
    text = "the quick brown fox jumps over the lazy dog " * (seq // 8 + 1)
    enc = tokenizer([text] * batch, truncation=True, max_length=seq, padding="max_length", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def build(folder, threads: int, n_calib: int = 64):
    """Every variant of the embedded encoder for ``threads`` intra-op threads (book recipes: MinMax, GM)."""
    from ..deploy.runtime import baselines, recipe_variant
    from ..models.tasks import task_setup
    from ..quant.calibrate import calibration_batches
    from ..recipe import GammaMigration, Recipe, quantize

    torch.set_num_threads(threads)
    setup = task_setup("stsb", "quick")
    batches = calibration_batches(setup.calibration, setup.tokenizer, n=n_calib, batch_size=32, seed=0)
    variants = baselines(setup.model, batches, folder, threads)
    for name, transforms in (("book MinMax", ()), ("book GM", (GammaMigration(),))):
        qm = quantize(setup.model, Recipe(bits="W8A8", placement="os", act_estimator="avg_minmax",
                                          transforms=transforms), batches)
        variants[name] = recipe_variant(qm, batches[0], folder, name, threads)
    return variants, setup.tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shapes", nargs="+", default=["1x128", "32x128"])
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args(argv)
    for threads in a.threads:
        with tempfile.TemporaryDirectory() as folder:
            variants, tokenizer = build(folder, threads)
            sizes = {k: v.bytes / variants[REFERENCE].bytes for k, v in variants.items()}
            for shape in a.shapes:
                b, t = (int(x) for x in shape.split("x"))
                ratios = latency_ratios(variants, inputs_of(tokenizer, b, t), a.rounds)
                print(f"{threads} thread(s), batch {b} x {t} tokens, median of {a.rounds} interleaved rounds")
                for name in variants:
                    print(f"  {name:<30} latency {ratios[name]:5.2f} x {REFERENCE}   size {sizes[name]:5.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
