"""Deploy a signed manifest to one device and return its final report.

``deploy()`` makes the manifest (release, expiry and per-chunk digests, signed),
runs it through the fleet's one deployment engine (a rollout of one device:
``fleet.orchestrator.direct_engine``) and summarises what the device said as a
``DeploymentReport``.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import DeployError, DeploymentTimeout
from core.mqtt import Broker
from core.protocol import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TTL_S,
    FINAL_STATES,
    BenchmarkResult,
    BenchmarkSettings,
    CheckResults,
    Manifest,
    Report,
    RuntimeInfo,
    Thresholds,
    TransferStats,
    check_id,
)
from core.signing import SigningKey, VerifyKey, load_signing_key, load_verify_key, one_line
from fleet.gate import Check, checker
from fleet.link import FleetLink
from fleet.orchestrator import HostOutputs, Progress, add_expected, direct_engine, prepare_variants
from fleet.registry import Registry
from fleet.rollout import Outcome

__all__ = ["DeploymentReport", "HostOutputs", "add_expected", "deploy"]


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
    release_jump: bool = False,
    release_reset: bool = False,
    rollout_id: str | None = None,
    ttl: float | None = None,
    device_key: VerifyKey | bytes | str | os.PathLike[str] | None = None,
) -> DeploymentReport:
    """Send ``model`` to ``device_id`` and return its final report.

    ``release`` (default: milliseconds since the epoch) must grow per device;
    ``rollback`` lets a device take a release not above its last one;
    ``release_jump`` lets it take one more than 30 days beyond its last (the
    operator's explicit step); ``release_reset`` makes this release the device's
    last one whatever it accepted before (the way out for a device wedged by a
    release far ahead). All three are signed with the manifest; the
    manifest expires ``ttl`` seconds after creation (default: the larger of
    ``timeout`` and an hour). With ``device_key`` (the device's enrolled
    public key) only reports and requests signed by that key count.
    Raises ``BrokerUnavailable`` (naming host:port) when the broker cannot be
    reached and ``DeploymentTimeout`` when no final report arrives in ``timeout``.
    """
    check_id(device_id)
    deployment_id = check_id(deployment_id or f"d{time.strftime('%Y%m%d%H%M%S')}-"
                             f"{uuid.uuid4().hex[:8]}", "deployment id")
    try:
        prepared, blobs = prepare_variants({device_id: model}, probes=probes,
                                           host_outputs=host_outputs, chunk_size=chunk_size)
        now = time.time()
        fields: dict[str, Any] = {
            "deployment_id": deployment_id, "device_id": device_id, "rollout_id": rollout_id,
            "created_at": now, "expires_at": now + (ttl or max(timeout, DEFAULT_TTL_S)),
            "rollback": rollback, "release_jump": release_jump,
            "release_reset": release_reset, "model": prepared[device_id].model,
            "probes": prepared[device_id].probes,
            "thresholds": Thresholds.model_validate(thresholds or {}),
            "benchmark": BenchmarkSettings.model_validate(benchmark or {})}
        if release is not None:
            fields["release"] = release
        manifest = Manifest(**fields)
    except ValidationError as exc:
        raise DeployError(one_line(exc)) from None
    signing_key = key if key is None or isinstance(key, SigningKey) else load_signing_key(key)
    if signing_key is not None:
        manifest = signing_key.sign(manifest)
    try:
        broker = broker if isinstance(broker, Broker) else Broker.from_url(broker)
    except ValueError as exc:
        raise DeployError(str(exc)) from None
    if isinstance(device_key, bytes) or str(device_key).lstrip().startswith("-----"):
        device_key = VerifyKey.from_pem(device_key, "the device's public key")  # PEM text
    elif device_key is not None and not isinstance(device_key, VerifyKey):
        device_key = load_verify_key(device_key)  # a PEM file
    return _run(manifest, blobs, broker, timeout, progress,
                checker({device_id: device_key} if device_key is not None else None))


def _run(manifest: Manifest, blobs: dict[str, bytes], broker: Broker, timeout: float,
         progress: Progress | None, check: Check) -> DeploymentReport:
    """The fleet engine's one-device deployment (recorded in memory), summarised."""
    t0 = time.monotonic()
    dep_id = manifest.deployment_id
    with Registry(":memory:") as reg:
        with FleetLink(broker, session=reg.label).open(timeout=min(10.0, timeout)) as link:
            engine = direct_engine(manifest, blobs, reg, link, timeout=timeout, check=check,
                                   progress=progress)
            engine.run()
        row = next(r for r in reg.deployments(manifest.device_id) if r["deployment_id"] == dep_id)
        rows = reg.reports(dep_id)
    # in the device's order (a spooled report may arrive after a later, retained one)
    reports = sorted((Report.model_validate(r["body"]) for r in rows), key=lambda r: r.timestamp)
    if row["outcome"] in (Outcome.TIMED_OUT, Outcome.PENDING):
        last = reports[-1].state if reports else "no report"
        raise DeploymentTimeout(
            f"no final report from {manifest.device_id} for {dep_id} within "
            f"{timeout:g}s (last: {last}; broker {broker.address})")
    final = next((r for r in reversed(reports) if r.final or r.state in FINAL_STATES
                  or r.state == "error"), None)
    if final is None:  # failed by the host (a report signed by another key)
        final = Report(device_id=manifest.device_id, deployment_id=dep_id, state="failed",
                       final=True, reason=(row["reason"] or "")[:200] or None)
    received = next((r["received_at"] for r in rows if r["state"] == "received"), None)
    tsec = received - row["started_at"] if received else None
    bench = next((r.benchmark for r in reversed(reports) if r.benchmark), None)
    total = sum(a.size for a in manifest.artifacts().values())
    return DeploymentReport(
        deployment_id=dep_id, device_id=manifest.device_id,
        state=final.state, ok=final.state == "active", reason=final.reason,
        model_sha256=manifest.model.sha256, model_size=manifest.model.size,
        chunk_size=manifest.model.chunk_size, chunks=manifest.model.chunks,
        chunks_sent=engine.server.stats.published_chunks,
        resends_refused=engine.server.stats.refused_requests, dropped=engine.dropped,
        release=manifest.release,
        signed_by=manifest.signature.key_id if manifest.signature else None,
        runtime=bench.runtime if bench else final.runtime, benchmark=bench,
        checks=next((r.checks for r in reversed(reports) if r.checks), None),
        transfer=next((r.transfer for r in reports if r.transfer), None), transfer_seconds=tsec,
        throughput_mb_s=(total / 1e6 / tsec) if tsec else None,
        elapsed_seconds=time.monotonic() - t0,
        states=[r.state for r in reports], reports=reports,
    )
