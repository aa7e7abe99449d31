"""The source digest that keys stored evaluations: it follows the code it names, and refuses a name it cannot find."""

import hashlib

import pytest

from outlierbook import source_digest


def _digest(names):
    h = hashlib.sha256()
    source_digest.update_with_sources(h, names)
    return h.hexdigest()


def test_the_digest_follows_the_named_sources_and_refuses_a_missing_one(tmp_path, monkeypatch):
    (tmp_path / "quant").mkdir()
    (tmp_path / "quant" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(source_digest, "PACKAGE", tmp_path)
    before = _digest(["quant", "b.py"])
    assert _digest(["quant", "b.py"]) == before  # deterministic
    (tmp_path / "quant" / "a.py").write_text("x = 3\n")
    assert _digest(["quant", "b.py"]) != before  # an edited file in a named folder changes it
    with pytest.raises(FileNotFoundError, match="no module or folder 'recipes'"):
        _digest(["recipes"])
