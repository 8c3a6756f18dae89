"""Run a rollout: discover devices, deploy each profile's variant in waves, stop on failures.

The decisions (targeting, waves, abort thresholds) are the pure functions of
``fleet.rollout``; this module does the I/O around them: it reads the
devices' retained status messages, calls ``fleet.publisher.deploy`` for each
device of a wave (concurrently), and records everything in the registry.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.errors import ConfigError, PaodingError
from core.mqtt import Broker, BrokerUnavailable, MqttClient
from core.protocol import TOPIC_ROOT, Status
from core.signing import VerifyKey
from fleet.intake import Intake
from fleet.publisher import DeploymentReport, DeploymentTimeout, deploy
from fleet.registry import Registry
from fleet.rollout import (
    Decision,
    Device,
    Outcome,
    Target,
    Verdict,
    WavePolicy,
    judge,
    plan_waves,
    select,
)

Progress = Callable[[str, dict[str, Any]], None]
Deployer = Callable[..., DeploymentReport]

_OUTCOME = {
    "active": Outcome.ACTIVE,
    "rolled_back": Outcome.ROLLED_BACK,
    "rejected": Outcome.REJECTED,
}


@dataclass
class DeviceResult:
    device_id: str
    profile: str
    wave: int
    outcome: Outcome
    reason: str = ""
    report: DeploymentReport | None = None


@dataclass
class RolloutResult:
    rollout_id: str
    decision: Decision
    reason: str
    waves: list[list[str]]
    results: list[DeviceResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # device id -> why

    @property
    def ok(self) -> bool:
        return self.decision is Decision.DONE and all(
            r.outcome is Outcome.ACTIVE for r in self.results
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "decision": self.decision.value,
            "reason": self.reason,
            "ok": self.ok,
            "waves": self.waves,
            "skipped": self.skipped,
            "results": [
                {
                    "device_id": r.device_id,
                    "profile": r.profile,
                    "wave": r.wave,
                    "outcome": r.outcome.value,
                    "reason": r.reason,
                    "p90_ms": _p90(r.report),
                }
                for r in self.results
            ],
        }


def _p90(report: DeploymentReport | None) -> float | None:
    if report is None or report.benchmark is None:
        return None
    return report.benchmark.latency_ms.p90


def discover(broker: Broker | str, wait_s: float = 1.5,
             intake: Intake | None = None) -> dict[str, Status]:
    """The devices' retained status messages on ``broker``, by device id.

    With ``intake`` only statuses signed by the device's enrolled key count
    (``fleet.intake``); the others are dropped with one log line each.
    """
    broker = broker if isinstance(broker, Broker) else Broker.from_url(broker)
    found: dict[str, Status] = {}
    lock = threading.Lock()

    def on_status(topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained status
        if intake is not None:
            status = intake.accept(topic, payload)
            if not isinstance(status, Status):
                return
        else:
            try:
                status = Status.from_json(payload)
            except (ValidationError, ValueError):
                return  # a foreign or malformed status is not a device of ours
        with lock:
            found[status.device_id] = status

    client = MqttClient(
        broker, client_id=f"paoding-discover-{uuid.uuid4().hex[:8]}", clean_session=True
    )
    client.subscribe(f"{TOPIC_ROOT}/+/status", on_status)
    try:
        client.connect(timeout=10.0)
        time.sleep(wait_s)  # retained messages arrive right after the subscription
    finally:
        client.close()
    return found


def run_rollout(
    variants: Mapping[str, str | Path | bytes],
    broker: Broker | str,
    registry: Registry,
    *,
    policy: WavePolicy | None = None,
    target: Target | None = None,
    statuses: Mapping[str, Status] | None = None,
    include_offline: bool = False,
    deployer: Deployer = deploy,
    progress: Progress | None = None,
    intake: Intake | None = None,
    **deploy_kwargs: Any,
) -> RolloutResult:
    """Deploy ``variants`` (profile id -> TFLite model) to the fleet in waves.

    Devices come from ``statuses`` (default: discovered on the broker); a device
    whose profile has no variant, or that is offline, is skipped and says so.
    ``deploy_kwargs`` (probes, thresholds, key, benchmark, ...) go to ``deploy``.
    With ``intake`` (enrolled keys), discovery keeps only signed statuses, a
    device that is not enrolled is skipped, and each deployment counts only
    reports signed by its device's key.
    """
    policy = policy or WavePolicy()
    if not variants:
        raise ConfigError("no variants: give at least one PROFILE=MODEL.tflite")
    blobs = {profile: _read(model) for profile, model in variants.items()}
    broker = broker if isinstance(broker, Broker) else Broker.from_url(broker)
    statuses = dict(statuses) if statuses is not None else discover(broker, intake=intake)

    skipped: dict[str, str] = {}
    devices: list[Device] = []
    known_tags = {d.device_id: d.tags for d in registry.devices()}
    for device_id, status in sorted(statuses.items()):
        profile = status.profile or "unknown"
        device = Device(device_id, profile, known_tags.get(device_id, frozenset()))
        if intake is not None and intake.key_for(device_id) is None:
            skipped[device_id] = "not enrolled"  # and not recorded: anyone can claim an id
            continue
        registry.upsert_device(
            device,
            runtime=status.runtime.name if status.runtime else None,
            online=status.online,
            active_sha=status.active_model.sha256 if status.active_model else None,
        )
        if not status.online and not include_offline:
            skipped[device_id] = "offline"
        elif profile not in blobs:
            skipped[device_id] = f"no variant for profile {profile!r}"
        else:
            devices.append(device)
    chosen = select(devices, target or Target())
    for device in devices:
        if device not in chosen:
            skipped[device.device_id] = "not targeted"

    if intake is not None:  # keys read here, not in the deployers' threads
        deployer = _verified(deployer, {d.device_id: intake.key_for(d.device_id) for d in chosen})
    rollout_id = f"r{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    waves = plan_waves(chosen, policy)
    result = RolloutResult(
        rollout_id,
        Decision.DONE,
        "no device to deploy to",
        [[d.device_id for d in w] for w in waves],
        skipped=skipped,
    )
    if progress:
        progress("plan", {"rollout_id": rollout_id, "waves": result.waves, "skipped": skipped})
    outcomes: dict[str, Outcome] = {}
    verdict: Verdict | None = None
    with ThreadPoolExecutor(max_workers=max(1, max((len(w) for w in waves), default=1))) as pool:
        for index, wave in enumerate(waves):
            verdict = _run_wave(
                index,
                wave,
                index == len(waves) - 1,
                blobs,
                broker,
                registry,
                rollout_id,
                policy,
                outcomes,
                result,
                pool,
                deployer,
                progress,
                deploy_kwargs,
            )
            if verdict.decision is Decision.ABORT:
                break
    if verdict is not None:
        result.decision, result.reason = verdict.decision, verdict.reason
    if result.decision is Decision.ABORT:
        done = {r.device_id for r in result.results}
        for device in chosen:
            if device.device_id not in done:
                skipped[device.device_id] = "not reached: rollout aborted"
    return result


def _verified(deployer: Deployer, keys: Mapping[str, VerifyKey | None]) -> Deployer:
    """``deployer`` given each device's enrolled key, so only its signed reports count."""

    def run(blob: bytes, device_id: str, broker: Broker, **kwargs: Any) -> DeploymentReport:
        return deployer(blob, device_id, broker, device_key=keys[device_id], **kwargs)

    return run


def _read(model: str | Path | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    try:
        return Path(model).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read variant {model}: {exc.strerror or exc}") from None


def _run_wave(
    index: int,
    wave: list[Device],
    last: bool,
    blobs: Mapping[str, bytes],
    broker: Broker,
    registry: Registry,
    rollout_id: str,
    policy: WavePolicy,
    outcomes: dict[str, Outcome],
    result: RolloutResult,
    pool: ThreadPoolExecutor,
    deployer: Deployer,
    progress: Progress | None,
    deploy_kwargs: dict[str, Any],
) -> Verdict:
    if progress:
        progress("wave", {"wave": index, "devices": [d.device_id for d in wave]})
    futures: dict[Future[DeploymentReport], Device] = {}
    ids: dict[str, str] = {}
    for device in wave:
        deployment_id = f"{rollout_id}-{index}-{uuid.uuid4().hex[:6]}"[:64]
        ids[device.device_id] = deployment_id
        blob = blobs[device.profile]
        registry.add_deployment(
            deployment_id,
            device.device_id,
            _sha256(blob),
            len(blob),
            rollout_id=rollout_id,
            wave=index,
        )
        outcomes[device.device_id] = Outcome.PENDING
        fut = pool.submit(
            deployer,
            blob,
            device.device_id,
            broker,
            deployment_id=deployment_id,
            timeout=policy.timeout_s,
            **deploy_kwargs,
        )
        futures[fut] = device
    verdict = judge(outcomes, policy, last_wave=last)
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            device = futures[fut]
            res = _collect(fut, device, index)
            deployment_id = ids[device.device_id]
            outcomes[device.device_id] = res.outcome
            registry.finish_deployment(deployment_id, res.outcome, res.reason)
            for rep in res.report.reports if res.report else []:
                registry.add_report(
                    deployment_id, device.device_id, rep.state, rep.model_dump(mode="json")
                )
            result.results.append(res)
            if progress:
                progress(
                    "device",
                    {
                        "device_id": device.device_id,
                        "outcome": res.outcome.value,
                        "reason": res.reason,
                    },
                )
        verdict = judge(outcomes, policy, last_wave=last)
        if verdict.decision is Decision.ABORT and progress:
            progress("abort", {"reason": verdict.reason})
    return verdict


def _collect(fut: Future[DeploymentReport], device: Device, wave: int) -> DeviceResult:
    try:
        report = fut.result()
    except DeploymentTimeout as exc:
        return DeviceResult(device.device_id, device.profile, wave, Outcome.TIMED_OUT, str(exc))
    except BrokerUnavailable:
        raise
    except PaodingError as exc:
        return DeviceResult(device.device_id, device.profile, wave, Outcome.FAILED, str(exc))
    outcome = _OUTCOME.get(report.state, Outcome.FAILED)
    return DeviceResult(
        device.device_id, device.profile, wave, outcome, report.reason or "", report
    )


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
