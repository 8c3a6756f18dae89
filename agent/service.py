"""The running agent: MQTT in, the state machine, reports out.

Network thread (paho): chunks are written straight to disk; manifests go to
the worker queue. Worker thread: validates manifests, asks for missing
chunks (again when the transfer stalls or after a reconnect), runs the state
machine when a transfer is complete. Reports are spooled to disk first and
deleted when the broker acknowledges them, so reports made offline are sent
after the reconnect.
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
from agent.storage import Storage
from agent.transfer import Transfer
from core.errors import PaodingError, StorageError, TransferError
from core.mqtt import Broker, MqttClient, Will
from core.protocol import (
    ActiveModel,
    ChunkRequest,
    Manifest,
    Report,
    RuntimeInfo,
    Status,
    Topics,
    TransferStats,
)
from core.signing import TrustStore

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


def _short(exc: Exception, limit: int = 600) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                 for e in exc.errors()[:5]]
        text = "; ".join(parts)
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Agent:
    """One device agent. ``start()`` then ``wait()``/``stop()``."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.device_id)
        self.storage = Storage(settings.state_dir)
        self._pidfile = self._lock_state_dir()
        for note in self.storage.recover():
            log.warning("recovery: %s", note)
        offline = Status(device_id=settings.device_id, online=False, profile=settings.profile)
        self.client = MqttClient(
            settings.broker, client_id=f"paoding-agent-{settings.device_id}",
            clean_session=False, will=Will(self.topics.status, offline.to_json()))
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._transfer: Transfer | None = None
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
        offline and keeps trying.
        """
        self.runtime_info()  # find the interpreter now, not in the network thread
        self._resume()
        self.client.on_connect(self._on_connect)
        self.client.subscribe(self.topics.manifest, self._on_manifest, qos=1)
        self.client.subscribe(self.topics.chunk_filter, self._on_chunk, qos=1)
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
                offline = Status(device_id=self.settings.device_id, online=False,
                                 profile=self.settings.profile, active_model=self._active())
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
        self.client.publish(self.topics.status, status.to_json(), retain=True)

    def _on_connect(self) -> None:
        # network thread: do nothing slow here, the worker does the rest
        log.info("connected to %s", self.settings.broker.address)
        self._jobs.put(("connected", None))

    def _connected(self) -> None:
        self.publish_status()
        self.flush_spool()
        self._request_missing()

    # -- reports ------------------------------------------------------------

    def emit(self, report: Report) -> None:
        """Spool ``report`` and publish it when connected (again after a reconnect)."""
        log.info("report %s %s %s", report.deployment_id, report.state, report.reason or "")
        path = self.storage.spool_add(report.report_id, report.to_json())
        self._publish_spooled(path)

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

        # retained: a host that lost its session still gets the latest report on resubscribe
        self.client.publish(self.topics.report, payload, qos=1,
                            retain=True).add_done_callback(acked)

    # -- incoming (network thread) --------------------------------------------

    def _on_manifest(self, topic: str, payload: bytes) -> None:
        self._jobs.put(("manifest", payload))

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        try:
            dep, artifact, index = self.topics.parse_chunk(topic)
        except ValueError as exc:
            log.warning("dropped a chunk: %s", exc)
            return
        with self._tlock:
            tr = self._transfer
            if tr is None or tr.manifest.deployment_id != dep:
                log.debug("dropped a chunk for %s: no such transfer in progress", dep)
                return
            try:
                new = tr.write(artifact, index, payload)
            except (TransferError, OSError) as exc:
                log.warning("dropped chunk %s/%d of %s: %s", artifact, index, dep, exc)
                return
            if new and tr.complete:
                self._jobs.put(("run", dep))

    # -- worker -------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                kind, arg = self._jobs.get(timeout=0.25)
            except queue.Empty:
                self._check_stall()
                continue
            try:
                if kind == "manifest":
                    self._handle_manifest(arg)
                elif kind == "connected":
                    self._connected()
                elif kind == "run":
                    self._run_deployment(arg)
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("worker job %s failed", kind)

    def _error(self, reason: str, manifest: Manifest | None = None,
               state: str = "error") -> None:
        log.warning("%s", reason)
        self.emit(Report(device_id=self.settings.device_id,
                         deployment_id=manifest.deployment_id if manifest else None,
                         manifest_sha256=manifest.digest if manifest else None,
                         state=state, final=state != "error", reason=reason[:4000]))

    def _handle_manifest(self, payload: bytes) -> None:
        try:
            manifest = Manifest.from_json(payload)
        except (ValidationError, ValueError) as exc:
            self._error(f"malformed manifest dropped: {_short(exc)}")
            return
        dep = manifest.deployment_id
        if manifest.device_id != self.settings.device_id:
            self._error(f"manifest {dep} is for device {manifest.device_id}, "
                        f"not {self.settings.device_id}", manifest)
            return
        with self._tlock:
            current = self._transfer
        lock = self.storage.read_lock()
        if current is not None or lock:
            busy = current.manifest.deployment_id if current else lock.get("deployment_id")
            if busy == dep and current is not None and current.manifest.digest != manifest.digest:
                self._error(f"deployment {dep} is in progress with a different manifest: "
                            "refused", manifest, "rejected")
                return
            if busy == dep:
                log.info("manifest %s again: resuming", dep)
                self._request_missing()
                return
            self._error(f"deployment {dep} refused: deployment {busy} is in progress", manifest,
                        "rejected")
            return
        if self.storage.seen(dep):
            self._error(f"deployment id {dep} was already used: replay refused", manifest)
            return
        if self.settings.trust is not None:
            try:
                self.settings.trust.verify(manifest)
            except PaodingError as exc:
                self._finish_early(manifest, "rejected", str(exc))
                return
        self.storage.write_lock({"deployment_id": dep, "stage": "transfer",
                                 "manifest": manifest.model_dump(mode="json"),
                                 "started_at": time.time()})
        self._open_transfer(manifest)

    def _finish_early(self, manifest: Manifest, outcome: str, reason: str) -> None:
        self.storage.append_history({"deployment_id": manifest.deployment_id,
                                     "outcome": outcome, "reason": reason,
                                     "sha256": manifest.model.sha256,
                                     "size": manifest.model.size, "finished_at": time.time()})
        self._error(reason, manifest, outcome)

    def _open_transfer(self, manifest: Manifest) -> None:
        tr = Transfer(self.storage.transfer_dir(manifest.deployment_id), manifest)
        with self._tlock:
            self._transfer = tr
        if tr.complete:
            self._jobs.put(("run", manifest.deployment_id))
        else:
            self._request_missing()

    def _resume(self) -> None:
        lock = self.storage.read_lock()
        if not lock:
            return
        try:
            manifest = Manifest.model_validate(lock["manifest"])
        except (KeyError, ValidationError, TypeError) as exc:
            log.error("unreadable deployment lock dropped: %s", _short(exc))
            self.storage.clear_lock()
            return
        log.info("resuming deployment %s from %s", manifest.deployment_id, lock.get("stage"))
        self._open_transfer(manifest)

    def _request_missing(self) -> None:
        with self._tlock:
            tr = self._transfer
            missing = tr.missing() if tr is not None else {}
        if tr is None or not missing or not self.client.connected:
            return
        for artifact, ranges in missing.items():
            req = ChunkRequest(device_id=self.settings.device_id,
                               deployment_id=tr.manifest.deployment_id, artifact=artifact,
                               ranges=ranges, have=tr.receivers[artifact].count)
            self.client.publish(self.topics.need, req.to_json(), qos=1)
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

    def _run_deployment(self, deployment_id: str) -> None:
        with self._tlock:
            tr = self._transfer
        if tr is None or tr.manifest.deployment_id != deployment_id or not tr.complete:
            return
        from agent.states import Context, Received, run_machine  # numpy, the interpreter

        tr.close()
        stats = TransferStats(bytes=tr.bytes_total, chunks=tr.chunks_total,
                              seconds=round(tr.seconds, 6), resumed=tr.resumed,
                              resumed_chunks=tr.resumed_chunks)
        ctx = Context(
            storage=self.storage, manifest=tr.manifest, transfer_dir=tr.directory,
            device_id=self.settings.device_id, emit=self.emit, trust=self.settings.trust,
            runtime=lambda: select_runtime(self.settings.runtime),
            runtime_name=self.settings.runtime,
            slowdown=self.settings.slowdown, emulation=self.settings.emulation, transfer=stats)
        outcome = run_machine(ctx, Received())
        log.info("deployment %s: %s", deployment_id, outcome)
        with self._tlock:
            self._transfer = None
        _release_memory()
        if self.client.connected:
            self.publish_status()


def _release_memory() -> None:
    """Give the interpreter's freed heap back to the OS (glibc), so idle RSS stays low."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def status_summary(storage: Storage) -> dict[str, Any]:
    """What ``paoding-agent status`` shows: active model, its benchmark, history."""
    st = storage.state()
    return {
        "state_dir": str(storage.root),
        "active": st["active"],
        "previous": st["previous"],
        "active_path": str(storage.active_link) if st["active"] else None,
        "in_progress": (storage.read_lock() or {}).get("deployment_id"),
        "spooled_reports": len(storage.spool_list()),
        "history": storage.history(),
    }
