"""Publish a signed deployment to one device and wait for its final report.

``deploy()`` sends the manifest, then serves the chunks the agent asks for
(again after a reconnect or an agent restart), collects the agent's reports
and returns a ``DeploymentReport`` once the deployment reaches a final state.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import DeployError, DeploymentTimeout, PaodingError
from core.mqtt import Broker, MqttClient, PublishFuture
from core.probes import load_probes, probes_to_bytes, validate_probes
from core.protocol import (
    DEFAULT_CHUNK_BYTES,
    FINAL_STATES,
    Artifact,
    BenchmarkResult,
    BenchmarkSettings,
    CheckResults,
    ChunkRequest,
    Manifest,
    Report,
    RuntimeInfo,
    Thresholds,
    Topics,
    TransferStats,
    check_id,
)
from core.signing import SigningKey, load_signing_key

Progress = Callable[[str, dict[str, Any]], None]
# Runs a TFLite model on the host: (model bytes, x) -> outputs, for the probes' ``expected``.
HostOutputs = Callable[[bytes, np.ndarray], np.ndarray]
MANIFEST_RESEND_S = 5.0




class DeploymentReport(BaseModel):
    """The outcome of one deployment, as the host saw it."""

    model_config = ConfigDict(extra="forbid")

    deployment_id: str
    device_id: str
    state: str  # active, rolled_back, rejected, failed or error
    ok: bool
    reason: str | None = None
    model_sha256: str
    model_size: int
    chunk_size: int
    chunks: int
    chunks_sent: int  # chunk messages the host published (re-sends included)
    signed_by: str | None = None
    runtime: RuntimeInfo | None = None
    benchmark: BenchmarkResult | None = None
    checks: CheckResults | None = None
    transfer: TransferStats | None = None  # as the agent measured it
    transfer_seconds: float | None = None  # manifest sent -> 'received' report
    throughput_mb_s: float | None = None
    elapsed_seconds: float
    states: list[str]
    reports: list[Report]


def _as_broker(broker: str | Broker) -> Broker:
    if isinstance(broker, Broker):
        return broker
    try:
        return Broker.from_url(broker)
    except ValueError as exc:
        raise DeployError(str(exc)) from None


def _as_key(key: SigningKey | str | os.PathLike[str] | None) -> SigningKey | None:
    if key is None or isinstance(key, SigningKey):
        return key
    return load_signing_key(key)


def _load_probes(probes: str | os.PathLike[str] | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(probes, dict):
        data = {k: np.asarray(v) for k, v in probes.items()}
        validate_probes(data)
        return data
    return load_probes(probes)


def add_expected(model: bytes, probes: dict[str, np.ndarray], host_outputs: HostOutputs
                 ) -> dict[str, np.ndarray]:
    """Add the model's own host outputs as ``expected`` (when the host can run it)."""
    try:
        out = np.asarray(host_outputs(model, np.asarray(probes["x"], dtype=np.float32)))
    except (PaodingError, ValueError):
        return probes  # the device will say why it cannot load the model
    if out.shape != np.asarray(probes["reference"]).shape:
        return probes
    return dict(probes, expected=out.astype(np.float32))


class _Sender:
    """Publishes requested chunks in order, with a bounded number in flight."""

    def __init__(self, client: MqttClient, topics: Topics, deployment_id: str,
                 blobs: dict[str, bytes], artifacts: dict[str, Artifact],
                 window: int = 256, progress: Progress | None = None) -> None:
        self.client, self.topics, self.dep = client, topics, deployment_id
        self.blobs, self.artifacts = blobs, artifacts
        self.window, self.progress = window, progress
        self._want: dict[str, set[int]] = {k: set() for k in artifacts}
        self._cv = threading.Condition()
        self._stop = False
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="paoding-sender", daemon=True)
        self._thread.start()

    def request(self, req: ChunkRequest) -> None:
        art = self.artifacts.get(req.artifact)
        if art is None:
            return
        with self._cv:
            for start, end in req.ranges:
                self._want[req.artifact].update(range(start, min(end, art.chunks)))
            self._cv.notify()

    def _next(self) -> tuple[str, int] | None:
        for name, want in self._want.items():
            if want:
                i = min(want)
                want.discard(i)
                return name, i
        return None

    def _run(self) -> None:
        inflight: list[PublishFuture] = []
        while True:
            with self._cv:
                while not self._stop and not any(self._want.values()):
                    self._cv.wait(0.5)
                if self._stop:
                    return
                item = self._next()
            if item is None:
                continue
            name, i = item
            art = self.artifacts[name]
            start = i * art.chunk_size
            data = self.blobs[name][start:start + art.chunk_size]
            inflight.append(self.client.publish(self.topics.chunk(self.dep, name, i), data, qos=1))
            self.sent += 1
            if len(inflight) >= self.window:
                inflight = [f for f in inflight if not f.done()]
                while len(inflight) >= self.window and not self._stop:
                    try:
                        inflight[0].wait(0.5)
                    except PaodingError:
                        pass
                    inflight = [f for f in inflight if not f.done()]
            if self.progress:
                self.progress("chunk", {"artifact": name, "index": i, "sent": self.sent})

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)


def deploy(
    model: str | os.PathLike[str] | bytes,
    device_id: str,
    broker: str | Broker,
    *,
    probes: str | os.PathLike[str] | dict[str, np.ndarray] | None = None,
    thresholds: Thresholds | dict[str, Any] | None = None,
    key: SigningKey | str | os.PathLike[str] | None = None,
    benchmark: BenchmarkSettings | dict[str, Any] | None = None,
    timeout: float = 300.0,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
    deployment_id: str | None = None,
    host_outputs: HostOutputs | None = None,
) -> DeploymentReport:
    """Send ``model`` to ``device_id`` and return its final report.

    Raises ``BrokerUnavailable`` (naming host:port) when the broker cannot be
    reached and ``DeploymentTimeout`` when no final report arrives in ``timeout``.
    """
    check_id(device_id)
    deployment_id = check_id(deployment_id or f"d{time.strftime('%Y%m%d%H%M%S')}-"
                             f"{uuid.uuid4().hex[:8]}", "deployment id")
    if isinstance(model, bytes | bytearray):
        blob = bytes(model)
    else:
        try:
            blob = Path(model).read_bytes()
        except OSError as exc:
            raise DeployError(f"cannot read model {model}: {exc.strerror or exc}") from None
    if not blob:
        raise DeployError("the model is empty")
    try:
        th = thresholds if isinstance(thresholds, Thresholds) else Thresholds(**(thresholds or {}))
        bs = benchmark if isinstance(benchmark, BenchmarkSettings) else BenchmarkSettings(
            **(benchmark or {}))
        blobs = {"model": blob}
        arts = {"model": Artifact(sha256=hashlib.sha256(blob).hexdigest(), size=len(blob),
                                  chunk_size=chunk_size)}
        if probes is not None:
            pdata = _load_probes(probes)
            if host_outputs is not None:
                pdata = add_expected(blob, pdata, host_outputs)
            blobs["probes"] = probes_to_bytes(pdata)
            arts["probes"] = Artifact(sha256=hashlib.sha256(blobs["probes"]).hexdigest(),
                                      size=len(blobs["probes"]), chunk_size=chunk_size)
        manifest = Manifest(deployment_id=deployment_id, device_id=device_id,
                            model=arts["model"], probes=arts.get("probes"), thresholds=th,
                            benchmark=bs)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DeployError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    signing_key = _as_key(key)
    if signing_key is not None:
        manifest = signing_key.sign(manifest)
    return _run(manifest, blobs, _as_broker(broker), timeout, progress)


def _run(manifest: Manifest, blobs: dict[str, bytes], broker: Broker, timeout: float,
         progress: Progress | None) -> DeploymentReport:
    topics = Topics(manifest.device_id)
    dep = manifest.deployment_id
    digest = manifest.digest
    events: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client = MqttClient(broker, client_id=f"paoding-host-{dep}"[:64], clean_session=False)
    client.subscribe(topics.report, lambda _t, p: events.put(("report", p)))
    client.subscribe(topics.need, lambda _t, p: events.put(("need", p)))
    t0 = time.monotonic()
    client.connect(timeout=min(10.0, timeout))
    sender = _Sender(client, topics, dep, blobs, manifest.artifacts(), progress=progress)
    reports: list[Report] = []
    seen: set[str] = set()
    received_at: float | None = None
    final: Report | None = None
    try:
        t_manifest = time.monotonic()
        client.publish(topics.manifest, manifest.to_json(), qos=1).wait(min(30.0, timeout))
        if progress:
            progress("manifest", {"deployment_id": dep})
        deadline = t0 + timeout
        heard = False
        last_manifest = time.monotonic()
        while final is None:
            if not heard and time.monotonic() - last_manifest > MANIFEST_RESEND_S:
                # the broker may have lost the agent's session: send the manifest again
                client.publish(topics.manifest, manifest.to_json(), qos=1)
                last_manifest = time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                last = reports[-1].state if reports else "no report"
                raise DeploymentTimeout(
                    f"no final report from {manifest.device_id} for {dep} within {timeout:g}s "
                    f"(last: {last}; broker {broker.address})")
            try:
                kind, payload = events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if kind == "need":
                try:
                    req = ChunkRequest.from_json(payload)
                except (ValidationError, ValueError):
                    continue
                if req.deployment_id == dep:
                    heard = True
                    sender.request(req)
                continue
            try:
                rep = Report.from_json(payload)
            except (ValidationError, ValueError):
                continue
            if (rep.deployment_id != dep or rep.report_id in seen
                    or rep.manifest_sha256 != digest):  # e.g. a retained report of a replay
                continue
            seen.add(rep.report_id)
            heard = True
            reports.append(rep)
            if rep.state == "received" and received_at is None:
                received_at = time.monotonic()
            if progress:
                progress("report", {"state": rep.state, "reason": rep.reason})
            if rep.final or rep.state in FINAL_STATES or rep.state == "error":
                final = rep
    finally:
        sender.close()
        for t in (topics.report, topics.need):
            client.unsubscribe(t)
        client.close()
    return _summarise(manifest, final, reports, t0, t_manifest, received_at, sender.sent)


def _summarise(manifest: Manifest, final: Report, reports: list[Report], t0: float,
               t_manifest: float, received_at: float | None, sent: int) -> DeploymentReport:
    bench = next((r.benchmark for r in reversed(reports) if r.benchmark), None)
    checks = next((r.checks for r in reversed(reports) if r.checks), None)
    transfer = next((r.transfer for r in reports if r.transfer), None)
    total = sum(a.size for a in manifest.artifacts().values())
    tsec = (received_at - t_manifest) if received_at else None
    return DeploymentReport(
        deployment_id=manifest.deployment_id, device_id=manifest.device_id,
        state=final.state, ok=final.state == "active", reason=final.reason,
        model_sha256=manifest.model.sha256, model_size=manifest.model.size,
        chunk_size=manifest.model.chunk_size, chunks=manifest.model.chunks, chunks_sent=sent,
        signed_by=manifest.signature.key_id if manifest.signature else None,
        runtime=bench.runtime if bench else final.runtime, benchmark=bench, checks=checks,
        transfer=transfer, transfer_seconds=tsec,
        throughput_mb_s=(total / 1e6 / tsec) if tsec else None,
        elapsed_seconds=time.monotonic() - t0,
        states=[r.state for r in reports], reports=reports,
    )
