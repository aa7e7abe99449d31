"""The deployable variants of one FP model, each runnable like a Hugging Face model (``m(**inputs).logits``).

- ``PyTorch FP32`` and ``PyTorch dynamic INT8`` (``torch.ao.quantization.quantize_dynamic``: int8 Linear
  weights, activation ranges measured per batch at run time, the embedding table left in FP32);
- ``ONNX Runtime FP32``;
- ``ONNX Runtime dynamic INT8`` (its ``quantize_dynamic``: weights int8 ahead of time, activation ranges
  per batch);
- ``ONNX Runtime static INT8`` (its ``quantize_static`` with its own MinMax calibration on the same
  batches, Q/DQ format, per-channel weights);

both toolkits' quantizers limited to the inputs of matrix products (``MatMul``, ``Gemm``), the placement
the book's recipes use: left at its default, ``quantize_static`` also quantizes the additions, including
the one that applies the attention mask, and the model falls to chance;
- one file per book recipe (:func:`outlierbook.deploy.export`).

Weights are unsigned 8-bit wherever the runtime lets us choose (``QUInt8``): on x86 CPUs without VNNI
its signed-weight kernels saturate (see :func:`outlierbook.deploy.onnx_export.fold_weights`).
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .onnx_export import export, feeds, session


class RuntimeModel:
    """An ONNX Runtime session behind the call signature the book's evaluation uses."""

    def __init__(self, sess, config, output: str):
        self.session, self.config, self.output = sess, config, output
        self.training = False

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask, token_type_ids=None, **_):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        out = self.session.run(None, feeds(self.session, batch))[0]
        return SimpleNamespace(**{self.output: torch.from_numpy(np.ascontiguousarray(out))})


@dataclass
class Variant:
    name: str
    model: object  # callable like a Hugging Face model
    bytes: int  # size of what a deployment ships (ONNX file, or the PyTorch state dict)
    integer_products: int | None = None  # matrix products the runtime runs in integers (ONNX only)
    path: Path | None = None  # the ONNX file (ONNX Runtime variants)


def at_threads(variants: dict[str, Variant], threads: int) -> dict[str, Variant]:
    """The same variants with ONNX Runtime sessions reopened for ``threads`` intra-op threads (and PyTorch's
    thread count set to it)."""
    torch.set_num_threads(threads)
    out = {}
    for name, v in variants.items():
        model = v.model if v.path is None else RuntimeModel(session(v.path, threads), v.model.config, v.model.output)
        out[name] = Variant(v.name, model, v.bytes, v.integer_products, v.path)
    return out


def state_dict_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


class _Reader:
    """ONNX Runtime's calibration interface over the book's calibration batches."""

    def __init__(self, batches):
        self._items = iter([{k: v.numpy() for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                            for b in batches])

    def get_next(self):
        return next(self._items, None)


def _output_name(model) -> str:
    from ..models.anatomy import anatomy

    inner = getattr(model, "model", model)  # a QuantizedModel wraps the Hugging Face model
    return "logits" if anatomy(inner).classifier is not None else "last_hidden_state"


def _runtime(path, model, threads, name) -> Variant:
    from .onnx_export import INTEGER_OPS, integer_kernels

    kernels = integer_kernels(path, threads)
    return Variant(name, RuntimeModel(session(path, threads), model.config, _output_name(model)),
                   Path(path).stat().st_size, sum(kernels[k] for k in INTEGER_OPS), Path(path))


def baselines(model, batches, folder, threads: int = 1) -> dict[str, Variant]:
    """The FP32 and the toolkits' own INT8 variants of ``model`` (files written under ``folder``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    import logging

    folder = Path(folder)
    fp_path = export(model, batches[0], folder / "fp32.onnx")
    dynamic_path, static_path = folder / "ort_dynamic.onnx", folder / "ort_static.onnx"
    products = ["MatMul", "Gemm"]  # the placement integer kernels fuse, as in the book's recipes
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its advice to pre-process the graph, per tensor
    try:
        quantize_dynamic(fp_path, dynamic_path, op_types_to_quantize=products, weight_type=QuantType.QUInt8)
        quantize_static(fp_path, static_path, _Reader(batches), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=products, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.level = level
    import warnings

    with warnings.catch_warnings():  # its notice that quantized tensor types will be removed in a later PyTorch
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        torch_dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear},
                                                               dtype=torch.qint8)
    return {
        "PyTorch FP32": Variant("PyTorch FP32", model, state_dict_bytes(model)),
        "PyTorch dynamic INT8": Variant("PyTorch dynamic INT8", torch_dynamic, state_dict_bytes(torch_dynamic)),
        "ORT FP32": _runtime(fp_path, model, threads, "ORT FP32"),
        "ORT dynamic INT8": _runtime(dynamic_path, model, threads, "ORT dynamic INT8"),
        "ORT static INT8 (its MinMax)": _runtime(static_path, model, threads, "ORT static INT8 (its MinMax)"),
    }


def recipe_variant(qm, batch, folder, name: str, threads: int = 1) -> Variant:
    """A calibrated book recipe as an ONNX Runtime integer model."""
    path = export(qm, batch, Path(folder) / (name.replace(" ", "_").replace("+", "") + ".onnx"))
    return _runtime(path, qm, threads, name)
