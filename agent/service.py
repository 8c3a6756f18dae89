"""The running agent: MQTT in, the state machine, reports out.

Network thread (paho): chunks are checked against their digests and written
straight to disk; manifests and cancels go to the worker queue. Worker
thread: runs the state machine (``agent.states``): ``Accept`` for each
manifest, then the deployment from the stage recorded in the lock, and asks
for missing chunks when the transfer stalls or after a reconnect. It also
restarts a dead network loop. Reports are signed with the device key,
spooled to disk first and deleted when the broker acknowledges them, so
reports made offline are sent after the reconnect; refusals of manifests
are answered once and never stored.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent import __version__
from agent.runtime import detect_runtime, select_runtime
from agent.states import Accept, Context, State, Transfer, advance, resume
from agent.storage import Storage
from agent.transfer import Transfer as ChunkStore
from core.errors import PaodingError, StorageError, TransferError
from core.mqtt import Broker, MqttClient, Will
from core.protocol import (
    MAX_PACKET_BYTES,
    ActiveModel,
    Cancel,
    ChunkRequest,
    Manifest,
    Report,
    RuntimeInfo,
    Status,
    Topics,
    artifact_filter,
    parse_artifact_topic,
)
from core.signing import SigningKey, TrustStore, device_key, one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    device_id: str
    broker: Broker
    state_dir: Path
    profile: str | None = None
    trust: TrustStore | None = None  # None only with allow_unsigned
    slowdown: float = 1.0
    emulation: str | None = None
    stall_seconds: float = 2.0
    runtime: str | None = None
    device_key: SigningKey | None = None  # None: <state_dir>/device.key, made on first start
    memory_limit_mb: float | None = None  # the benchmark child's cap (agent.isolate)


class Agent:
    """One device agent. ``start()`` then ``wait()``/``stop()``."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.device_id)
        self.storage = Storage(settings.state_dir)
        self._pidfile = self._lock_state_dir()
        for note in self.storage.recover():
            log.warning("recovery: %s", note)
        self.key = settings.device_key or device_key(self.storage.root / "device.key")
        offline = self.key.sign_device(Status(device_id=settings.device_id, online=False,
                                              profile=settings.profile))
        self.client = MqttClient(
            settings.broker, client_id=f"paoding-agent-{settings.device_id}",
            clean_session=False, will=Will(self.topics.status, offline.to_json()),
            max_packet_size=MAX_PACKET_BYTES)
        self.ctx = Context(
            storage=self.storage, device_id=settings.device_id, emit=self.emit,
            notify=self.notify, trust=settings.trust, link=self,
            runtime=lambda: select_runtime(settings.runtime), runtime_name=settings.runtime,
            slowdown=settings.slowdown, emulation=settings.emulation,
            memory_limit_mb=settings.memory_limit_mb)
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._state: State | None = None
        self._transfer: ChunkStore | None = None
        self._cancels: set[str] = set()
        self._tlock = threading.Lock()
        self._spool_lock = threading.Lock()
        self._in_flight: set[Path] = set()
        self._last_need = 0.0
        self._worker = threading.Thread(target=self._work, name="paoding-agent", daemon=True)
        self._runtime_info: RuntimeInfo | None = None

    # -- lifecycle ----------------------------------------------------------

    def _lock_state_dir(self) -> int:
        path = self.storage.root / "agent.pid"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(f"another agent is running with state directory "
                               f"{self.storage.root}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def start(self, *, wait_connected: float | None = None) -> None:
        """Connect (retrying in the background) and start working.

        With ``wait_connected`` the first connection must succeed in that many
        seconds (BrokerUnavailable otherwise); without it the agent also starts
        offline and keeps trying. A deployment recorded in the lock resumes
        from its stage.
        """
        self.runtime_info()  # find the interpreter now, not in the network thread
        self._state = resume(self.ctx)
        self.client.on_connect(self._on_connect)
        self.client.subscribe(self.topics.manifest, self._on_manifest, qos=1)
        self.client.subscribe(self.topics.cancel, self._on_cancel, qos=1)
        self._worker.start()
        if wait_connected is not None:
            self.client.connect(timeout=wait_connected, wait=True)
        else:
            self.client.connect(wait=False)

    def stop(self) -> None:
        """Publish offline status, disconnect, stop the worker."""
        self._stop.set()
        self._jobs.put(("stop", None))
        if self.client.connected:
            try:
                offline = self.key.sign_device(Status(
                    device_id=self.settings.device_id, online=False,
                    profile=self.settings.profile, active_model=self._active()))
                self.client.publish(self.topics.status, offline.to_json(),
                                    retain=True).wait(2.0)
            except PaodingError:
                pass
        self.client.close()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=30)
        with self._tlock:
            if self._transfer is not None:
                self._transfer.close()
        os.close(self._pidfile)

    def request_stop(self) -> None:
        """Ask ``wait()`` to return (safe from a signal handler)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def healthy(self) -> bool:
        """Whether the worker runs (``paoding-agent run`` exits non-zero otherwise)."""
        return self._worker.is_alive() or self._stop.is_set()

    # -- status -------------------------------------------------------------

    def runtime_info(self) -> RuntimeInfo | None:
        """The interpreter's name and version; it is only imported when a model is loaded."""
        if self._runtime_info is None:
            try:
                self._runtime_info = detect_runtime(self.settings.runtime)
            except PaodingError as exc:
                log.error("%s", exc)
        return self._runtime_info

    def _active(self) -> ActiveModel | None:
        rec = self.storage.active()
        if not rec:
            return None
        return ActiveModel(deployment_id=rec.get("deployment_id"), sha256=rec["sha256"],
                           size=rec.get("size", 0))

    def publish_status(self) -> None:
        status = Status(
            device_id=self.settings.device_id, online=True, profile=self.settings.profile,
            runtime=self.runtime_info(), active_model=self._active(),
            agent_version=__version__, emulation=self.settings.emulation)
        self.client.publish(self.topics.status, self.key.sign_device(status).to_json(),
                            retain=True)

    def _on_connect(self) -> None:
        # network thread: the status and the reports spooled offline go now, in their
        # order (the worker may be benchmarking for seconds: behind it they would reach
        # the host after the final report); the worker asks for missing chunks
        log.info("connected to %s", self.settings.broker.address)
        self.publish_status()
        self.flush_spool()
        self._jobs.put(("connected", None))

    # -- reports ------------------------------------------------------------

    def emit(self, report: Report) -> None:
        """Sign, spool and publish ``report`` (again after a reconnect until acknowledged).

        Final reports are retained: a host that lost its session still gets them.
        """
        log.info("report %s %s %s", report.deployment_id, report.state, report.reason or "")
        signed = self.key.sign_device(report)
        path = self.storage.spool_add(report.report_id, signed.to_json(), retain=report.final)
        self._publish_spooled(path)

    def notify(self, report: Report) -> None:
        """Answer a refused manifest: signed, sent once, not stored, not retained."""
        if self.client.connected:
            self.client.publish(self.topics.report,
                                self.key.sign_device(report).to_json(), qos=1)

    def flush_spool(self) -> None:
        with self._spool_lock:
            self._in_flight.clear()
        for path in self.storage.spool_list():
            self._publish_spooled(path)

    def _publish_spooled(self, path: Path) -> None:
        # no lock of ours is held across publish(): acks arrive under paho's lock
        with self._spool_lock:
            if not self.client.connected or path in self._in_flight:
                return
            self._in_flight.add(path)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            with self._spool_lock:
                self._in_flight.discard(path)
            return

        def acked(_f: object) -> None:
            self.storage.spool_remove(path)
            with self._spool_lock:
                self._in_flight.discard(path)

        self.client.publish(self.topics.report, payload, qos=1,
                            retain=Storage.spool_retained(path)).add_done_callback(acked)

    # -- incoming (network thread) --------------------------------------------

    def _on_manifest(self, topic: str, payload: bytes) -> None:
        self._jobs.put(("manifest", payload))

    def _on_cancel(self, topic: str, payload: bytes) -> None:
        self._jobs.put(("cancel", payload))

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained chunk being cleared
        try:
            sha, index = parse_artifact_topic(topic)
        except ValueError as exc:
            log.warning("dropped a chunk: %s", exc)
            return
        with self._tlock:
            tr = self._transfer
            rec = tr.receiver_for(sha) if tr is not None else None
            if tr is None or rec is None:
                log.debug("dropped a chunk of %s: no transfer needs it", sha[:12])
                return
            try:
                new = tr.write(rec.name, index, payload)
            except (TransferError, OSError) as exc:
                log.warning("dropped chunk %d of %s: %s", index, tr.manifest.deployment_id, exc)
                return
            if new and tr.complete:
                self._jobs.put(("advance", None))

    # -- the link the state machine uses (agent.states.Link) ------------------------

    def open(self, manifest: Manifest) -> ChunkStore:
        """The transfer of ``manifest``: opened from disk and subscribed to its chunks."""
        dep = manifest.deployment_id
        with self._tlock:
            tr = self._transfer
            if tr is not None and tr.manifest.deployment_id == dep:
                return tr
            if tr is not None:
                tr.close()
            tr = ChunkStore(self.storage.transfer_dir(dep), manifest)
            self._transfer = tr
            self._last_need = time.monotonic()  # retained chunks come first: ask later
        for art in manifest.artifacts().values():
            self.client.subscribe(artifact_filter(art.sha256), self._on_chunk, qos=1)
        return tr

    def close(self, deployment_id: str) -> None:
        with self._tlock:
            tr = self._transfer
            if tr is None or tr.manifest.deployment_id != deployment_id:
                return
            self._transfer = None
        for art in tr.manifest.artifacts().values():
            self.client.unsubscribe(artifact_filter(art.sha256))
        tr.close()

    def cancelled(self, deployment_id: str) -> bool:
        return deployment_id in self._cancels

    # -- worker -------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            self.client.ensure_loop()
            try:
                kind, arg = self._jobs.get(timeout=0.25)
            except queue.Empty:
                kind, arg = "tick", None
            try:
                if kind == "manifest":
                    self._accept(arg)
                elif kind == "cancel":
                    self._cancel(arg)
                elif kind == "connected":
                    self._request_missing()
                elif kind == "tick":
                    self._check_stall()
                self._advance()
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("worker job %s failed", kind)

    def _advance(self) -> None:
        if self._state is None:
            return
        dep = getattr(self._state, "manifest", None)
        self._state, outcome = advance(self.ctx, self._state)
        if outcome is not None:
            log.info("deployment %s: %s", dep.deployment_id if dep else "?", outcome)
        if self._state is None:
            _release_memory()
            if self.client.connected:
                self.publish_status()

    def _accept(self, payload: bytes) -> None:
        state, _outcome = advance(self.ctx, Accept(payload))
        if state is not None:
            self._state = state
        elif isinstance(self._state, Transfer):
            self._request_missing()  # the host sent the manifest again: say what we lack

    def _cancel(self, payload: bytes) -> None:
        try:
            cancel = Cancel.from_json(payload)
            if cancel.device_id != self.settings.device_id:
                raise PaodingError(f"cancel is for device {cancel.device_id}")
            if self.settings.trust is not None:
                self.settings.trust.verify(cancel)
        except (PaodingError, ValidationError, ValueError) as exc:
            log.warning("cancel dropped: %s", one_line(exc))
            return
        dep = cancel.deployment_id
        current = getattr(self._state, "manifest", None)
        if isinstance(self._state, Transfer) and current and current.deployment_id == dep:
            log.info("deployment %s cancelled by the host", dep)
            self._cancels.add(dep)
        elif current is not None and current.deployment_id == dep:
            log.info("cancel of %s ignored: its transfer is complete", dep)
        elif not self.storage.seen(dep):
            self.storage.record(dep, 0, accepted=False)  # its manifest is refused later
            log.info("deployment %s cancelled before its manifest arrived", dep)

    def _request_missing(self) -> None:
        with self._tlock:
            tr = self._transfer
            missing = tr.missing() if tr is not None else {}
        if tr is None or not missing or not self.client.connected:
            return
        for name, ranges in missing.items():
            req = ChunkRequest(device_id=self.settings.device_id,
                               deployment_id=tr.manifest.deployment_id,
                               artifact=tr.receivers[name].artifact.sha256,
                               ranges=ranges, have=tr.receivers[name].count)
            self.client.publish(self.topics.need, self.key.sign_device(req).to_json(), qos=1)
        self._last_need = time.monotonic()

    def _check_stall(self) -> None:
        with self._tlock:
            tr = self._transfer
        if tr is None or tr.complete:
            return
        if time.monotonic() - tr.last_chunk > 0.2:
            tr.flush()
        quiet = time.monotonic() - max(tr.last_chunk, self._last_need)
        if quiet > self.settings.stall_seconds:
            log.info("transfer %s stalled: asking again for missing chunks",
                     tr.manifest.deployment_id)
            self._request_missing()


def _release_memory() -> None:
    """Give the interpreter's freed heap back to the OS (glibc), so idle RSS stays low."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def status_summary(storage: Storage) -> dict[str, Any]:
    """What ``paoding-agent status`` shows: active model, its benchmark, history, release."""
    st = storage.state()
    lock = storage.read_lock() or {}
    return {
        "state_dir": str(storage.root),
        "active": st["active"],
        "previous": st["previous"],
        "active_path": str(storage.active_link) if st["active"] else None,
        "in_progress": lock.get("deployment_id"),
        "stage": lock.get("stage"),
        "last_release": storage.last_release,
        "spooled_reports": len(storage.spool_list()),
        "history": storage.history(),
    }
