"""Chunk reassembly on disk with bounded memory, and resume.

Each artifact of a deployment is a preallocated ``<name>.part`` file written
at ``index * chunk_size`` plus a ``<name>.have`` bitmap (one byte per chunk).
The bitmap is only written after the part file is fsynced, so after a kill
it never claims a chunk whose bytes are not on disk; at worst a few chunks
are asked for again. Every chunk is checked against its sha256 in the signed
manifest before it is written: a poisoned chunk is refused (and asked for
again), so the first writer cannot spoil a deployment. ``missing_ranges()`` is what the agent asks the host to
(re)send.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from core.errors import TransferError
from core.files import fsync_dir, sha256_file, write_atomic
from core.protocol import Artifact, Manifest


def to_ranges(indexes: list[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 5] -> [(0, 3), (5, 6)]."""
    out: list[tuple[int, int]] = []
    for i in indexes:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


class ArtifactReceiver:
    """One artifact being received into ``directory/<name>.part``."""

    def __init__(self, directory: Path, name: str, artifact: Artifact,
                 flush_every: int = 64, flush_seconds: float = 0.5) -> None:
        self.directory = directory
        self.name = name
        self.artifact = artifact
        self.part = directory / f"{name}.part"
        self.have_path = directory / f"{name}.have"
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        n = artifact.chunks
        have = b""
        if self.have_path.exists() and self.part.exists():
            have = self.have_path.read_bytes()
        self.have = bytearray(have) if len(have) == n else bytearray(n)
        self.resumed_from = sum(self.have)
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != artifact.size:
                os.ftruncate(fd, artifact.size)
        finally:
            os.close(fd)
        self._fd = os.open(self.part, os.O_RDWR)
        self._dirty = 0
        self._last_flush = time.monotonic()
        self.poisoned = 0  # chunks refused because their digest did not match

    @property
    def count(self) -> int:
        return sum(self.have)

    @property
    def complete(self) -> bool:
        return all(self.have)

    def write(self, index: int, data: bytes) -> bool:
        """Store chunk ``index``; False if it is a duplicate. TransferError if it does not fit."""
        try:
            expected = self.artifact.chunk_length(index)
        except ValueError as exc:
            raise TransferError(f"{self.name}: {exc}") from None
        if len(data) != expected:
            raise TransferError(f"{self.name} chunk {index} has {len(data)} bytes, "
                                f"expected {expected}")
        if not self.artifact.chunk_ok(index, data):
            self.poisoned += 1
            raise TransferError(f"{self.name} chunk {index} does not match its sha256 in the "
                                "manifest: dropped")
        with self._lock:
            if self.have[index]:
                return False
            os.pwrite(self._fd, data, index * self.artifact.chunk_size)
            self.have[index] = 1
            self._dirty += 1
            if (self._dirty >= self.flush_every or self.complete
                    or time.monotonic() - self._last_flush > self.flush_seconds):
                self._flush_locked()
        return True

    def flush(self, only_dirty: bool = False) -> None:
        with self._lock:
            if not only_dirty or self._dirty:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self._fd < 0:
            return
        os.fsync(self._fd)
        write_atomic(self.have_path, bytes(self.have))
        self._dirty = 0
        self._last_flush = time.monotonic()

    def missing(self) -> list[int]:
        return [i for i, h in enumerate(self.have) if not h]

    def missing_ranges(self, limit: int = 4096) -> list[tuple[int, int]]:
        return to_ranges(self.missing())[:limit]

    def sha256(self) -> str:
        return sha256_file(self.part)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                self._flush_locked()
                os.close(self._fd)
                self._fd = -1


class Transfer:
    """All artifacts of one deployment, received under ``directory``."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest
        directory.mkdir(parents=True, exist_ok=True)
        fsync_dir(directory.parent)
        self.receivers = {name: ArtifactReceiver(directory, name, art)
                          for name, art in manifest.artifacts().items()}
        self.started = time.monotonic()
        self.finished: float | None = None
        self.last_chunk = time.monotonic()
        self.resumed_chunks = sum(r.resumed_from for r in self.receivers.values())
        self.resumed = self.resumed_chunks > 0

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.receivers.values())

    def receiver_for(self, sha256: str) -> ArtifactReceiver | None:
        """The receiver of the artifact whose digest is ``sha256``."""
        return next((r for r in self.receivers.values() if r.artifact.sha256 == sha256), None)

    def write(self, artifact: str, index: int, data: bytes) -> bool:
        rec = self.receivers.get(artifact)
        if rec is None:
            raise TransferError(f"deployment {self.manifest.deployment_id} has no {artifact}")
        new = rec.write(index, data)
        self.last_chunk = time.monotonic()
        if new and self.finished is None and self.complete:
            self.finished = time.monotonic()
        return new

    def missing(self) -> dict[str, list[tuple[int, int]]]:
        return {n: r.missing_ranges() for n, r in self.receivers.items() if not r.complete}

    def path(self, artifact: str) -> Path:
        return self.receivers[artifact].part

    @property
    def bytes_total(self) -> int:
        return sum(r.artifact.size for r in self.receivers.values())

    @property
    def chunks_total(self) -> int:
        return sum(r.artifact.chunks for r in self.receivers.values())

    @property
    def seconds(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return end - self.started

    def flush(self) -> None:
        """Persist what was received so far (the agent calls this when the link is idle)."""
        for r in self.receivers.values():
            r.flush(only_dirty=True)

    def close(self) -> None:
        for r in self.receivers.values():
            r.close()
