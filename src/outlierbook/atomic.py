"""Writes that an interrupted process cannot leave half done: one file, or one folder of files.

- :func:`atomic_write_text`: the text goes to a temporary sibling, is flushed to disk and renamed
  over the target (``os.replace`` is atomic on POSIX), with an ordinary file's mode.
- :func:`replace_folder`: a complete new folder takes the place of the old one in one step —
  ``renameat2(RENAME_EXCHANGE)`` on Linux swaps the two atomically; elsewhere the old folder is
  renamed aside and the new one into place, and :func:`recover` (run by the next writer or reader)
  puts the old one back if a crash fell between the two renames.

Temporary names carry the writer's process id (``.<name>.tmp-<pid>-…``, ``.<name>.old-<pid>``), so
:func:`recover` removes only what dead processes left.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode an ordinary new file gets (0644 under the usual umask); mkstemp's would be 0600."""
    return 0o666 & ~umask()


def write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
    os.close(fd)
    try:
        write_synced(Path(tmp), text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(target: Path, kind: str) -> list[Path]:
    """Temporary siblings of ``target`` (``.full.tmp-<pid>-…``, ``.full.old-<pid>``) left by a killed run."""
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def _pid_of(path: Path) -> int:
    try:
        return int(path.name.split(".")[-1].split("-")[1])
    except (IndexError, ValueError):
        return -1


def recover(target: Path) -> None:
    """Undo a swap cut between its two renames, and remove what killed runs left behind."""
    olds = [p for p in leftovers(target, "old") if not _alive(_pid_of(p))]
    if not target.exists() and olds:
        os.rename(olds[-1], target)  # the swap was cut after moving the old set away: put it back
        olds = olds[:-1]
    for stale in olds + [p for p in leftovers(target, "tmp") if not _alive(_pid_of(p))]:
        shutil.rmtree(stale, ignore_errors=True)


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` where ``target`` is, in one step seen from outside."""
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # ``new`` now holds the old set
    else:
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
