"""From simulation to integer kernels: the book's calibrated recipes exported to ONNX Runtime."""

from .onnx_export import export, fold_weights, initializer_bytes, integer_kernels, run, session
from .qdq import QuantDequant, check_exportable, qdq_form

__all__ = ["QuantDequant", "check_exportable", "export", "fold_weights", "initializer_bytes", "integer_kernels",
           "qdq_form", "run", "session"]
