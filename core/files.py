"""Files written whole or not at all, and their digests.

Every write goes to a temporary sibling, is fsynced and renamed into place,
and the directory is fsynced: a reader (or a process restarted after a kill)
sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import ConfigError

BLOCK = 1 << 20


def umask() -> int:
    """The process umask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """0o666 less the process umask: the mode open() would have given a new file."""
    return 0o666 & ~umask()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as sorted JSON to ``path`` atomically."""
    return write_atomic(path, json.dumps(obj, indent=indent, sort_keys=True))


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON in ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_dir(output: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """A temporary directory beside ``output``, moved into place only on success.

    A new ``output`` is created by one rename. An existing one gets each file
    replaced and keeps its other files, or (``replace=True``) is replaced
    whole. On failure nothing in ``output`` changes and no parent directory
    created for it is left behind.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory")
    created = []
    parent = out.absolute().parent
    for p in reversed([parent, *parent.parents]):
        if not p.exists():
            p.mkdir()
            created.append(p)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())
        if out.exists() and replace:
            shutil.rmtree(out)
        if out.exists():
            for item in tmp.iterdir():
                os.replace(item, out / item.name)
            tmp.rmdir()
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
