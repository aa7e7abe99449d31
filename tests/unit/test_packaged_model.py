"""A model shipped as a split zip archive over several packages: reassembled once, verified, extracted in one
rename; a missing or damaged piece refused in one line before any work."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from outlierbook.errors import ModelNotAvailableError
from outlierbook.models import packaged
from outlierbook.models.load import check_model_name, short_name


def _split_archive(tmp_path, parts=3):
    """A small zip holding ``tiny/config.json`` and ``tiny/vocab.txt`` (plus a file the book ignores), cut into
    ``parts`` byte ranges as the wheels hold them."""
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tiny/config.json", json.dumps({"model_type": "mpnet", "hidden_size": 8}))
        zf.writestr("tiny/vocab.txt", "\n".join(f"tok{i}" for i in range(2000)))
        zf.writestr("tiny/desktop.ini", "[.ShellClassInfo]")
    data = archive.read_bytes()
    cut = [len(data) * i // parts for i in range(parts + 1)]
    pieces = []
    for i in range(parts):
        piece = tmp_path / f"tiny.zip.{i + 1:03d}"
        piece.write_bytes(data[cut[i]:cut[i + 1]])
        pieces.append(piece)
    return pieces, hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_spec(monkeypatch, tmp_path):
    pieces, digest = _split_archive(tmp_path)
    spec = packaged.SplitArchive(name="tiny", distribution="tiny-part-{part:03d}", piece="tiny.zip.{part:03d}",
                                 parts=3, folder="tiny", sha256=digest)
    monkeypatch.setitem(packaged.PACKAGED, "tiny", spec)
    return spec, pieces


def test_pieces_are_reassembled_once_into_the_cache(tiny_spec, tmp_path, capsys):
    spec, pieces = tiny_spec
    cache = tmp_path / "cache"
    folder = packaged.model_dir("tiny", pieces=pieces, cache=cache)
    assert folder == cache / "models" / "tiny"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mpnet"
    assert (folder / "vocab.txt").read_text().endswith("tok1999")
    assert not (folder / "desktop.ini").exists()  # only what a model folder needs
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["tiny"]  # no archive, no temporary folder left
    assert "reassembling" in capsys.readouterr().out
    for piece in pieces:  # the second call reads the cache, not the pieces
        piece.unlink()
    assert packaged.model_dir("tiny", pieces=[], cache=cache) == folder
    assert capsys.readouterr().out == ""


def test_a_missing_piece_is_refused_by_name(tiny_spec, tmp_path):
    spec, pieces = tiny_spec
    with pytest.raises(ModelNotAvailableError, match=r"tiny-part-001, tiny-part-002, tiny-part-003 are not installed"):
        packaged.find_pieces(spec)  # none of the fake distributions is installed
    with pytest.raises(ModelNotAvailableError, match="pip install -r requirements.txt"):
        packaged.find_pieces(spec)


def test_a_partial_archive_is_refused_and_leaves_nothing(tiny_spec, tmp_path):
    spec, pieces = tiny_spec
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotAvailableError, match="checksum"):
        packaged.model_dir("tiny", pieces=pieces[:2], cache=cache)
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_a_truncated_archive_without_checksum_is_refused_as_incomplete(tmp_path):
    pieces, _ = _split_archive(tmp_path)
    archive = packaged.reassemble(pieces[:2], tmp_path / "out" / "tiny.zip", sha256=None)
    with pytest.raises(ModelNotAvailableError, match="not a complete zip archive"):
        packaged.extract(archive, "tiny", tmp_path / "out" / "tiny")
    assert not (tmp_path / "out" / "tiny").exists()


def test_the_book_names_the_packaged_model_like_the_embedded_one(monkeypatch, tmp_path):
    called = []
    monkeypatch.setattr(packaged, "model_dir", lambda name, **_: called.append(name) or tmp_path)
    assert check_model_name("all-mpnet-base-v2") == str(tmp_path)
    assert check_model_name("sentence-transformers/all-mpnet-base-v2") == str(tmp_path)
    assert called == ["all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"]
    assert short_name("sentence-transformers/all-mpnet-base-v2") == "all-mpnet-base-v2"
    assert packaged.packaged_name("bert-base-uncased") is None


def test_mpnet_loads_with_its_own_attention_and_bert_with_sdpa(tmp_path):
    import transformers as tf

    from outlierbook.models.load import load_encoder

    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    tf.MPNetModel(tf.MPNetConfig(**small)).save_pretrained(tmp_path / "mpnet")
    tf.BertModel(tf.BertConfig(**small)).save_pretrained(tmp_path / "bert")
    assert load_encoder(str(tmp_path / "mpnet")).config._attn_implementation == "eager"  # transformers has no SDPA path
    assert load_encoder(str(tmp_path / "bert")).config._attn_implementation == "sdpa"
