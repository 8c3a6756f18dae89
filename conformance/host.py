"""The kit's host side: one broker connection, every device message kept, chunks served.

Every message the device publishes is kept in arrival order with the result
of ``core.signing.check_device_message`` (parsed and authenticated, or the
one-line reason it was not), so a check can both wait for an event and look
back at everything that happened before it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from core.errors import MessageRejected
from core.mqtt import Broker, MqttClient
from core.protocol import (
    DEVICE_MODELS,
    ChunkRequest,
    DeviceMessage,
    Manifest,
    Status,
    Topics,
    artifact_topic,
    parse_device_topic,
)
from core.signing import VerifyKey, check_device_message


@dataclass
class Received:
    """One device message: ``message`` parsed (None if malformed), ``problem`` if not authentic."""

    seq: int
    kind: str
    payload: bytes
    message: DeviceMessage | None
    problem: str | None
    at: float = field(default_factory=time.monotonic)

    @property
    def authentic(self) -> bool:
        return self.message is not None and self.problem is None


class Inbox:
    """Device messages in arrival order; ``wait`` for one that matches."""

    def __init__(self, device_id: str, key: VerifyKey) -> None:
        self.device_id, self.key = device_id, key
        self._items: list[Received] = []
        self._cond = threading.Condition()

    def add(self, topic: str, payload: bytes) -> None:
        try:
            _device, kind = parse_device_topic(topic)
        except ValueError:
            return
        message: DeviceMessage | None = None
        problem = None
        if kind in DEVICE_MODELS and payload:
            try:
                message = DEVICE_MODELS[kind].from_json(payload)
            except (ValidationError, ValueError) as exc:
                problem = f"malformed {kind}: {' '.join(str(exc).split())[:200]}"
            if message is not None:
                try:
                    check_device_message(topic, payload, lambda _d: self.key)
                except MessageRejected as exc:
                    problem = str(exc)
        with self._cond:
            self._items.append(Received(len(self._items), kind, payload, message, problem))
            self._cond.notify_all()

    def mark(self) -> int:
        """The sequence number the next message will get."""
        with self._cond:
            return len(self._items)

    def since(self, seq: int = 0) -> list[Received]:
        with self._cond:
            return list(self._items[seq:])

    def wait(self, match: Callable[[Received], bool], since: int,
             timeout: float) -> Received | None:
        """The first message at or after ``since`` that matches (None after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self._items[since:]:
                    if match(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


class ChunkServer:
    """Serves one deployment's chunks; ``allow`` says which indexes may go out."""

    def __init__(self, client: MqttClient, manifest: Manifest,
                 blobs: dict[str, bytes]) -> None:
        self.client, self.manifest = client, manifest
        self.data = {a.sha256: (a, blobs[name]) for name, a in manifest.artifacts().items()}
        self.allow: Callable[[str, int], bool] = lambda _sha, _i: True
        self.retained: set[tuple[str, int]] = set()

    def chunk(self, sha: str, index: int) -> bytes:
        art, blob = self.data[sha]
        return blob[index * art.chunk_size:(index + 1) * art.chunk_size]

    def publish(self, sha: str, index: int, *, retain: bool = False,
                payload: bytes | None = None) -> None:
        if retain:
            self.retained.add((sha, index))
        self.client.publish(artifact_topic(sha, index),
                            self.chunk(sha, index) if payload is None else payload,
                            qos=1, retain=retain)

    def serve(self, request: ChunkRequest) -> None:
        """Answer a chunk request (network thread: publish, never wait)."""
        if request.deployment_id != self.manifest.deployment_id or request.artifact not in \
                self.data:
            return
        art, _blob = self.data[request.artifact]
        for start, end in request.ranges:
            for i in range(start, min(end, art.chunks)):
                if self.allow(request.artifact, i):
                    self.publish(request.artifact, i)

    def clear(self, timeout: float) -> None:
        """Clear every retained chunk this server published (empty retained messages)."""
        futures = [self.client.publish(artifact_topic(sha, i), b"", qos=1, retain=True)
                   for sha, i in sorted(self.retained)]
        for f in futures:
            f.wait(timeout)
        self.retained.clear()


class Host:
    """The kit's broker connection for one device."""

    def __init__(self, broker: Broker, device_id: str, device_key: VerifyKey) -> None:
        self.broker, self.device_id = broker, device_id
        self.topics = Topics(device_id)
        self.inbox = Inbox(device_id, device_key)
        self.server: ChunkServer | None = None
        self.client = MqttClient(broker, f"paoding-conformance-{device_id}-{time.time_ns()}",
                                 clean_session=True)
        self.client.subscribe(f"{self.topics.base}/+", self._on_message, qos=1)

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.inbox.add(topic, payload)
        if topic == self.topics.need and self.server is not None:
            try:
                request = ChunkRequest.from_json(payload)
            except (ValidationError, ValueError):
                return
            self.server.serve(request)

    def connect(self, timeout: float) -> None:
        self.client.connect(timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def send(self, topic: str, payload: bytes, timeout: float) -> None:
        self.client.publish(topic, payload, qos=1).wait(timeout)

    def send_manifest(self, manifest: Manifest | bytes, timeout: float) -> int:
        """Publish a manifest; return the inbox mark taken just before."""
        mark = self.inbox.mark()
        payload = manifest if isinstance(manifest, bytes) else manifest.to_json()
        self.send(self.topics.manifest, payload, timeout)
        return mark

    def serve(self, manifest: Manifest, blobs: dict[str, bytes]) -> ChunkServer:
        self.server = ChunkServer(self.client, manifest, blobs)
        return self.server

    def kick_agent(self, client_id: str, timeout: float) -> None:
        """Disconnect the agent: connect with its client id (the broker drops the older one)."""
        taker = MqttClient(self.broker, client_id, clean_session=True)
        try:
            taker.connect(timeout=timeout)
        finally:
            taker.close()

    def status(self, since: int, timeout: float,
               match: Callable[[Status], bool] = lambda _s: True) -> Received | None:
        return self.inbox.wait(lambda r: isinstance(r.message, Status) and match(r.message),
                               since, timeout)

