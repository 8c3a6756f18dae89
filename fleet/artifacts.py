"""Artifacts published once per variant, and missing chunks re-served within a bound.

Each artifact (a model or a probe bundle) goes out once, as retained QoS 1
messages on ``paoding/v2/artifacts/<sha256>/<index>``: every device deploying
that variant subscribes to the same topics and gets the chunks from the
broker, so the bytes the host sends grow with the number of variants, not
devices. A device that lacks chunks asks on its ``need`` topic; a chunk is
re-published at most once per ``min_interval_s`` whatever the number of
devices asking (one re-publish reaches every subscriber), and at most
``max_reserves`` times per artifact in all. When no rollout needs the
artifact any more its retained chunks are cleared (an empty retained message).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.mqtt import PublishFuture
from core.protocol import Artifact, ChunkRequest, artifact_topic

Publish = Callable[..., PublishFuture]


@dataclass
class _Served:
    artifact: Artifact
    data: bytes
    last_sent: dict[int, float] = field(default_factory=dict)
    reserves: int = 0


@dataclass
class ServerStats:
    published_bytes: int = 0  # chunk bytes the host sent (first publication and re-serves)
    published_chunks: int = 0
    reserved_chunks: int = 0  # re-served on request
    refused_requests: int = 0  # chunk requests over the bound, or for unknown artifacts


class ArtifactServer:
    """The artifacts of the rollouts in progress, by sha256."""

    def __init__(self, publish: Publish, *, min_interval_s: float = 1.0,
                 max_reserves_per_chunk: int = 64) -> None:
        self._publish = publish
        self.min_interval_s = min_interval_s
        self.max_reserves_per_chunk = max_reserves_per_chunk
        self._served: dict[str, _Served] = {}
        self.stats = ServerStats()

    def add(self, data: bytes, artifact: Artifact) -> None:
        self._served.setdefault(artifact.sha256, _Served(artifact, data))

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._served

    def publish(self, sha256: str) -> None:
        """(Re-)publish every chunk, retained: once per rollout, and after a broker restart."""
        served = self._served[sha256]
        for index in range(served.artifact.chunks):
            self._send(served, index)

    def artifact(self, sha256: str) -> Artifact:
        return self._served[sha256].artifact

    def request(self, req: ChunkRequest, budget: int | None = None) -> int:
        """Re-serve the chunks a device asks for, within the bounds (and at most ``budget``
        chunks for this request); how many were sent."""
        served = self._served.get(req.artifact)
        if served is None or (budget is not None and budget <= 0):
            self.stats.refused_requests += 1
            return 0
        limit = served.artifact.chunks * self.max_reserves_per_chunk
        now = time.monotonic()
        sent = 0
        for start, end in req.ranges:
            for index in range(start, min(end, served.artifact.chunks)):
                last = served.last_sent.get(index)
                if last is not None and now - last < self.min_interval_s:
                    continue  # just sent: it reaches this device too
                if served.reserves >= limit or (budget is not None and sent >= budget):
                    self.stats.refused_requests += 1
                    return sent
                served.reserves += 1
                self.stats.reserved_chunks += 1
                self._send(served, index)
                sent += 1
        return sent

    def _send(self, served: _Served, index: int) -> None:
        a = served.artifact
        chunk = served.data[index * a.chunk_size:(index + 1) * a.chunk_size]
        self._publish(artifact_topic(a.sha256, index), chunk, retain=True)
        served.last_sent[index] = time.monotonic()
        self.stats.published_bytes += len(chunk)
        self.stats.published_chunks += 1

    def clear(self, sha256: str) -> None:
        """Remove the retained chunks from the broker (an empty retained message each)."""
        served = self._served.pop(sha256, None)
        if served is None:
            return
        for index in range(served.artifact.chunks):
            self._publish(artifact_topic(sha256, index), b"", retain=True)
