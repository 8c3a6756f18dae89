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
- a report is acked to the broker once the registry holds it (``flush``);
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from core.errors import ConfigError, PaodingError
from core.mqtt import Broker, PublishFuture
from core.probes import load_probes, probes_to_bytes, validate_probes
from core.protocol import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TTL_S,
    Artifact,
    BenchmarkSettings,
    Cancel,
    ChunkRequest,
    Manifest,
    Report,
    Status,
    Thresholds,
    Topics,
    parse_artifact_topic,
)
from core.signing import SigningKey, VerifyKey, load_signing_key
from fleet.artifacts import ArtifactServer
from fleet.gate import KEY_MISMATCH, Check, Gate, checker, keys_from_pems
from fleet.link import BROKER_INFLIGHT, Event, FleetLink
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
MANIFEST_RESEND_S = 5.0  # connected seconds without a word before a manifest is sent again
MAX_RESENDS = 5
FLUSH_S = 0.25  # registry writes are batched at most this long
TICK_S = 0.5  # how often pending deployments are checked for timeouts and re-sends
VERDICT_S = 0.2  # how often a rollout in progress is judged again
RESERVE_ROUNDS = 4  # a device gets an artifact's chunks re-served at most 4x its chunk count
MAX_REPORTS = 32  # reports stored per deployment (an agent sends about six)


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
        return {**asdict(self), "ok": self.ok}  # the enums are str: JSON takes them as they are


def discover(broker: Broker | str, wait_s: float = 1.5,
             intake: Gate | None = None) -> dict[str, Status]:
    """The devices' retained status messages on ``broker``, by device id.

    With ``intake`` only statuses signed by the device's enrolled key count
    (``fleet.gate``); the others are dropped with one log line each.
    """
    broker = broker if isinstance(broker, Broker) else Broker.from_url(broker)
    check = intake.check if intake is not None else checker(None)
    found: dict[str, Status] = {}
    with FleetLink(broker).open() as link:  # retained messages follow the SUBACK
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = link.events.get(timeout=left)
                msg = check(ev.kind, ev.device_id, ev.payload) if ev.kind == "status" else None
            except (queue.Empty, ValueError):
                continue
            if isinstance(msg, Status):
                found[msg.device_id] = msg
    return found


# --- preparing the variants -------------------------------------------------


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


@dataclass(frozen=True)
class Variant:
    """One profile's model and probe bundle, as published."""

    profile: str
    model: Artifact
    probes: Artifact | None


def probe_data(probes: str | Path | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
    pdata = probe_data(probes) if probes is not None else None
    out: dict[str, Variant] = {}
    blobs: dict[str, bytes] = {}
    for profile, model in variants.items():
        try:
            blob = model if isinstance(model, bytes) else Path(model).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read model {model}: {exc.strerror or exc}") from None
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


# --- the engine -------------------------------------------------------------


@dataclass
class _Deployment:
    deployment_id: str
    device: Device
    wave: int
    sha256: str
    manifest: bytes
    digest: str  # Manifest.digest: the device's reports must name it
    release: int
    artifacts: frozenset[str]
    started: float  # on the link clock
    sent: float
    heard: bool = False
    resends: int = 0
    cancelled: str = ""  # why a Cancel was sent; the device's answer settles it


def _fingerprint(variants: Mapping[str, Variant], target: Target) -> str:
    data = {
        "variants": {p: [v.model.sha256, v.probes.sha256 if v.probes else None]
                     for p, v in sorted(variants.items())},
        "target": [sorted(target.profiles), sorted(target.tags), list(target.device_patterns)],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_IN_USE: dict[tuple[str, str], int] = {}  # (broker, sha256) -> engines of this process using it
_IN_USE_LOCK = threading.Lock()
Step = Callable[[], Any]  # a state: run it, get the next (None: the engine is done)


class _Engine:
    """One rollout (or one direct deployment) as a state machine over the registry.

    States are methods that do one round and return the next state:
    ``watch`` (hear devices, time out, judge) -> ``start_wave`` -> ``watch``
    ... -> ``cancel`` -> ``await_answers`` -> ``close`` -> None. Everything
    a state decides is in the registry before it is sent, so a new engine on
    the same rollout resumes from what the registry and the devices say.
    """

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
        self.grace_s = min(self.policy.offline_grace_s, self.policy.timeout_s / 4)
        self.direct: dict[str, bytes] = {}  # device id -> a manifest made by the caller
        self.waves: list[list[str]] = spec["waves"]
        self.profiles: dict[str, str] = spec["profiles"]
        self.tags: dict[str, list[str]] = spec.get("tags", {})
        self.server = ArtifactServer(self._publish_chunk)
        for v in variants.values():
            for art in (v.model, v.probes):
                if art is not None:
                    self.server.add(blobs[art.sha256], art)
        self.published: set[str] = set()
        self.seen: dict[str, Seen] = {}
        self.status_at: dict[str, float] = registry.status_times()
        self.outcomes: dict[str, Outcome] = {}
        self.pending: dict[str, _Deployment] = {}  # deployment id ->
        self.by_device: dict[str, str] = {}  # device id -> deployment id (this rollout)
        self.decided: dict[str, tuple[str, Outcome]] = {}  # deployment id -> (device, outcome)
        self.started: set[str] = set()
        self.skipped: dict[str, str] = dict(spec.get("skipped", {}))
        self.p90: dict[str, float] = {}
        self.statuses: dict[str, Status] = {}
        self.reserved: dict[tuple[str, str], int] = {}  # (device, sha256) -> chunks re-served
        self.stored: dict[str, int] = {}  # deployment id -> reports stored
        self._digests: dict[str, str] = {}
        self._deadline = 0.0
        self.final = Verdict(Decision.WAIT, "")
        self.was_connected = True
        self.resumed = False
        self._polled = self._ticked = self._judged = self._abort_checked = 0.0
        self._plan_index: dict[str, int] | None = None
        self._changed = True  # an outcome, a wave or the connection changed: judge again
        self._connected = link.connected
        self.dropped = 0
        self._reports: list[tuple[str | None, str, str, str, dict]] = []
        self._report_ids: set[str] = set()  # reports heard by this engine
        self._settles: list[tuple[str, Outcome, str, str]] = []
        # (device, "status" | "report") -> the latest such note, in the order they came
        self._notes: dict[tuple[str, str], tuple[str, Any, Any, Any, Any]] = {}
        self._acks: list[Callable[[], None]] = []  # of messages handled, not yet stored
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
                now = self.link.clock.now()
                for d, seen in self.seen.items():  # Last Wills of a broker shutdown: the
                    if seen.online is False:        # grace starts again from here
                        self.seen[d] = replace(seen, offline_since=now)
                for sha in self.published if not self.direct else ():
                    self.server.publish(sha)  # a restarted broker may have lost them (one
                    # device asks for what it lacks instead: a re-publish costs as much)
                for dep in self.pending.values():
                    if not dep.heard and not dep.cancelled:
                        self._send_manifest(dep)
            return
        writes = len(self._reports) + len(self._settles)
        try:
            msg = self.check(ev.kind, ev.device_id, ev.payload)
        except ValueError as exc:
            self.dropped += 1
            intake_log.warning("dropped a %s from %s: %s", ev.kind, ev.device_id, exc)
            if ev.kind == "report" and getattr(exc, "cause", None) in KEY_MISMATCH:
                self._bad_report(ev.device_id, ev.payload, str(exc))
            msg = None
        if isinstance(msg, Status):
            self._on_status(msg)
        elif isinstance(msg, Report):
            self._on_report(msg)
        elif isinstance(msg, ChunkRequest):
            self._on_need(msg)
        if len(self._reports) + len(self._settles) == writes:
            ev.ack()  # nothing to write: a status stays retained, a need is asked again
        else:
            self._acks.append(ev.ack)  # acked once written (flush)

    def in_flight(self, device_id: str, deployment_id: str) -> _Deployment | dict | None:
        """This device's deployment in flight: this engine's, or (shared intake) the registry's."""
        dep = self.pending.get(deployment_id)
        if dep is not None:
            return dep if dep.device.device_id == device_id else None
        if deployment_id in self.decided:
            return None
        return self.registry.in_flight(device_id, deployment_id)

    def _digest(self, row: dict) -> str:
        dep_id = row["deployment_id"]
        if dep_id not in self._digests:
            if len(self._digests) > 10_000:
                self._digests.clear()
            self._digests[dep_id] = Manifest.model_validate_json(row["manifest"]).digest
        return self._digests[dep_id]

    def _bad_report(self, device_id: str, payload: bytes, why: str) -> None:
        """A report on the device's own topic, signed but not by its enrolled key, for its
        deployment in flight: that deployment fails now, with the reason."""
        try:
            rep = Report.from_json(payload)
        except (ValidationError, ValueError):
            return
        dep = self.pending.get(rep.deployment_id or "")
        if (rep.signature is None or dep is None or dep.device.device_id != device_id
                or rep.device_id != device_id or rep.manifest_sha256 != dep.digest):
            return
        self._finish(dep, Outcome.FAILED, f"report not signed by the enrolled key: {why}"[:500])

    def _on_need(self, req: ChunkRequest) -> None:
        """Serve an artifact of this device's deployment in flight, within its budget."""
        dep = self.in_flight(req.device_id, req.deployment_id)
        if dep is None or isinstance(dep, _Deployment) and req.artifact not in dep.artifacts:
            self.dropped += 1  # not its deployment in flight (a finished one, say)
            return
        if isinstance(dep, _Deployment):
            dep.heard = True
        else:  # another host process's deployment (shared intake): its stored manifest
            manifest = Manifest.model_validate_json(dep["manifest"])
            found = manifest.artifact_by_sha(req.artifact)
            if found is None:
                return
            if req.artifact not in self.server:
                data = self.registry.artifact(req.artifact)
                if data is None:
                    return
                self.server.add(data, found[1])
        art = self.server.artifact(req.artifact)
        key = (req.device_id, req.artifact)
        left = RESERVE_ROUNDS * art.chunks - self.reserved.get(key, 0)
        self.reserved[key] = self.reserved.get(key, 0) + self.server.request(req, budget=left)

    def _on_status(self, st: Status) -> None:
        d = st.device_id
        if st.online:
            if st.timestamp < self.status_at.get(d, 0.0):
                self.dropped += 1  # older than one already taken: a stale retained copy
                return
            self.status_at[d] = st.timestamp
        self.statuses[d] = st
        old = self.seen.get(d, Seen())
        active = st.active_model
        now = self.link.clock.now()
        self.seen[d] = replace(
            old, online=st.online,
            offline_since=None if st.online else (
                old.offline_since if old.online is False else now),
            active_sha=active.sha256 if active else old.active_sha,
            active_deployment=active.deployment_id if active else old.active_deployment)
        self._note(d, "status", st.online, active.sha256 if active else None,
                   active.deployment_id if active else None, st.timestamp if st.online else None)
        self._try_settle(d)
        dep = self.pending.get(self.by_device.get(d, ""))
        if (dep is not None and st.online and not dep.heard and not dep.cancelled
                and old.online is not None):
            self._send_manifest(dep)  # it (re)connected without a word on our deployment

    def _on_report(self, rep: Report) -> None:
        d, dep_id = rep.device_id, rep.deployment_id
        if dep_id is None:
            return
        flight = self.in_flight(d, dep_id)
        late = dep_id in self.decided and self.decided[dep_id][0] == d
        digest = (flight.digest if isinstance(flight, _Deployment)
                  else self._digest(flight) if isinstance(flight, dict) else None)
        if (flight is None and not late) or (digest and rep.manifest_sha256 != digest):
            self.dropped += 1  # not this device's deployment in flight, or a stale copy
            intake_log.info("dropped report from %s: %s is not its deployment in flight",
                            d, dep_id)
            return
        if rep.report_id is not None:  # a QoS 1 redelivery (after a reconnect) counts once
            if rep.report_id in self._report_ids:
                return
            self._report_ids.add(rep.report_id)
        if self.stored.get(dep_id, 0) < MAX_REPORTS:
            self.stored[dep_id] = self.stored.get(dep_id, 0) + 1
            self._reports.append((rep.report_id, dep_id, d, rep.state,
                                  rep.model_dump(mode="json")))
            if self.direct:
                self.progress("report", {"state": rep.state, "reason": rep.reason})
        if rep.benchmark is not None:
            self.p90[dep_id] = rep.benchmark.latency_ms.p90
        dep = flight if isinstance(flight, _Deployment) else None
        if dep is not None:
            dep.heard = True
        outcome = reported_outcome(rep.state) if rep.final or rep.state == "error" else None
        if outcome is None:
            return
        runs = rep.active_sha256 or (rep.model_sha256 if outcome is Outcome.ACTIVE else None)
        old = self.seen.get(d, Seen())
        self.seen[d] = replace(
            old, online=old.online if old.online is not None else True,
            active_sha=runs or old.active_sha,
            active_deployment=dep_id if outcome is Outcome.ACTIVE else old.active_deployment,
            final_deployment=dep_id, final_state=rep.state, final_reason=rep.reason)
        if runs:
            self._note(d, "report", None, runs, dep_id if outcome is Outcome.ACTIVE else None,
                       None)
        if dep is not None:
            self._try_settle(d)
        elif late:
            if self.decided[dep_id][1].revisable:  # the device's word replaces the host's guess
                self._record(dep_id, d, outcome, rep.reason or "")
        else:  # another host process's deployment in flight (shared intake)
            self._settles.append((dep_id, outcome, rep.reason or "", d))

    def _note(self, device_id: str, kind: str, *note: Any) -> None:
        """For the next flush: a report's note must not drop a status's time (kept apart)."""
        self._notes.pop((device_id, kind), None)
        self._notes[(device_id, kind)] = (device_id, *note)

    def _try_settle(self, device_id: str) -> None:
        dep = self.pending.get(self.by_device.get(device_id, ""))
        if dep is None:
            return
        direct = bool(self.direct)
        found = settle(dep.deployment_id, dep.sha256, self.seen.get(device_id),
                       now=self.link.clock.now(), grace_s=None if direct else self.grace_s,
                       final_only=direct)
        if found is not None:
            self._finish(dep, *found)

    def _finish(self, dep: _Deployment, outcome: Outcome, reason: str) -> None:
        self.pending.pop(dep.deployment_id, None)
        if dep.cancelled and outcome is Outcome.CANCELLED:
            reason = dep.cancelled
        self._record(dep.deployment_id, dep.device.device_id, outcome, reason)
        self.progress("device", {"device_id": dep.device.device_id, "outcome": outcome.value,
                                 "reason": reason})

    def _record(self, dep_id: str, device_id: str, outcome: Outcome, reason: str) -> None:
        self._changed = True
        self.decided[dep_id] = (device_id, outcome)
        self.outcomes[device_id] = outcome
        self._settles.append((dep_id, outcome, reason, device_id))

    def flush(self, force: bool = False) -> None:
        """Write what the messages handled changed, then ack them (a crash before: redelivered)."""
        if (not force and time.monotonic() - self._last_flush < FLUSH_S
                and len(self._acks) < BROKER_INFLIGHT // 4):  # the broker waits for them
            return
        if self._reports:
            self.registry.add_reports(self._reports)
        if self._notes:
            self.registry.note_devices(self._notes.values())
        if self._settles:
            self.registry.settle(self._settles)
        acks = self._acks
        self._reports, self._settles, self._notes, self._acks = [], [], {}, []
        for ack in acks:
            ack()
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
            dep = self._deployment(device, row["wave"], row["manifest"].encode())
            self.pending[dep.deployment_id] = dep
            self.outcomes[d] = Outcome.PENDING
            self._ensure_published(self.variants[device.profile])
            self._try_settle(d)  # the retained report or status may already tell
            if dep.deployment_id in self.pending and not self._abort_requested():
                self._send_manifest(dep)

    def _deployment(self, device: Device, wave: int, manifest: bytes) -> _Deployment:
        m = Manifest.model_validate_json(manifest)
        now = self.link.clock.now()
        return _Deployment(m.deployment_id, device, wave, m.model.sha256, manifest, m.digest,
                           m.release, frozenset(a.sha256 for a in m.artifacts().values()),
                           now, now)

    def _publish_chunk(self, topic: str, payload: bytes, *, retain: bool = False
                       ) -> PublishFuture:
        fut = self.link.publish(topic, payload, retain=retain)
        if self.direct and payload:  # a one-device deployment shows its chunks going out
            sha, index = parse_artifact_topic(topic)
            self.progress("chunk", {"artifact": sha, "index": index,
                                    "sent": self.server.stats.published_chunks + 1})
        return fut

    def _ensure_published(self, variant: Variant) -> None:
        for art in (variant.model, variant.probes):
            if art is not None and art.sha256 not in self.published:
                with _IN_USE_LOCK:
                    k = (self.link.broker.address, art.sha256)
                    _IN_USE[k] = _IN_USE.get(k, 0) + 1
                    first = _IN_USE[k] == 1
                if first or not self.direct:
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
        for device_id in wave:
            self.started.add(device_id)
            device = Device(device_id, self.profiles[device_id],
                            frozenset(self.tags.get(device_id, [])))
            variant = self.variants[device.profile]
            manifest = self.direct.get(device_id)
            if manifest is None:
                action, why = classify(self.seen.get(device_id), variant.model.sha256,
                                       include_offline=self.spec.get("include_offline", False))
                if action is not Action.DEPLOY:
                    self.skipped[device_id] = why
                    continue
                # unique by construction: the device's place in the plan (random ids
                # collide in waves of thousands)
                dep_id = f"{self.rollout_id}-w{index}-{self.plan_index[device_id]:06d}"
                manifest = self._manifest(dep_id, device_id, variant)
            dep = self._deployment(device, index, manifest)
            rows.append((dep.deployment_id, device_id, dep.sha256, variant.model.size,
                         self.rollout_id, index, manifest.decode(), dep.release))
            deps.append(dep)
        self.registry.add_deployments(rows)  # recorded before anything is sent
        self.registry.unlock_devices(self.rollout_id, [d for d in wave if d in self.skipped])
        self.progress("wave", {"wave": index, "devices": [d.device.device_id for d in deps],
                               "skipped": [d for d in wave if d in self.skipped]})
        if not self.direct:  # chunks first: a wave's devices find them retained, ask nothing
            for dep in deps:
                self._ensure_published(self.variants[dep.device.profile])
        for dep in deps:
            self.pending[dep.deployment_id] = dep
            self.by_device[dep.device.device_id] = dep.deployment_id
            self.outcomes[dep.device.device_id] = Outcome.PENDING
            self._send_manifest(dep)
            if self.direct:
                self.progress("manifest", {"deployment_id": dep.deployment_id})
        for dep in deps:  # one device: it subscribes while its chunks stream
            self._ensure_published(self.variants[dep.device.profile])

    def _manifest(self, dep_id: str, device_id: str, variant: Variant) -> bytes:
        now = time.time()
        manifest = Manifest(
            deployment_id=dep_id, device_id=device_id, rollout_id=self.rollout_id,
            created_at=now, expires_at=now + max(DEFAULT_TTL_S, 4 * self.policy.timeout_s),
            model=variant.model, probes=variant.probes,
            thresholds=self.spec.get("profile_thresholds", {}).get(variant.profile,
                                                                   self.spec["thresholds"]),
            benchmark=self.spec["benchmark"],
        )
        if self.key is not None:
            manifest = self.key.sign(manifest)
        return manifest.to_json()

    def _send_manifest(self, dep: _Deployment) -> None:
        self.link.publish(Topics(dep.device.device_id).manifest, dep.manifest)
        dep.sent = self.link.clock.now()

    def tick(self) -> None:
        """Time out, settle Last Wills past their grace, re-send; on the link clock."""
        if not self.link.connected or time.monotonic() - self._ticked < TICK_S:
            return
        self._ticked = time.monotonic()
        now = self.link.clock.now()
        for dep in list(self.pending.values()):
            if now - dep.started > self.policy.timeout_s:
                reason = (f"cancel sent; no answer within {self.policy.timeout_s:g}s"
                          if dep.cancelled else
                          f"no final report within {self.policy.timeout_s:g}s")
                self._finish(dep, Outcome.CANCELLED if dep.cancelled else Outcome.TIMED_OUT,
                             reason)
                continue
            self._try_settle(dep.device.device_id)
            if (dep.deployment_id in self.pending and not dep.heard and not dep.cancelled
                    and now - dep.sent > min(MANIFEST_RESEND_S, self.policy.timeout_s / 3)
                    and dep.resends < MAX_RESENDS):
                dep.resends += 1
                self._send_manifest(dep)

    def _abort_requested(self) -> bool:
        """The operator's abort: the event, or ``rollout --abort`` from any process (registry)."""
        if self.abort_event is not None and self.abort_event.is_set():
            return True
        if time.monotonic() - self._abort_checked < 1.0:
            return False
        self._abort_checked = time.monotonic()
        row = self.registry.rollout(self.rollout_id)
        return row is not None and row["state"] == "aborting"

    # -- the states ------------------------------------------------------------

    def run(self) -> Verdict:
        step: Step | None = self.cancel if self._abort_requested() else self.watch
        if step == self.cancel:
            self.final = Verdict(Decision.ABORT, "aborted by the operator")
        while step is not None:
            step = step()
        return self.final

    def _hear(self) -> None:
        self.drain(0.1)
        self.tick()
        self.flush()
        self.poll_registry()

    def watch(self) -> Step:
        """Hear the devices, time out, judge (O(devices): at most five times a second)."""
        self._hear()
        if self._abort_requested():
            self.final = Verdict(Decision.ABORT, "aborted by the operator")
            return self.cancel
        if self._connected == self.link.connected and not (
                self._changed and (not self.pending
                                   or time.monotonic() - self._judged > VERDICT_S)):
            return self.watch
        self._changed, self._connected = False, self.link.connected
        self._judged = time.monotonic()
        last = next_wave(self.waves, self.started) is None
        verdict = gate(judge(self.outcomes, self.policy, last_wave=last),
                       connected=self.link.connected)
        if verdict.decision is Decision.ABORT:
            self.progress("abort", {"reason": verdict.reason})
            self.final = verdict
            return self.cancel
        if verdict.decision is Decision.DONE:
            self.final = verdict
            return self.close
        if verdict.decision is Decision.CONTINUE:
            return self.start_next
        return self.watch

    def start_next(self) -> Step:
        index = next_wave(self.waves, self.started)
        if index is not None:
            self.start_wave(index)
        self._changed = True
        return self.watch

    def cancel(self) -> Step:
        """A signed Cancel to every device still pending; their answers settle them."""
        reason = ("aborted by the operator" if "operator" in self.final.reason
                  else f"rollout aborted: {self.final.reason}")
        for dep in self.pending.values():
            message = Cancel(deployment_id=dep.deployment_id, device_id=dep.device.device_id)
            if self.key is not None:
                message = self.key.sign(message)
            self.link.publish(Topics(dep.device.device_id).cancel, message.to_json())
            dep.cancelled = reason
        self._deadline = time.monotonic() + self.policy.timeout_s
        return self.await_answers

    def await_answers(self) -> Step:
        """Wait for each cancelled device to say how it ended: cancelled, or it had already
        finished its transfer and activated (then the registry says so)."""
        self._hear()
        if self.pending and time.monotonic() < self._deadline:
            return self.await_answers
        for dep in list(self.pending.values()):  # the broker stayed away
            self._finish(dep, Outcome.CANCELLED,
                         f"{dep.cancelled}; the device did not answer the cancel")
        return self.close

    def close(self) -> None:
        """Record the end, free the devices, clear (awaited at close) the retained chunks no
        engine of this process or running rollout needs."""
        self.flush(force=True)
        if not self.direct:
            aborted = self.final.decision is Decision.ABORT
            self.skipped.update({d: "not reached: rollout aborted" for wave in self.waves
                                 for d in wave if aborted and d not in self.started})
            self.registry.set_rollout_state(self.rollout_id, "aborted" if aborted else "done",
                                            self.final.reason)
            self.registry.unlock_devices(self.rollout_id)
        busy = {a for r in self.registry.rollouts("running")
                for v in r["spec"]["variants"].values() for a in v if a}
        for sha in self.published:
            with _IN_USE_LOCK:
                k = (self.link.broker.address, sha)
                _IN_USE[k] = _IN_USE.get(k, 1) - 1
                last = _IN_USE[k] <= 0
                if last:
                    _IN_USE.pop(k, None)
            if last and sha not in busy:
                self.server.clear(sha)
        self.published.clear()


def _in_progress(registry: Registry, rollout_id: str) -> dict[str, Any]:
    """The rollout, running or aborting; ConfigError when there is none or it ended."""
    found = registry.rollout(rollout_id)
    if found is None:
        raise ConfigError(f"no rollout {rollout_id!r} in {registry.label}")
    if found["state"] not in ("running", "aborting"):
        raise ConfigError(f"rollout {rollout_id} is {found['state']}, not in progress")
    return found


def request_abort(registry: Registry, rollout_id: str) -> None:
    """Ask the rollout in progress to stop: its host process cancels the wave within a second."""
    _in_progress(registry, rollout_id)
    registry.set_rollout_state(rollout_id, "aborting", "aborted by the operator")


def _spec_variants(spec: dict[str, Any], registry: Registry
                   ) -> tuple[dict[str, Variant], dict[str, bytes]]:
    """A recorded rollout's variants and their bytes, from the registry."""
    blobs: dict[str, bytes] = {}
    for sha in (sha for shas in spec["variants"].values() for sha in shas if sha):
        data = registry.artifact(sha)
        if data is None:
            raise ConfigError(f"artifact {sha[:12]} of rollout is missing from {registry.label}")
        blobs[sha] = data
    arts = {sha: Artifact.of(data, spec["chunk_size"]) for sha, data in blobs.items()}
    return {p: Variant(p, arts[m], arts.get(pr)) for p, (m, pr) in spec["variants"].items()}, blobs


def run_rollout(
    variants: Mapping[str, str | Path | bytes] | None, broker: Broker | str, registry: Registry,
    *, policy: WavePolicy | None = None, target: Target | None = None,
    include_offline: bool = False, probes: str | Path | dict[str, np.ndarray] | None = None,
    thresholds: Thresholds | dict[str, Any] | None = None,
    benchmark: BenchmarkSettings | dict[str, Any] | None = None,
    key: SigningKey | str | Path | None = None, host_outputs: HostOutputs | None = None,
    chunk_size: int = DEFAULT_CHUNK_BYTES, resume: str | bool = False,
    device_keys: Mapping[str, VerifyKey] | None = None, share_group: str | None = None,
    discover_s: float = 1.5, progress: Progress | None = None,
    abort: threading.Event | None = None, link: FleetLink | None = None,
    intake: Gate | None = None, profile_thresholds: Mapping[str, dict[str, Any]] | None = None,
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
    ``intake`` (a ``fleet.gate.Gate``: its ``check(kind, device_id, payload)``
    returns the message or raises ValueError) replaces that check.
    """
    signing = key if key is None or isinstance(key, SigningKey) else load_signing_key(key)
    broker = broker if isinstance(broker, Broker) else Broker.from_url(broker)
    prepared: dict[str, Variant] = {}
    blobs: dict[str, bytes] = {}
    target = target or Target()
    spec: dict[str, Any] = {}  # a new rollout's (a resumed one has its own)
    if not resume:
        prepared, blobs = prepare_variants(variants or {}, probes=probes,
                                           host_outputs=host_outputs, chunk_size=chunk_size)
        spec = {
            "fingerprint": _fingerprint(prepared, target),
            "variants": {p: [v.model.sha256, v.probes.sha256 if v.probes else None]
                         for p, v in prepared.items()},
            "policy": (policy or WavePolicy()).get_config(), "chunk_size": chunk_size,
            "thresholds": Thresholds.model_validate(thresholds or {}).model_dump(mode="json"),
            "benchmark": BenchmarkSettings.model_validate(benchmark or {}).model_dump(
                mode="json"),
            "profile_thresholds": {p: Thresholds(**t).model_dump(mode="json")
                                   for p, t in (profile_thresholds or {}).items()},
            "include_offline": include_offline, "waves": [], "profiles": {}, "tags": {},
            "skipped": {},
        }
    if device_keys is None:
        enrolled = registry.public_keys()
        device_keys = keys_from_pems(enrolled) if enrolled else None
    own_link = link is None
    link = link or FleetLink(broker, session=registry.label, share_group=share_group)
    if own_link:
        link.open()
    ended = False
    try:
        engine = _begin(registry, link, prepared, blobs, signing, spec, resume=resume,
                        target=target, discover_s=discover_s, progress=progress, abort=abort,
                        check=intake.check if intake is not None else checker(device_keys))
        verdict = engine.run()
        ended = True
        return _result(engine, verdict, registry)
    finally:
        if own_link:  # cut short: the session keeps queueing reports for the rerun
            link.close(keep_session=not ended)


def direct_engine(manifest: Manifest, blobs: dict[str, bytes], registry: Registry,
                  link: FleetLink, *, timeout: float, check: Check,
                  progress: Progress | None = None) -> _Engine:
    """The engine of one deployment of a manifest made by the caller (``deploy``), its
    artifacts' bytes in ``blobs`` (by sha256).

    The same engine as a rollout: one wave of one device, no discovery, no
    skipping; only the device's final report ends it (a Last Will does not: the
    device's persistent session gets the manifest when it is back).
    """
    device_id = manifest.device_id
    spec: dict[str, Any] = {
        "policy": WavePolicy(max_failure_rate=1.0, timeout_s=timeout).get_config(),
        "waves": [[device_id]], "profiles": {device_id: "direct"}}
    registry.upsert_device(Device(device_id, "direct"))
    engine = _Engine(registry, link, rollout_id=manifest.rollout_id or "", spec=spec,
                     variants={"direct": Variant("direct", manifest.model, manifest.probes)},
                     blobs=blobs, key=None, check=check, progress=progress, abort=None)
    engine.direct = {device_id: manifest.to_json()}
    return engine


def _begin(registry: Registry, link: FleetLink, prepared: dict[str, Variant],
           blobs: dict[str, bytes], key: SigningKey | None, spec: dict[str, Any], *,
           resume: str | bool, target: Target, check: Check, discover_s: float,
           progress: Progress | None, abort: threading.Event | None) -> _Engine:
    """Find the rollout to continue, or plan a new one (``spec``); return its engine, caught
    up."""
    running = registry.rollouts("running")
    found: dict[str, Any] | None = None
    if resume is True:
        found = running[-1] if running else None
        if found is None:
            raise ConfigError(f"no rollout in progress in {registry.label} to resume")
    elif isinstance(resume, str) and resume:
        found = _in_progress(registry, resume)
    else:
        found = next((r for r in reversed(running)
                      if r["spec"].get("fingerprint") == spec["fingerprint"]), None)
    if found is not None:
        variants, vblobs = (_spec_variants(found["spec"], registry) if not prepared
                            else (prepared, blobs))
        engine = _Engine(registry, link, rollout_id=found["rollout_id"], spec=found["spec"],
                         variants=variants, blobs=vblobs, key=key, check=check,
                         progress=progress, abort=abort)
        engine.resumed = True
        _catch_up(engine, discover_s)
        engine.progress("plan", {"rollout_id": engine.rollout_id, "waves": engine.waves,
                                 "skipped": engine.skipped, "resumed": True})
        engine.resume_pending()
        return engine
    rollout_id = f"r{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    engine = _Engine(registry, link, rollout_id=rollout_id, spec=spec, variants=prepared,
                     blobs=blobs, key=key, check=check, progress=progress, abort=abort)
    statuses = _catch_up(engine, discover_s)
    known_tags = {d.device_id: d.tags for d in registry.devices()}
    devices: list[Device] = []
    skipped: dict[str, str] = {}
    rows = []
    for device_id, st in sorted(statuses.items()):
        device = Device(device_id, st.profile or "unknown", known_tags.get(device_id, frozenset()))
        rows.append((device, st.runtime.name if st.runtime else None, st.online,
                     engine.seen[device_id].active_sha))  # a status heard is a device seen
        if device.profile not in prepared:
            skipped[device_id] = f"no variant for profile {device.profile!r}"
            continue
        action, why = classify(engine.seen.get(device_id), prepared[device.profile].model.sha256,
                               include_offline=spec["include_offline"])
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
    waves = plan_waves(chosen, engine.policy)
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
    results = [DeviceResult(r["device_id"], engine.profiles.get(r["device_id"], "unknown"),
                            r["wave"], Outcome(r["outcome"]), r["reason"] or "",
                            engine.p90.get(r["deployment_id"]))
               for r in registry.rollout_deployments(engine.rollout_id)]
    stats = {**asdict(engine.server.stats), "messages_received": engine.link.received,
             "messages_dropped": engine.dropped}
    return RolloutResult(engine.rollout_id, verdict.decision, verdict.reason, engine.waves,
                         results, engine.skipped, engine.resumed, stats)
