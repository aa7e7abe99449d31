"""A small BPE tokenizer trained with the `tokenizers` library on the pre-training text (cached).

Byte-level BPE (no unknown tokens), special tokens for both model families: ``[PAD] [UNK] [CLS]
[SEP] [MASK]`` for the masked-LM encoder and ``<s> </s>`` for the causal decoder. WikiText-2 is never
part of the training text.
"""

from __future__ import annotations

import hashlib
import os

from ..errors import ConfigError
from ..paths import cache_dir

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def train_tokenizer(texts: list[str], vocab_size: int = 4096, cache: bool = True):
    """A ``PreTrainedTokenizerFast`` trained on ``texts`` (byte-level BPE), cached by content and size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ConfigError("cannot train a tokenizer on an empty text list")
    if vocab_size < 300:
        raise ConfigError("vocab_size must be at least 300 (256 bytes + special tokens + merges)")
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8", errors="replace"))
    digest.update(str(vocab_size).encode())
    path = cache_dir() / "tokenizers" / f"bpe{vocab_size}-{digest.hexdigest()[:12]}" / "tokenizer.json"
    if cache and path.is_file():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"tokenizer.json.tmp{os.getpid()}")
            tok.save(str(tmp))
            os.replace(tmp, path)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", bos_token="<s>", eos_token="</s>")
