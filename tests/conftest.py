import os

# The same environment the Makefile gives notebooks: offline, fixed threads, quiet.
os.environ.setdefault("OUTLIERBOOK_TEST", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(2)


import pytest  # noqa: E402


@pytest.fixture
def tiny_bert():
    """A random 2-layer BERT classifier (hidden 16) with random LayerNorm γ/β, and one padded batch."""
    from tiny_models import tiny_classifier

    model = tiny_classifier(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 3.0)
                m.bias.normal_(0, 0.5)
    ids = torch.randint(1, 50, (4, 12))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    mask[3, 5:] = 0
    return model, {"input_ids": ids * mask, "attention_mask": mask}


class CharTokenizer:
    """A stand-in tokenizer: characters to ids, right padding (enough for the training loop)."""

    model_input_names = ["input_ids", "attention_mask"]

    def __call__(self, a, b=None, padding=True, truncation=True, max_length=16, return_tensors="pt"):
        rows = [[2 + (ord(c) % 40) for c in s][:max_length] for s in a]
        n = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


@pytest.fixture(scope="module")
def tok_and_blocks():
    """A byte-level BPE tokenizer (vocabulary 400) trained on 1 500 Bible verses, and those verses as blocks of 16."""
    from outlierbook.data.corpus import bible_verses
    from outlierbook.models.pretrain import token_blocks
    from outlierbook.models.tokenizer import train_tokenizer

    texts = bible_verses()[:1500]
    tok = train_tokenizer(texts, vocab_size=400, cache=False)
    return tok, token_blocks(tok, texts, 16)
