"""Latency and size of the deployable variants against FP32 ONNX Runtime, measured side by side.

``python -m outlierbook.benchmarks.int8 [--threads 1 2] [--shapes 1x128 32x128] [--rounds 20]``

The embedded encoder, calibrated on STS-B training sentences. Every variant runs the same inputs in
interleaved rounds (each variant once per round, the first round dropped as warm-up), and each median
is divided by the median of ``ORT FP32`` from the same rounds, so machine load affects all alike. Sizes
are the bytes a deployment ships (the ONNX file, or PyTorch's state dict). Peak memory is measured in a
fresh process per variant (:func:`peak_memory_mb`): the growth of its peak resident set from loading the
variant and running one batch, over the same process after its imports — so the interpreter and the
libraries are not counted, and every variant pays for its own weights, runtime arenas and activations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


# Runs in a fresh interpreter: argv = kind ("onnx" | "torch" | "torch-dynamic"), file, threads, batch, tokens,
# module to import, and for PyTorch the model class and its config (JSON). A PyTorch variant is rebuilt from its
# config and loads its state dict with weights_only=True (tensors only, no pickled code).
_PROBE = r"""
import json, sys
import numpy as np
import torch
import importlib
kind, target, threads, batch, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
importlib.import_module(sys.argv[6])  # the variant's own code is imported before measuring, not counted
torch.set_num_threads(threads)
ids = np.ones((batch, tokens), dtype=np.int64)  # a token id every vocabulary has
mask = np.ones((batch, tokens), dtype=np.int64)
if kind == "onnx":
    import onnxruntime as ort


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # the peak so far (the imports') is forgotten: VmHWM = VmRSS
    f.write("5")
if kind == "onnx":
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(target, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: (mask if "mask" in i.name else np.zeros_like(ids) if "type" in i.name else ids)
            for i in sess.get_inputs()}
    sess.run(None, feed)
else:
    cls = getattr(importlib.import_module(sys.argv[6]), sys.argv[7])
    model = cls(cls.config_class.from_dict(json.loads(sys.argv[8]))).eval()
    if kind == "torch-dynamic":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    model.load_state_dict(torch.load(target, weights_only=True))
    with torch.no_grad():
        model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
print(json.dumps({"before_kb": before, "after_kb": status("VmHWM")}))
"""


def peak_memory_mb(variant, folder, threads: int, batch: int, tokens: int) -> float:
    """Growth of the peak resident set (MiB) of a fresh process that loads ``variant`` and runs one
    ``batch`` × ``tokens`` input, over the same process after its imports (Linux: the peak is reset to
    the current resident set through ``/proc/self/clear_refs`` after the imports, then read as ``VmHWM``).
    A PyTorch variant is rebuilt from its config (then dynamically quantized if it was) and loads its state
    dict with ``weights_only=True``, so its peak includes building the FP32 module it is rebuilt from."""
    extra = []
    if variant.path is not None:
        kind, target, module = "onnx", str(variant.path), "onnxruntime"
    else:
        model = variant.model
        dynamic = any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())
        kind = "torch-dynamic" if dynamic else "torch"
        target = str(Path(folder) / (variant.name.replace(" ", "_") + ".pt"))
        module = type(model).__module__
        torch.save(model.state_dict(), target)
        extra = [type(model).__name__, model.config.to_json_string()]
    out = subprocess.run([sys.executable, "-c", _PROBE, kind, target, str(threads), str(batch), str(tokens), module,
                          *extra],
                         capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return (found["after_kb"] - found["before_kb"]) / 1024


def inputs_of(tokenizer, batch: int, seq: int) -> dict:
    text = "the quick brown fox jumps over the lazy dog " * (seq // 8 + 1)
    enc = tokenizer([text] * batch, truncation=True, max_length=seq, padding="max_length", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def build(folder, threads: int, n_calib: int = 64):
    """Every variant of the embedded encoder for ``threads`` intra-op threads, with the book's exported recipes
    (MinMax, GM, GM + TWC, PEG)."""
    from ..deploy.runtime import baselines, recipe_variant
    from ..experiments.int8 import recipes
    from ..models.tasks import task_setup
    from ..quant.calibrate import calibration_batches
    from ..recipe import quantize

    torch.set_num_threads(threads)
    setup = task_setup("stsb", "quick")
    batches = calibration_batches(setup.calibration, setup.tokenizer, n=n_calib, batch_size=32, seed=0)
    variants = baselines(setup.model, batches, folder, threads)
    for name, recipe in recipes(setup.model.config.hidden_size).items():
        variants[name] = recipe_variant(quantize(setup.model, recipe, batches), batches[0], folder, name, threads)
    return variants, setup.tokenizer


def main(argv=None) -> int:
    from ..deploy.runtime import at_threads

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shapes", nargs="+", default=["1x128", "32x128"])
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args(argv)
    shapes = []
    for shape in a.shapes:
        try:
            b, t = (int(x) for x in shape.lower().split("x"))
        except ValueError:
            p.error(f"shape {shape!r} is not BATCHxTOKENS; write e.g. 32x128")
        shapes.append((b, t))
    with tempfile.TemporaryDirectory() as folder:
        built, tokenizer = build(folder, a.threads[0])  # calibrated and exported once; sessions reopened per count
        sizes = {k: v.bytes / built[REFERENCE].bytes for k, v in built.items()}
        for threads in a.threads:
            variants = at_threads(built, threads)
            for b, t in shapes:
                ratios = latency_ratios(variants, inputs_of(tokenizer, b, t), a.rounds)
                peaks = {name: peak_memory_mb(v, folder, threads, b, t) for name, v in variants.items()}
                print(f"{threads} thread(s), batch {b} x {t} tokens, median of {a.rounds} interleaved rounds", flush=True)
                for name in variants:
                    print(f"  {name:<30} latency {ratios[name]:5.2f} x {REFERENCE}   size {sizes[name]:5.2f} x   "
                          f"peak memory {peaks[name] / peaks[REFERENCE]:5.2f} x ({peaks[name]:6.0f} MiB)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
