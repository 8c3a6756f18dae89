"""Run a rollout as a resumable state machine over the registry, on one connection.

The decisions (targeting, waves, skipping, settling, abort thresholds, pause)
are the pure functions of ``fleet.rollout``; this module does the I/O around
them:

- one ``FleetLink`` (one MQTT connection, one intake subscription) carries
  every device's manifest, reports, status and chunk requests;
- each variant's artifacts are published once, retained, by ``ArtifactServer``;
- the registry holds the rollout (spec, waves, artifacts, signed manifests,
  device locks), so running the same rollout again (or ``resume=``) after a
  crash continues it: pending deployments are settled from the devices'
  retained reports and status, devices already running the variant are
  skipped, and no device gets a second deployment in one rollout;
- a Last Will settles a device at once; a threshold abort cancels the wave
  in progress; a broker outage pauses the rollout (no new wave, no timeout)
  until the connection is back, and nothing received is discarded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from core.errors import ConfigError
from core.mqtt import Broker, MqttClient
from core.probes import load_probes, probes_to_bytes, validate_probes
from core.protocol import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TTL_S,
    TOPIC_ROOT,
    Artifact,
    BenchmarkSettings,
    Cancel,
    ChunkRequest,
    Manifest,
    Report,
    Status,
    Thresholds,
    Topics,
)
from core.signing import SigningKey, VerifyKey, load_signing_key
from fleet.artifacts import ArtifactServer
from fleet.gate import Check, checker, keys_from_pems
from fleet.gate import Gate as Intake
from fleet.link import Event, FleetLink
from fleet.publisher import add_expected
from fleet.registry import Registry
from fleet.rollout import (
    Action,
    Decision,
    Device,
    Outcome,
    Seen,
    Target,
    Verdict,
    WavePolicy,
    classify,
    gate,
    judge,
    next_wave,
    plan_waves,
    reported_outcome,
    select,
    settle,
)

intake_log = logging.getLogger("paoding.intake")  # one line per dropped message

Progress = Callable[[str, dict[str, Any]], None]
HostOutputs = Callable[[bytes, np.ndarray], np.ndarray]
MANIFEST_RESEND_S = 10.0  # connected seconds without a word before a manifest is sent again
MAX_RESENDS = 5
FLUSH_S = 0.25  # registry writes are batched at most this long
TICK_S = 0.5  # how often pending deployments are checked for timeouts and re-sends
VERDICT_S = 0.2  # how often a rollout in progress is judged again
CANCEL_WAIT_S = 5.0  # how long an aborted rollout waits for the cancelled devices' word


class RolloutLocked(ConfigError):
    """Every targeted device is held by another rollout in progress."""


@dataclass
class DeviceResult:
    device_id: str
    profile: str
    wave: int
    outcome: Outcome
    reason: str = ""
    p90_ms: float | None = None


@dataclass
class RolloutResult:
    rollout_id: str
    decision: Decision
    reason: str
    waves: list[list[str]]
    results: list[DeviceResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # device id -> why
    resumed: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

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
            "resumed": self.resumed,
            "waves": self.waves,
            "skipped": self.skipped,
            "stats": self.stats,
            "results": [
                {"device_id": r.device_id, "profile": r.profile, "wave": r.wave,
                 "outcome": r.outcome.value, "reason": r.reason, "p90_ms": r.p90_ms}
                for r in self.results
            ],
        }


class Gate(Protocol):
    """What decides whether a device message is taken: the message, or None to drop it."""

    def accept(self, topic: str, payload: bytes) -> Any: ...


def discover(broker: Broker | str, wait_s: float = 1.5,
             intake: Intake | Gate | None = None) -> dict[str, Status]:
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


# --- preparing the variants -------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One profile's model and probe bundle, as published."""

    profile: str
    model: Artifact
    probes: Artifact | None


def _read(model: str | Path | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    try:
        return Path(model).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read variant {model}: {exc.strerror or exc}") from None


def _probe_data(probes: str | Path | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(probes, dict):
        return load_probes(probes)
    data = {k: np.asarray(v) for k, v in probes.items()}
    validate_probes(data)
    return data


def prepare_variants(
    variants: Mapping[str, str | Path | bytes],
    *,
    probes: str | Path | dict[str, np.ndarray] | None = None,
    host_outputs: HostOutputs | None = None,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
) -> tuple[dict[str, Variant], dict[str, bytes]]:
    """(profile -> Variant, sha256 -> bytes): each model and its probe bundle, once."""
    if not variants:
        raise ConfigError("no variants: give at least one PROFILE=MODEL.tflite")
    pdata = _probe_data(probes) if probes is not None else None
    out: dict[str, Variant] = {}
    blobs: dict[str, bytes] = {}
    for profile, model in variants.items():
        blob = _read(model)
        if not blob:
            raise ConfigError(f"variant {profile}: the model is empty")
        art = Artifact.of(blob, chunk_size)
        blobs[art.sha256] = blob
        part = None
        if pdata is not None:
            bundle = probes_to_bytes(
                add_expected(blob, pdata, host_outputs) if host_outputs else pdata)
            part = Artifact.of(bundle, chunk_size)
            blobs[part.sha256] = bundle
        out[profile] = Variant(profile, art, part)
    return out, blobs


# --- the rollout ------------------------------------------------------------


@dataclass
class _Deployment:
    deployment_id: str
    device: Device
    wave: int
    sha256: str
    manifest: bytes
    started: float  # on the link clock
    sent: float
    heard: bool = False
    resends: int = 0


def _fingerprint(variants: Mapping[str, Variant], target: Target) -> str:
    data = {
        "variants": {p: [v.model.sha256, v.probes.sha256 if v.probes else None]
                     for p, v in sorted(variants.items())},
        "target": [sorted(target.profiles), sorted(target.tags), list(target.device_patterns)],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class _Engine:
    """One rollout's state: the waves, what devices said, what is pending."""

    def __init__(self, registry: Registry, link: FleetLink, *, rollout_id: str,
                 spec: dict[str, Any], variants: dict[str, Variant], blobs: dict[str, bytes],
                 key: SigningKey | None, check: Check, progress: Progress | None,
                 abort: threading.Event | None) -> None:
        self.registry, self.link = registry, link
        self.rollout_id, self.spec = rollout_id, spec
        self.variants, self.key, self.check = variants, key, check
        self.progress = progress or (lambda _e, _i: None)
        self.abort_event = abort
        self.policy = WavePolicy.from_config(spec["policy"])
        self.waves: list[list[str]] = spec["waves"]
        self.profiles: dict[str, str] = spec["profiles"]
        self.tags: dict[str, list[str]] = spec.get("tags", {})
        self.thresholds = Thresholds(**spec["thresholds"])
        self.profile_thresholds = {p: Thresholds(**t)
                                   for p, t in spec.get("profile_thresholds", {}).items()}
        self.benchmark = BenchmarkSettings(**spec["benchmark"])
        self.server = ArtifactServer(link.publish)
        for v in variants.values():
            for art in (v.model, v.probes):
                if art is not None:
                    self.server.add(blobs[art.sha256], art)
        self.published: set[str] = set()
        self.seen: dict[str, Seen] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.pending: dict[str, _Deployment] = {}  # deployment id ->
        self.by_device: dict[str, str] = {}  # device id -> deployment id (this rollout)
        self.decided: dict[str, tuple[str, Outcome]] = {}  # deployment id -> (device, outcome)
        self.awaiting: set[str] = set()  # cancelled deployments whose final report is due
        self.started: set[str] = set()
        self.skipped: dict[str, str] = dict(spec.get("skipped", {}))
        self.p90: dict[str, float] = {}
        self.statuses: dict[str, Status] = {}
        self.was_connected = True
        self.resumed = False
        self._polled = 0.0
        self._ticked = 0.0
        self._judged = 0.0
        self._abort_checked = 0.0
        self._plan_index: dict[str, int] | None = None
        self._changed = True  # an outcome, a wave or the connection changed: judge again
        self.dropped = 0
        self._reports: list[tuple[str | None, str, str, str, dict]] = []
        self._settles: list[tuple[str, Outcome, str, str]] = []
        self._notes: dict[str, tuple[str, bool | None, str | None, str | None]] = {}
        self._last_flush = time.monotonic()

    # -- what devices say ----------------------------------------------------

    def handle(self, ev: Event) -> None:
        if ev.kind == "disconnected":
            if self.was_connected:
                self.was_connected = False
                self.progress("pause", {"reason": f"broker {self.link.broker.address} away"})
            return
        if ev.kind == "connected":
            if not self.was_connected:
                self.was_connected = True
                self.progress("resume", {})
                for sha in self.published:  # a restarted broker may have lost them
                    self.server.publish(sha)
                for dep in self.pending.values():
                    if not dep.heard:
                        self._send_manifest(dep)
            return
        try:
            msg = self.check(ev.kind, ev.device_id, ev.payload)
        except ValueError:
            self.dropped += 1
            return
        if isinstance(msg, Status):
            self._on_status(msg)
        elif isinstance(msg, Report):
            self._on_report(msg)
        elif isinstance(msg, ChunkRequest):
            dep = self.pending.get(msg.deployment_id)
            if dep is not None:
                dep.heard = True
            if msg.artifact not in self.server:
                # another host process's rollout (shared intake): serve it from the registry
                data = self.registry.artifact(msg.artifact)
                if data is None:
                    return
                self.server.add(data, Artifact.of(data, self.spec["chunk_size"]))
            self.server.request(msg)

    def _on_status(self, st: Status) -> None:
        d = st.device_id
        self.statuses[d] = st
        old = self.seen.get(d, Seen())
        active = st.active_model
        self.seen[d] = Seen(
            online=st.online,
            active_sha=active.sha256 if active else old.active_sha,
            active_deployment=active.deployment_id if active else old.active_deployment,
            final_deployment=old.final_deployment, final_state=old.final_state,
            final_reason=old.final_reason,
        )
        self._notes[d] = (d, st.online, active.sha256 if active else None,
                          active.deployment_id if active else None)
        self._try_settle(d)
        dep = self.pending.get(self.by_device.get(d, ""))
        if dep is not None and st.online and not dep.heard and old.online is not None:
            self._send_manifest(dep)  # it (re)connected without a word on our deployment

    def _on_report(self, rep: Report) -> None:
        d = rep.device_id
        dep_id = rep.deployment_id
        if dep_id is None:
            return
        owner = (self.pending[dep_id].device.device_id if dep_id in self.pending
                 else self.decided[dep_id][0] if dep_id in self.decided else None)
        if owner is not None and owner != d:
            self.dropped += 1  # signed by its own device, but about another's deployment
            intake_log.warning("dropped report from %s: deployment %s is %s's", d, dep_id,
                               owner)
            return
        ours = dep_id in self.pending or dep_id in self.decided
        if ours:
            self._reports.append((rep.report_id, dep_id, d, rep.state,
                                  rep.model_dump(mode="json")))
            if rep.benchmark is not None:
                self.p90[dep_id] = rep.benchmark.latency_ms.p90
        dep = self.pending.get(dep_id)
        if dep is not None:
            dep.heard = True
        outcome = reported_outcome(rep.state) if rep.final or rep.state == "error" else None
        if outcome is None:
            return
        old = self.seen.get(d, Seen())
        runs = rep.active_sha256 or (rep.model_sha256 if outcome is Outcome.ACTIVE else None)
        self.seen[d] = Seen(
            online=old.online if old.online is not None else True,
            active_sha=runs or old.active_sha,
            active_deployment=dep_id if outcome is Outcome.ACTIVE else old.active_deployment,
            final_deployment=dep_id, final_state=rep.state, final_reason=rep.reason,
        )
        if runs:
            self._notes[d] = (d, None, runs, dep_id if outcome is Outcome.ACTIVE else None)
        if dep is not None:
            self._try_settle(d)
        elif dep_id in self.decided and self.decided[dep_id][1].revisable:
            # a late final report: the device's word replaces the host's guess
            self._record(dep_id, d, outcome, rep.reason or "")
        elif not ours:
            # another rollout's deployment (a shared intake, or a report that came after
            # that rollout ended): the registry takes the device's word where it may
            self._reports.append((rep.report_id, dep_id, d, rep.state,
                                  rep.model_dump(mode="json")))
            self._settles.append((dep_id, outcome, rep.reason or "", d))
        self.awaiting.discard(dep_id)

    def _try_settle(self, device_id: str) -> None:
        dep_id = self.by_device.get(device_id)
        dep = self.pending.get(dep_id) if dep_id else None
        if dep is None:
            return
        found = settle(dep.deployment_id, dep.sha256, self.seen.get(device_id))
        if found is not None:
            self._finish(dep, *found)

    def _finish(self, dep: _Deployment, outcome: Outcome, reason: str) -> None:
        self.pending.pop(dep.deployment_id, None)
        self._record(dep.deployment_id, dep.device.device_id, outcome, reason)
        self.progress("device", {"device_id": dep.device.device_id, "outcome": outcome.value,
                                 "reason": reason})

    def _record(self, dep_id: str, device_id: str, outcome: Outcome, reason: str) -> None:
        self._changed = True
        self.decided[dep_id] = (device_id, outcome)
        self.outcomes[device_id] = outcome
        self._settles.append((dep_id, outcome, reason, device_id))

    def flush(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_flush < FLUSH_S:
            return
        if self._reports:
            self.registry.add_reports(self._reports)
        if self._notes:
            self.registry.note_devices(self._notes.values())
        if self._settles:
            self.registry.settle(self._settles)
        self._reports, self._settles, self._notes = [], [], {}
        self._last_flush = time.monotonic()

    def poll_registry(self) -> None:
        """With a shared intake, another process may have recorded what our devices said."""
        if not self.link.share_group or not self.pending:
            return
        if time.monotonic() - self._polled < 1.0:
            return
        self._polled = time.monotonic()
        self.flush(force=True)
        for row in self.registry.rollout_deployments(self.rollout_id):
            dep = self.pending.get(row["deployment_id"])
            if dep is not None and row["outcome"] != Outcome.PENDING.value:
                self._finish(dep, Outcome(row["outcome"]), row["reason"] or "")
        offline = {r["device_id"] for r in self.registry.device_rows() if not r["online"]}
        for dep in list(self.pending.values()):
            if dep.device.device_id in offline:
                self._finish(dep, Outcome.OFFLINE, "device went offline (Last Will)")

    def drain(self, timeout: float) -> None:
        """Handle every queued event (waiting up to ``timeout`` for the first)."""
        try:
            ev = self.link.events.get(timeout=timeout)
        except queue.Empty:
            return
        self.handle(ev)
        for _ in range(10_000):
            try:
                ev = self.link.events.get_nowait()
            except queue.Empty:
                return
            self.handle(ev)

    # -- what the host does --------------------------------------------------

    def resume_pending(self) -> None:
        """Take over the rollout's recorded deployments (after a crash or a restart)."""
        for row in self.registry.rollout_deployments(self.rollout_id):
            d = row["device_id"]
            self.started.add(d)
            self.by_device[d] = row["deployment_id"]
            outcome = Outcome(row["outcome"])
            if outcome is not Outcome.PENDING:
                self.decided[row["deployment_id"]] = (d, outcome)
                self.outcomes[d] = outcome
                continue
            device = Device(d, self.profiles[d], frozenset(self.tags.get(d, [])))
            now = self.link.clock.now()
            dep = _Deployment(row["deployment_id"], device, row["wave"], row["model_sha256"],
                              row["manifest"].encode(), now, now)
            self.pending[dep.deployment_id] = dep
            self.outcomes[d] = Outcome.PENDING
            self._ensure_published(self.variants[device.profile])
            self._try_settle(d)  # the retained report or status may already tell
            if dep.deployment_id in self.pending and not self._abort_requested():
                self._send_manifest(dep)

    def _ensure_published(self, variant: Variant) -> None:
        for art in (variant.model, variant.probes):
            if art is not None and art.sha256 not in self.published:
                self.server.publish(art.sha256)
                self.published.add(art.sha256)

    @property
    def plan_index(self) -> dict[str, int]:
        if self._plan_index is None:
            self._plan_index = {d: i for i, d in enumerate(d for w in self.waves for d in w)}
        return self._plan_index

    def start_wave(self, index: int) -> None:
        wave = [d for d in self.waves[index] if d not in self.started]
        rows = []
        deps = []
        now = self.link.clock.now()
        for device_id in wave:
            self.started.add(device_id)
            device = Device(device_id, self.profiles[device_id],
                            frozenset(self.tags.get(device_id, [])))
            variant = self.variants[device.profile]
            action, why = classify(self.seen.get(device_id), variant.model.sha256,
                                   include_offline=self.spec.get("include_offline", False))
            if action is not Action.DEPLOY:
                self.skipped[device_id] = why
                continue
            # unique by construction: the device's place in the plan (random ids collide
            # in waves of thousands)
            dep_id = f"{self.rollout_id}-w{index}-{self.plan_index[device_id]:06d}"
            manifest = self._manifest(dep_id, device_id, variant)
            rows.append((dep_id, device_id, variant.model.sha256, variant.model.size,
                         self.rollout_id, index, manifest.decode(), json.loads(manifest)[
                             "release"]))
            deps.append(_Deployment(dep_id, device, index, variant.model.sha256, manifest,
                                    now, now))
        self.registry.add_deployments(rows)  # recorded before anything is sent
        self.registry.unlock_devices(self.rollout_id, [d for d in wave if d in self.skipped])
        self.progress("wave", {"wave": index, "devices": [d.device.device_id for d in deps],
                               "skipped": [d for d in wave if d in self.skipped]})
        for dep in deps:
            self._ensure_published(self.variants[dep.device.profile])
            self.pending[dep.deployment_id] = dep
            self.by_device[dep.device.device_id] = dep.deployment_id
            self.outcomes[dep.device.device_id] = Outcome.PENDING
            self._send_manifest(dep)

    def _manifest(self, dep_id: str, device_id: str, variant: Variant) -> bytes:
        now = time.time()
        manifest = Manifest(
            deployment_id=dep_id, device_id=device_id, rollout_id=self.rollout_id,
            created_at=now, expires_at=now + max(DEFAULT_TTL_S, 4 * self.policy.timeout_s),
            model=variant.model, probes=variant.probes,
            thresholds=self.profile_thresholds.get(variant.profile, self.thresholds),
            benchmark=self.benchmark,
        )
        if self.key is not None:
            manifest = self.key.sign(manifest)
        return manifest.to_json()

    def _send_manifest(self, dep: _Deployment) -> None:
        self.link.publish(Topics(dep.device.device_id).manifest, dep.manifest)
        dep.sent = self.link.clock.now()

    def tick(self) -> None:
        """Time out and re-send, on the link clock (it stops while the broker is away)."""
        if not self.link.connected or time.monotonic() - self._ticked < TICK_S:
            return
        self._ticked = time.monotonic()
        now = self.link.clock.now()
        for dep in list(self.pending.values()):
            if now - dep.started > self.policy.timeout_s:
                self._finish(dep, Outcome.TIMED_OUT,
                             f"no final report within {self.policy.timeout_s:g}s")
            elif not dep.heard and now - dep.sent > min(MANIFEST_RESEND_S,
                                                         self.policy.timeout_s / 3) \
                    and dep.resends < MAX_RESENDS:
                dep.resends += 1
                self._send_manifest(dep)

    def cancel_pending(self, reason: str) -> None:
        """Stop the wave in progress: a signed Cancel to every device still pending."""
        self.awaiting |= set(self.pending)
        for dep in list(self.pending.values()):
            cancel = Cancel(deployment_id=dep.deployment_id, device_id=dep.device.device_id)
            if self.key is not None:
                cancel = self.key.sign(cancel)
            self.link.publish(Topics(dep.device.device_id).cancel, cancel.to_json())
            self._finish(dep, Outcome.CANCELLED, reason)

    def verdict(self) -> Verdict:
        last = next_wave(self.waves, self.started) is None
        return gate(judge(self.outcomes, self.policy, last_wave=last),
                    connected=self.link.connected)

    def _abort_requested(self) -> bool:
        """The operator's abort: the event, or ``rollout --abort`` from any process (registry)."""
        if self.abort_event is not None and self.abort_event.is_set():
            return True
        if time.monotonic() - self._abort_checked < 1.0:
            return False
        self._abort_checked = time.monotonic()
        row = self.registry.rollout(self.rollout_id)
        return row is not None and row["state"] == "aborting"

    def run(self) -> Verdict:
        verdict = self.verdict()
        connected = self.link.connected
        while True:
            self.drain(0.1)
            self.tick()
            self.flush()
            self.poll_registry()
            if self._abort_requested():
                self.cancel_pending("aborted by the operator")
                verdict = Verdict(Decision.ABORT, "aborted by the operator")
                break
            if connected == self.link.connected and not (
                    self._changed and (not self.pending
                                       or time.monotonic() - self._judged > VERDICT_S)):
                continue  # judging is O(devices): at most five times a second
            self._changed, connected = False, self.link.connected
            self._judged = time.monotonic()
            verdict = self.verdict()
            if verdict.decision is Decision.ABORT:
                self.progress("abort", {"reason": verdict.reason})
                self.cancel_pending(f"rollout aborted: {verdict.reason}")
                break
            if verdict.decision is Decision.DONE:
                break
            if verdict.decision is Decision.CONTINUE:
                index = next_wave(self.waves, self.started)
                if index is not None:
                    self.start_wave(index)
                self._changed = True
        self._await_cancelled()
        self.flush(force=True)
        return verdict

    def _await_cancelled(self) -> None:
        """Give the cancelled devices a moment to say how they ended (one may have finished)."""
        deadline = time.monotonic() + min(CANCEL_WAIT_S, self.policy.timeout_s)
        while self.awaiting and self.link.connected and time.monotonic() < deadline:
            self.drain(0.1)
            self.flush()

    def finish(self, verdict: Verdict) -> None:
        state = "done" if verdict.decision is Decision.DONE else "aborted"
        if verdict.decision is Decision.ABORT:
            for wave in self.waves:
                for d in wave:
                    if d not in self.started:
                        self.skipped[d] = "not reached: rollout aborted"
        self.registry.set_rollout_state(self.rollout_id, state, verdict.reason)
        self.registry.unlock_devices(self.rollout_id)
        busy = {a for r in self.registry.rollouts("running")
                for v in r["spec"]["variants"].values() for a in v if a}
        for sha in self.published - busy:
            self.server.clear(sha)
        self.published &= busy


def request_abort(registry: Registry, rollout_id: str) -> None:
    """Ask the rollout to stop: its host process cancels the wave in progress within a second.

    ConfigError when there is no such rollout or it is not in progress.
    """
    found = registry.rollout(rollout_id)
    if found is None:
        raise ConfigError(f"no rollout {rollout_id!r} in {registry.label}")
    if found["state"] not in ("running", "aborting"):
        raise ConfigError(f"rollout {rollout_id} is {found['state']}, not in progress")
    registry.set_rollout_state(rollout_id, "aborting", "aborted by the operator")


def _spec_variants(spec: dict[str, Any], registry: Registry
                   ) -> tuple[dict[str, Variant], dict[str, bytes]]:
    variants: dict[str, Variant] = {}
    blobs: dict[str, bytes] = {}
    for profile, (model_sha, probes_sha) in spec["variants"].items():
        arts = []
        for sha in (model_sha, probes_sha):
            if sha is None:
                arts.append(None)
                continue
            data = registry.artifact(sha)
            if data is None:
                raise ConfigError(f"artifact {sha[:12]} of rollout is missing from "
                                  f"{registry.label}")
            blobs[sha] = data
            arts.append(Artifact.of(data, spec["chunk_size"]))
        variants[profile] = Variant(profile, arts[0], arts[1])
    return variants, blobs


def run_rollout(
    variants: Mapping[str, str | Path | bytes] | None,
    broker: Broker | str,
    registry: Registry,
    *,
    policy: WavePolicy | None = None,
    target: Target | None = None,
    include_offline: bool = False,
    probes: str | Path | dict[str, np.ndarray] | None = None,
    thresholds: Thresholds | dict[str, Any] | None = None,
    benchmark: BenchmarkSettings | dict[str, Any] | None = None,
    key: SigningKey | str | Path | None = None,
    host_outputs: HostOutputs | None = None,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    resume: str | bool = False,
    device_keys: Mapping[str, VerifyKey] | None = None,
    share_group: str | None = None,
    discover_s: float = 1.5,
    progress: Progress | None = None,
    abort: threading.Event | None = None,
    link: FleetLink | None = None,
    intake: Intake | Gate | None = None,
    profile_thresholds: Mapping[str, dict[str, Any]] | None = None,
) -> RolloutResult:
    """Deploy ``variants`` (profile id -> TFLite model) to the fleet in waves.

    A rollout of the same variants and target that is still running in the
    registry (a crash, kill -9, or a stop) is continued rather than started
    again; ``resume=True`` continues the latest running rollout and
    ``resume=ID`` that one, without variants. Devices come from their
    retained (signed) status; one without a variant for its profile, offline,
    already running its variant, or held by another rollout is skipped and
    says so. Device messages must carry a valid signature by the device's
    enrolled key (``device_keys``, default: the registry's enrolled keys);
    ``profile_thresholds`` replace ``thresholds`` for the variants of those profiles;
    with no device enrolled at all, signatures are not checked. An
    ``intake`` (``fleet.intake.Intake``, or anything with ``accept(topic,
    payload) -> message | None``) replaces that check.
    """
    signing = key if key is None or isinstance(key, SigningKey) else load_signing_key(key)
    broker = broker if isinstance(broker, Broker) else Broker.from_url(broker)
    prepared: dict[str, Variant] = {}
    blobs: dict[str, bytes] = {}
    if not resume:
        prepared, blobs = prepare_variants(variants or {}, probes=probes,
                                           host_outputs=host_outputs, chunk_size=chunk_size)
    target = target or Target()
    if device_keys is None:
        enrolled = registry.public_keys()
        device_keys = keys_from_pems(enrolled) if enrolled else None
    own_link = link is None
    link = link or FleetLink(broker, share_group=share_group)
    if own_link:
        link.open()
    try:
        engine = _begin(registry, link, prepared, blobs, signing, resume=resume, target=target,
                        policy=policy or WavePolicy(), include_offline=include_offline,
                        thresholds=thresholds, benchmark=benchmark, chunk_size=chunk_size,
                        check=_gated(intake) if intake is not None else checker(device_keys),
                        discover_s=discover_s, progress=progress,
                        abort=abort, profile_thresholds=profile_thresholds)
        verdict = engine.run()
        engine.finish(verdict)
        return _result(engine, verdict, registry)
    finally:
        if own_link:
            link.close()


def _gated(intake: Gate) -> Check:
    def check(kind: str, device_id: str, payload: bytes) -> Any:
        msg = intake.accept(f"{TOPIC_ROOT}/{device_id}/{kind}", payload)
        if msg is None:
            raise ValueError(f"{kind} from {device_id} dropped by the intake")
        return msg

    return check


def _begin(registry: Registry, link: FleetLink, prepared: dict[str, Variant],
           blobs: dict[str, bytes], key: SigningKey | None, *, resume: str | bool,
           target: Target, policy: WavePolicy, include_offline: bool,
           thresholds: Thresholds | dict[str, Any] | None,
           benchmark: BenchmarkSettings | dict[str, Any] | None, chunk_size: int, check: Check,
           discover_s: float, progress: Progress | None,
           abort: threading.Event | None,
           profile_thresholds: Mapping[str, dict[str, Any]] | None = None) -> _Engine:
    """Find the rollout to continue, or plan a new one; return its engine, caught up."""
    running = registry.rollouts("running")
    found: dict[str, Any] | None = None
    if resume is True:
        found = running[-1] if running else None
        if found is None:
            raise ConfigError(f"no rollout in progress in {registry.label} to resume")
    elif isinstance(resume, str) and resume:
        found = registry.rollout(resume)
        if found is None:
            raise ConfigError(f"no rollout {resume!r} in {registry.label}")
        if found["state"] not in ("running", "aborting"):
            raise ConfigError(f"rollout {resume} is {found['state']}, not in progress")
    else:
        fp = _fingerprint(prepared, target)
        found = next((r for r in reversed(running) if r["spec"].get("fingerprint") == fp), None)
    if found is not None:
        spec = found["spec"]
        variants, vblobs = (_spec_variants(spec, registry) if not prepared
                            else (prepared, blobs))
        engine = _Engine(registry, link, rollout_id=found["rollout_id"], spec=spec,
                         variants=variants, blobs=vblobs, key=key, check=check,
                         progress=progress, abort=abort)
        engine.resumed = True
        _catch_up(engine, discover_s)
        engine.progress("plan", {"rollout_id": engine.rollout_id, "waves": engine.waves,
                                 "skipped": engine.skipped, "resumed": True})
        engine.resume_pending()
        return engine
    rollout_id = f"r{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    th = thresholds if isinstance(thresholds, Thresholds) else Thresholds(**(thresholds or {}))
    bs = benchmark if isinstance(benchmark, BenchmarkSettings) else BenchmarkSettings(
        **(benchmark or {}))
    spec: dict[str, Any] = {
        "fingerprint": _fingerprint(prepared, target),
        "variants": {p: [v.model.sha256, v.probes.sha256 if v.probes else None]
                     for p, v in prepared.items()},
        "policy": policy.get_config(), "chunk_size": chunk_size,
        "thresholds": th.model_dump(mode="json"), "benchmark": bs.model_dump(mode="json"),
        "profile_thresholds": {p: Thresholds(**t).model_dump(mode="json")
                               for p, t in (profile_thresholds or {}).items()},
        "include_offline": include_offline, "waves": [], "profiles": {}, "tags": {},
        "skipped": {},
    }
    engine = _Engine(registry, link, rollout_id=rollout_id, spec=spec, variants=prepared,
                     blobs=blobs, key=key, check=check, progress=progress, abort=abort)
    statuses = _catch_up(engine, discover_s)
    known_tags = {d.device_id: d.tags for d in registry.devices()}
    devices: list[Device] = []
    skipped: dict[str, str] = {}
    rows = []
    for device_id, st in sorted(statuses.items()):
        device = Device(device_id, st.profile or "unknown", known_tags.get(device_id, frozenset()))
        active = st.active_model
        rows.append((device, st.runtime.name if st.runtime else None, st.online,
                     engine.seen[device_id].active_sha if device_id in engine.seen
                     else (active.sha256 if active else None)))
        if device.profile not in prepared:
            skipped[device_id] = f"no variant for profile {device.profile!r}"
            continue
        action, why = classify(engine.seen.get(device_id), prepared[device.profile].model.sha256,
                               include_offline=include_offline)
        if action is Action.DEPLOY:
            devices.append(device)
        else:
            skipped[device_id] = why
    registry.upsert_devices(rows)
    for row in registry.device_rows():
        if row["device_id"] not in statuses and row.get("public_key"):
            skipped[row["device_id"]] = "no verified status heard (offline or not its key)"
    chosen = select(devices, target)
    for device in devices:
        if device not in chosen:
            skipped[device.device_id] = "not targeted"
    # the rollout is recorded (running, no waves yet) before it takes any lock, so a
    # crash leaves no lock held by a rollout the registry does not know
    for sha, data in blobs.items():
        registry.put_artifact(sha, data)
    registry.create_rollout(rollout_id, spec)
    held = registry.lock_devices(rollout_id, [d.device_id for d in chosen])
    for device_id, other in held.items():
        skipped[device_id] = f"held by rollout {other}"
    chosen = [d for d in chosen if d.device_id not in held]
    if held and not chosen:
        registry.unlock_devices(rollout_id)
        other = sorted(set(held.values()))
        reason = (f"every targeted device is held by rollout {', '.join(other)} "
                  "(one rollout at a time per device; resume or wait for it)")
        registry.set_rollout_state(rollout_id, "refused", reason)
        raise RolloutLocked(reason)
    waves = plan_waves(chosen, policy)
    spec.update(
        waves=[[d.device_id for d in w] for w in waves],
        profiles={d.device_id: d.profile for d in chosen},
        tags={d.device_id: sorted(d.tags) for d in chosen if d.tags},
        skipped=skipped,
    )
    registry.set_rollout_spec(rollout_id, spec)
    engine.waves, engine.profiles, engine.tags = spec["waves"], spec["profiles"], spec["tags"]
    engine.skipped = dict(skipped)
    engine.progress("plan", {"rollout_id": rollout_id, "waves": engine.waves,
                             "skipped": skipped, "resumed": False})
    return engine


def _catch_up(engine: _Engine, discover_s: float) -> dict[str, Status]:
    """Read the retained status and reports (the devices' word); the statuses seen."""
    engine.link.hold_retained()
    try:
        deadline = time.monotonic() + discover_s
        while time.monotonic() < deadline:
            engine.drain(min(0.1, max(0.0, deadline - time.monotonic())))
    finally:
        engine.link.release_retained()
    return engine.statuses


def _result(engine: _Engine, verdict: Verdict, registry: Registry) -> RolloutResult:
    result = RolloutResult(engine.rollout_id, verdict.decision, verdict.reason, engine.waves,
                           skipped=engine.skipped,
                           resumed=engine.resumed)
    for row in registry.rollout_deployments(engine.rollout_id):
        result.results.append(DeviceResult(
            row["device_id"], engine.profiles.get(row["device_id"], "unknown"), row["wave"],
            Outcome(row["outcome"]), row["reason"] or "",
            engine.p90.get(row["deployment_id"])))
    stats = engine.server.stats
    result.stats = {"published_bytes": stats.published_bytes,
                    "published_chunks": stats.published_chunks,
                    "reserved_chunks": stats.reserved_chunks,
                    "refused_requests": stats.refused_requests,
                    "messages_received": engine.link.received,
                    "messages_dropped": engine.dropped}
    return result
