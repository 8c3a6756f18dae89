"""Publish a signed deployment to one device and wait for its final report.

``deploy()`` sends the manifest (release, expiry and per-chunk digests, signed),
publishes the artifact's chunks once (retained on
``paoding/v2/artifacts/<sha256>/<index>``, shared by every deployment of the
same variant from this process and cleared by the last one; the publishing
and the bounded re-serving are ``fleet.artifacts.ArtifactServer``'s), re-serves
what the agent asks for, collects the agent's
reports and returns a ``DeploymentReport`` once the deployment reaches a
final state. Given the device's enrolled public key, reports and chunk
requests that do not carry the device's signature are dropped and logged.
``cancel()`` sends a signed Cancel.
"""

from __future__ import annotations

import logging
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
    DEFAULT_TTL_S,
    FINAL_STATES,
    Artifact,
    BenchmarkResult,
    BenchmarkSettings,
    Cancel,
    CheckResults,
    ChunkRequest,
    Manifest,
    Report,
    RuntimeInfo,
    Thresholds,
    Topics,
    TransferStats,
    check_id,
    parse_artifact_topic,
)
from core.signing import (
    SigningKey,
    VerifyKey,
    check_device_message,
    load_signing_key,
    load_verify_key,
    one_line,
)
from fleet.artifacts import ArtifactServer

log = logging.getLogger(__name__)

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
    resends_refused: int = 0  # chunk requests beyond the per-deployment limit
    dropped: int = 0  # device messages dropped (unsigned, another key, malformed)
    release: int | None = None
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


def _as_device_key(key: VerifyKey | bytes | str | os.PathLike[str] | None) -> VerifyKey | None:
    """A device's public key: a VerifyKey, PEM text/bytes or a PEM file."""
    if key is None or isinstance(key, VerifyKey):
        return key
    if isinstance(key, bytes) or (isinstance(key, str) and key.lstrip().startswith("-----")):
        return VerifyKey.from_pem(key, "the device's public key")
    return load_verify_key(key)


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


class _Shelf:
    """Which artifacts this process keeps retained on which broker (published once per variant).

    The first deployment of a variant publishes its chunks (retained); later
    ones reuse them; the last one to finish clears them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[tuple[str, str], int] = {}

    def claim(self, broker: str, sha256: str) -> bool:
        """Count one more user; True for the first (who publishes)."""
        with self._lock:
            n = self._users.get((broker, sha256), 0)
            self._users[(broker, sha256)] = n + 1
            return n == 0

    def release(self, broker: str, sha256: str) -> bool:
        """Count one user less; True for the last (who clears)."""
        with self._lock:
            n = self._users.get((broker, sha256), 1) - 1
            if n <= 0:
                self._users.pop((broker, sha256), None)
                return True
            self._users[(broker, sha256)] = n
            return False


SHELF = _Shelf()


class _Counted:
    """Publishes for one deployment: counts chunk messages, reports progress, keeps acks."""

    def __init__(self, client: MqttClient, progress: Progress | None) -> None:
        self.client, self.progress = client, progress
        self.sent = 0
        self.clearing: list[PublishFuture] = []

    def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> PublishFuture:
        fut = self.client.publish(topic, payload, qos=1, retain=retain)
        if not payload:  # clearing a retained chunk
            self.clearing.append(fut)
            return fut
        self.sent += 1
        if self.progress:
            sha, index = parse_artifact_topic(topic)
            self.progress("chunk", {"artifact": sha, "index": index, "sent": self.sent})
        return fut

    def wait_cleared(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for f in self.clearing:
            try:
                f.wait(max(0.1, deadline - time.monotonic()))
            except PaodingError:
                break


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
    release: int | None = None,
    rollback: bool = False,
    rollout_id: str | None = None,
    ttl: float | None = None,
    device_key: VerifyKey | bytes | str | os.PathLike[str] | None = None,
) -> DeploymentReport:
    """Send ``model`` to ``device_id`` and return its final report.

    ``release`` (default: milliseconds since the epoch) must grow per device;
    ``rollback`` lets a device take a release not above its last one; the
    manifest expires ``ttl`` seconds after creation (default: the larger of
    ``timeout`` and an hour). With ``device_key`` (the device's enrolled
    public key) only reports and requests signed by that key count.
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
        arts = {"model": Artifact.of(blob, chunk_size)}
        if probes is not None:
            pdata = _load_probes(probes)
            if host_outputs is not None:
                pdata = add_expected(blob, pdata, host_outputs)
            blobs["probes"] = probes_to_bytes(pdata)
            arts["probes"] = Artifact.of(blobs["probes"], chunk_size)
        now = time.time()
        fields: dict[str, Any] = {
            "deployment_id": deployment_id, "device_id": device_id, "rollout_id": rollout_id,
            "created_at": now, "expires_at": now + (ttl or max(timeout, DEFAULT_TTL_S)),
            "rollback": rollback, "model": arts["model"], "probes": arts.get("probes"),
            "thresholds": th, "benchmark": bs}
        if release is not None:
            fields["release"] = release
        manifest = Manifest(**fields)
    except ValidationError as exc:
        raise DeployError(one_line(exc)) from None
    signing_key = _as_key(key)
    if signing_key is not None:
        manifest = signing_key.sign(manifest)
    return _run(manifest, blobs, _as_broker(broker), timeout, progress,
                _as_device_key(device_key))


def cancel(device_id: str, deployment_id: str, broker: str | Broker,
           key: SigningKey | str | os.PathLike[str], timeout: float = 10.0) -> Cancel:
    """Publish a signed Cancel for a deployment that has not finished its transfer."""
    signing_key = _as_key(key)
    assert signing_key is not None
    message = signing_key.sign(Cancel(deployment_id=check_id(deployment_id, "deployment id"),
                                      device_id=check_id(device_id)))
    client = MqttClient(_as_broker(broker), client_id=f"paoding-cancel-{uuid.uuid4().hex[:8]}",
                        clean_session=True)
    client.connect(timeout=timeout)
    try:
        client.publish(Topics(device_id).cancel, message.to_json(), qos=1).wait(timeout)
    finally:
        client.close()
    return message


def _run(manifest: Manifest, blobs: dict[str, bytes], broker: Broker, timeout: float,
         progress: Progress | None, device_key: VerifyKey | None = None) -> DeploymentReport:
    topics = Topics(manifest.device_id)
    dep = manifest.deployment_id
    digest = manifest.digest
    events: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
    client = MqttClient(broker, client_id=f"paoding-host-{dep}"[:64], clean_session=False)
    client.subscribe(topics.report, lambda t, p: events.put(("report", t, p)))
    client.subscribe(topics.need, lambda t, p: events.put(("need", t, p)))
    t0 = time.monotonic()
    client.connect(timeout=min(10.0, timeout))
    artifacts = manifest.artifacts()
    publish = _Counted(client, progress)
    server = ArtifactServer(publish)
    for name, art in artifacts.items():
        server.add(blobs[name], art)
    owned = [a for a in artifacts.values() if SHELF.claim(broker.address, a.sha256)]
    reports: list[Report] = []
    seen: set[str] = set()
    received_at: float | None = None
    final: Report | None = None
    dropped = 0

    def parse(kind: str, topic: str, payload: bytes) -> Report | ChunkRequest | None:
        nonlocal dropped
        try:
            if device_key is not None:
                msg = check_device_message(topic, payload, lambda d: device_key
                                           if d == manifest.device_id else None)
            else:
                msg = (Report if kind == "report" else ChunkRequest).from_json(payload)
        except (PaodingError, ValidationError, ValueError) as exc:
            dropped += 1
            log.warning("dropped a %s for %s: %s", kind, dep, one_line(exc))
            return None
        return msg

    try:
        t_manifest = time.monotonic()
        client.publish(topics.manifest, manifest.to_json(), qos=1).wait(min(30.0, timeout))
        for art in owned:
            server.publish(art.sha256)
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
                kind, topic, payload = events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if kind == "need" and payload:
                req = parse(kind, topic, payload)
                if isinstance(req, ChunkRequest) and req.deployment_id == dep:
                    heard = True
                    server.request(req)
                continue
            rep = parse(kind, topic, payload) if payload else None
            if not isinstance(rep, Report):
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
        for t in (topics.report, topics.need):
            client.unsubscribe(t)
        for art in artifacts.values():
            if SHELF.release(broker.address, art.sha256):
                server.clear(art.sha256)
        publish.wait_cleared()
        client.close()
    return _summarise(manifest, final, reports, t0, t_manifest, received_at, publish.sent,
                      server.stats.refused_requests, dropped)


def _summarise(manifest: Manifest, final: Report, reports: list[Report], t0: float,
               t_manifest: float, received_at: float | None, sent: int, refused: int,
               dropped: int) -> DeploymentReport:
    bench = next((r.benchmark for r in reversed(reports) if r.benchmark), None)
    checks = next((r.checks for r in reversed(reports) if r.checks), None)
    transfer = next((r.transfer for r in reports if r.transfer), None)
    total = sum(a.size for a in manifest.artifacts().values())
    tsec = (received_at - t_manifest) if received_at else None
    return DeploymentReport(
        deployment_id=manifest.deployment_id, device_id=manifest.device_id,
        state=final.state, ok=final.state == "active", reason=final.reason,
        model_sha256=manifest.model.sha256, model_size=manifest.model.size,
        chunk_size=manifest.model.chunk_size, chunks=manifest.model.chunks,
        chunks_sent=sent, resends_refused=refused, dropped=dropped,
        release=manifest.release,
        signed_by=manifest.signature.key_id if manifest.signature else None,
        runtime=bench.runtime if bench else final.runtime, benchmark=bench, checks=checks,
        transfer=transfer, transfer_seconds=tsec,
        throughput_mb_s=(total / 1e6 / tsec) if tsec else None,
        elapsed_seconds=time.monotonic() - t0,
        states=[r.state for r in reports], reports=reports,
    )
