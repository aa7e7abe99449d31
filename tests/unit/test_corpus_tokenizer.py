"""Offline pre-training text and the BPE tokenizer."""

import pytest

from outlierbook.data.corpus import bible_verses, training_texts, wikitext2
from outlierbook.errors import ConfigError
from outlierbook.models.tokenizer import train_tokenizer


def test_training_text_is_real_and_evaluation_text_is_separate():
    verses = bible_verses()
    assert len(verses) == 31103 and verses[0].startswith("In the beginning God created")
    docs = training_texts(("bbc",))
    assert len(docs) == 2225 and all(d for d in docs)
    wiki = wikitext2("test")
    assert len(wiki) > 1_000_000 and not any(wiki[:2000] in d for d in docs[:50])
    with pytest.raises(ConfigError):
        training_texts(("reddit",))
    with pytest.raises(ConfigError):
        wikitext2("train")


def test_tokenizer_round_trips_and_has_the_special_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    texts = bible_verses()[:2000]
    tok = train_tokenizer(texts, vocab_size=400, cache=False)
    assert len(tok) <= 400
    ids = tok("And God said, Let there be light")["input_ids"]
    assert tok.decode(ids) == "And God said, Let there be light"
    for t in ("[PAD]", "[MASK]", "<s>", "</s>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id or t == "[UNK]"
    with pytest.raises(ConfigError):
        train_tokenizer([], 400)
