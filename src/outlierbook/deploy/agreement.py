r"""Does the integer model compute what the book simulated? Node by node, in integer codes.

Every quantized node has an integer code in both worlds: ONNX Runtime's QuantizeLinear output, and the
simulated node's $q = \hat x / s + z$ (exact, since $\hat x$ lies on the grid). :func:`node_agreement`
runs one batch through both and reports, per node in forward order, the share of codes that differ and
the largest difference in steps. A node whose inputs agree can still differ where its input lies within
float rounding of a rounding boundary (the runtime's kernels sum and fuse in another order); later nodes
inherit such differences, so the first node that disagrees is where to look.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .onnx_export import feeds, run, session

_SCOPE = re.compile(r"/([A-Za-z0-9_]+)/quantizer/QuantizeLinear$")


def _with_node_outputs(path, keys: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A copy of the ONNX file whose graph also outputs every activation node's QuantizeLinear result."""
    import onnx

    proto = onnx.load(str(path))
    found = {}
    for node in proto.graph.node:
        m = _SCOPE.search(node.name)
        if node.op_type == "QuantizeLinear" and m and m.group(1) in keys:
            found[keys[m.group(1)]] = node.output[0]
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
    tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    tmp.close()
    onnx.save(proto, tmp.name)
    return tmp.name, found


@torch.no_grad()
def simulated_codes(qm, batch: dict) -> dict[str, np.ndarray]:
    """Each quantizing activation node's integer codes for ``batch`` (the simulated model)."""
    codes, hooks = {}, []
    for node in qm.act_nodes.values():
        q = node.quantizer
        if q is None or not q.quantizing:
            continue

        def record(module, args, out, q=q, name=node.name):
            scale, zero = q.granularity.expand(q.scale, out), q.granularity.expand(q.zero, out)
            codes[name] = torch.round(out / scale + zero).to(torch.int64).numpy()

        hooks.append(node.register_forward_hook(record))
    try:
        qm(**batch)
    finally:
        for h in hooks:
            h.remove()
    return codes


def node_agreement(qm, path, batch: dict, threads: int = 1) -> pd.DataFrame:
    """Per activation node (forward order): share of integer codes that differ between the simulated model and
    ONNX Runtime's integer model for ``path``, the largest difference in steps, and the element count, on the
    batch's real tokens."""
    keys = {qm._key(n.name): n.name for n in qm.act_nodes.values()}
    probe, names = _with_node_outputs(path, keys)
    try:
        sess = session(probe, threads)
        wanted = list(names.values())
        values = dict(zip(["output"] + wanted, sess.run(["output"] + wanted, feeds(sess, batch))))
    finally:
        Path(probe).unlink(missing_ok=True)
    theirs = {name: values[onnx_name].astype(np.int64) for name, onnx_name in names.items()}
    ours = {name: codes for name, codes in simulated_codes(qm, batch).items() if name in theirs}
    return compare_codes(ours, theirs, batch)


def output_agreement(qm, path, batch: dict, threads: int = 1) -> dict:
    """Largest and mean absolute difference of the model's first output between the two worlds, the largest
    output magnitude for scale, and for a classifier the share of examples given the same class."""
    with torch.no_grad():
        ref = qm(**batch)[0].numpy()
    out = run(session(path, threads), batch)
    diff = np.abs(out - ref)
    found = {"max": float(diff.max()), "mean": float(diff.mean()), "scale": float(np.abs(ref).max())}
    if ref.ndim == 2:  # a classifier's logits: does the integer model predict the same class?
        found["same_prediction"] = float((out.argmax(-1) == ref.argmax(-1)).mean())
    return found


__all__ = ["compare_codes", "node_agreement", "output_agreement", "precision_agreement", "simulated_codes"]


def compare_codes(a: dict[str, np.ndarray], b: dict[str, np.ndarray], batch: dict) -> pd.DataFrame:
    """Share of differing codes and largest difference per node between two code dictionaries (real tokens)."""
    real = batch["attention_mask"].bool().numpy()
    rows = []
    for name in a:
        diff = np.abs(a[name] - b[name].reshape(a[name].shape))
        if diff.ndim == 3:
            diff = diff[real]
        elif diff.ndim == 4:
            diff = diff.transpose(0, 2, 3, 1)[real[:, :, None] & real[:, None, :]]
        rows.append({"node": name, "differing": float((diff > 0).mean()), "max steps": int(diff.max()),
                     "elements": int(diff.size)})
    return pd.DataFrame(rows).set_index("node")


def precision_agreement(qm, batch: dict) -> pd.DataFrame:
    """The simulated model against itself computed in float64 (same ranges, same grid): how much of the
    integer model's disagreement any change of arithmetic would cause. ``qm`` is returned to float32."""
    single = simulated_codes(qm, batch)
    try:
        double = simulated_codes(qm.double(), batch)
    finally:
        qm.float()
    return compare_codes(single, double, batch)
