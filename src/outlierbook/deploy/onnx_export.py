r"""A calibrated quantized model as an ONNX file that ONNX Runtime runs with integer kernels.

:func:`export` traces the model in its Q/DQ form (:mod:`outlierbook.deploy.qdq`): the FP graph with a
QuantizeLinear/DequantizeLinear pair at every quantized node, carrying the recipe's own scales and zero
points. :func:`fold_weights` then stores every quantized weight as the integers themselves,

$$W \;\to\; q_W = \operatorname{sat}(\lfloor W / s_W \rceil + z_W) \in \texttt{int8}^{m\times n},$$

followed by a DequantizeLinear, so the file holds one byte per weight instead of four; the runtime's graph
optimiser fuses ``DQ(q_x) · DQ(q_W)`` into integer matrix products (``QGemm``, ``MatMulIntegerToFloat``).
:func:`session` opens the file with a fixed thread count; :func:`integer_kernels` counts what the optimiser
actually fused, since a Q/DQ pair it cannot fuse simply runs in floating point.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .qdq import qdq_form

INTEGER_OPS = ("QGemm", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "QAttention", "QLinearAdd",
               "DynamicQuantizeMatMul", "QLinearSoftmax")
OPSET = 17


REQUIRED_INPUTS = ("input_ids", "attention_mask")
SEGMENT_INPUT = "token_type_ids"  # BERT's segment ids: sentence pairs (MRPC, RTE) mark the second sentence with 1


class _FirstOutput(torch.nn.Module):
    """``model(**inputs)[0]``: logits of a classifier, the last hidden state of an encoder; the inputs by name,
    in the order of :func:`input_names`."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args)))[0]


def input_names(batch: dict) -> tuple[str, ...]:
    """The graph's inputs for batches like ``batch``: ``input_ids``, ``attention_mask`` and, when the tokenizer
    gives them, ``token_type_ids`` (without them a sentence-pair classifier would read every token as the
    first sentence's)."""
    missing = [k for k in REQUIRED_INPUTS if k not in batch]
    if missing:
        raise ConfigError(f"the example batch lacks {', '.join(missing)}; pass a tokenizer's output "
                          "(input_ids and attention_mask)")
    return REQUIRED_INPUTS + ((SEGMENT_INPUT,) if SEGMENT_INPUT in batch else ())


def feeds(sess, batch: dict) -> dict:
    """The session's inputs from ``batch`` as NumPy arrays; segment ids absent from ``batch`` are zeros (one
    sentence), as in Hugging Face models."""
    out = {}
    for i in sess.get_inputs():
        if i.name in batch:
            out[i.name] = np.asarray(batch[i.name])
        elif i.name == SEGMENT_INPUT:
            out[i.name] = np.zeros_like(np.asarray(batch["input_ids"]))
        else:
            raise ConfigError(f"the batch lacks {i.name}, an input of this ONNX model; pass a tokenizer's output")
    return out


def export(model, batch: dict, path, fold: bool = True, unsigned_weights: bool = True) -> Path:
    """Write ``model`` (a calibrated :class:`QuantizedModel`, or an FP model) to ``path`` as ONNX with dynamic
    batch and sequence axes; quantized weights folded to integers unless ``fold=False`` (stored unsigned unless
    ``unsigned_weights=False``, see :func:`fold_weights`). The caller's model is left as it was. The file
    appears only when complete."""
    import onnx

    path = Path(path)
    is_quantized = hasattr(model, "act_nodes")
    names = input_names(batch)
    args = tuple(batch[n] for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".onnx")
    os.close(fd)
    try:
        form = qdq_form(model) if is_quantized else contextlib.nullcontext(model)
        with form, torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (deprecated in favour of torch.export, whose ONNX translation cannot yet
            # write per-channel Q/DQ pairs with dynamic shapes) and its notes on shape-dependent Python branches
            # in the Hugging Face mask code, which the dynamic batch and sequence axes keep correct.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(_FirstOutput(model, names).eval(), args, tmp, dynamo=False, opset_version=OPSET,
                              input_names=list(names), output_names=["output"],
                              dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                            "output": {0: "batch"}})
        proto = onnx.load(tmp)
        if fold:
            proto = fold_weights(proto, unsigned=unsigned_weights)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _constants(graph) -> dict[str, np.ndarray]:
    """Values known before any input: initializers, Constant nodes and Identity of either."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def quantize_linear(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear in NumPy: ``sat(round_half_even(x / s) + z)`` in ``zero``'s integer type."""
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    info = np.iinfo(zero.dtype)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zero.astype(np.int64)
    return np.clip(q, info.min, info.max).astype(zero.dtype)


def fold_weights(proto, unsigned: bool = True):
    """Replace each QuantizeLinear of a constant (a weight) by its integer result; drop what becomes unused.

    With ``unsigned`` (the default), signed weights are stored as ``uint8`` with zero point 128:
    $(q + 128) - 128 = q$, the same values, but it keeps x86 CPUs without VNNI on their exact u8·u8 kernels
    (their u8·s8 kernels add pairs of products in saturating 16-bit arithmetic, which overflows for
    activations near 255 times weights near ±127)."""
    from onnx import numpy_helper

    graph = proto.graph
    values = _constants(graph)
    kept, folded, renamed = [], [], {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) >= 3 and all(n in values for n in node.input[:3]):
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            zero = values[node.input[2]]
            q = quantize_linear(values[node.input[0]], values[node.input[1]], zero, axis)
            if unsigned and q.dtype == np.int8:
                q = (q.astype(np.int16) + 128).astype(np.uint8)
                name = node.output[0] + "_zero_u8"
                folded.append(numpy_helper.from_array((zero.astype(np.int16) + 128).astype(np.uint8), name))
                renamed[node.output[0]] = name
            folded.append(numpy_helper.from_array(q, node.output[0]))
        else:
            kept.append(node)
    for node in kept:  # the DequantizeLinear of a re-signed weight reads the shifted zero point
        if node.op_type == "DequantizeLinear" and node.input[0] in renamed and len(node.input) >= 3:
            node.input[2] = renamed[node.input[0]]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(folded)
    _prune(graph)
    return proto


def _prune(graph) -> None:
    """Remove nodes whose outputs nobody reads and initializers nobody reads (repeat until stable)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    used = {name for node in graph.node for name in node.input} | outputs
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)


def session(path, threads: int = 1, optimized_path=None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and every graph optimisation on;
    ``optimized_path`` saves the graph the runtime actually executes (to count its kernels)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the optimiser's hardware-specific-graph notice is not an error
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, batch: dict) -> np.ndarray:
    return sess.run(None, feeds(sess, batch))[0]


def integer_kernels(path, threads: int = 1) -> Counter:
    """Operator counts of the graph ONNX Runtime executes for ``path`` after its optimisations."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        optimized = Path(d) / "optimized.onnx"
        session(path, threads, optimized_path=optimized)
        counts = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return counts


def initializer_bytes(path) -> dict[str, int]:
    """Bytes of the stored tensors per element type (``FLOAT``, ``INT8``, ...)."""
    import onnx

    out: Counter = Counter()
    for t in onnx.load(str(path)).graph.initializer:
        out[onnx.TensorProto.DataType.Name(t.data_type)] += len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
    return dict(out)
