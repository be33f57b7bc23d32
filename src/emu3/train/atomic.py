"""Crash-safe writes: a file or a whole folder appears complete under its final name, or not at all.

`write_file` writes to a temporary name beside the target, fsyncs it, renames it over the target
and fsyncs the folder. `staged_dir` does the same for a folder: the caller fills a temporary folder,
which is fsynced and renamed into place only when the `with` block ends without an exception.
Readers therefore never see a half-written shard, checkpoint or export. Files get the mode `open()`
would give them (0o666 less the umask) whatever their writer chose: safetensors writes 0o600, which
would leave a model folder unreadable by the other users of a shared machine. This module does not decide
what to write or when; it does not lock (one writer per path is the caller's rule).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_mode(path: Path) -> None:
    """Set `path`'s mode to what `open()` creates: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_file(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_path)`, then fsync and rename the result to `path` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        write(tmp)
        open_mode(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_file(path, lambda p: p.write_text(text, encoding="utf-8"))


def staging_path(final: str | os.PathLike) -> Path:
    """Where `staged_dir(final)` builds the folder (other processes may write into it meanwhile)."""
    final = Path(final)
    return final.with_name(f"{TMP_PREFIX}{final.name}")


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final` (an old `final` is removed)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(final)
    shutil.rmtree(tmp, ignore_errors=True)  # left over by an earlier crash
    tmp.mkdir()
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file() and not item.is_symlink():
                open_mode(item)
                fsync_path(item)
        fsync_path(tmp)
        if final.exists() or final.is_symlink():
            old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
