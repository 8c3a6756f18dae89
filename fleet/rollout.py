"""Rollout policy: which devices get a variant, in which waves, and when to stop.

Pure functions over plain values, so every decision is a table-driven test.
The shape follows AWS IoT Jobs (rollout rate, abort thresholds, timeouts),
Mender (phased rollout) and hawkBit (groups, success and error thresholds):
a canary wave first, then growing waves, each judged before the next starts.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum

from core.errors import ConfigError


@dataclass(frozen=True)
class Device:
    """A device as the rollout sees it."""

    device_id: str
    profile: str
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Target:
    """Which devices a rollout is for.

    A device matches when its profile is listed (or none are), it has every
    listed tag, and its id matches one of the glob patterns (or none are given).
    """

    profiles: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    device_patterns: tuple[str, ...] = ()

    def matches(self, device: Device) -> bool:
        if self.profiles and device.profile not in self.profiles:
            return False
        if self.device_patterns and not any(
            fnmatch.fnmatchcase(device.device_id, p) for p in self.device_patterns
        ):
            return False
        return self.tags <= device.tags


@dataclass(frozen=True)
class WavePolicy:
    """How a rollout grows and when it stops.

    canary: devices in the first wave (at least one).
    growth: each later wave is this many times the previous one.
    max_failure_rate: abort when failures / finished exceeds it (0..1).
    max_failures: abort at this many failures whatever the rate (None: no cap).
    min_finished: the rate threshold applies once this many devices finished.
    timeout_s: a device that has not reported after this long counts as failed.
    offline_grace_s: a Last Will stands this long (the host connected) before the
      device counts as offline: a broker shutting down publishes every Will.
    """

    canary: int = 1
    growth: float = 2.0
    max_failure_rate: float = 0.2
    max_failures: int | None = None
    min_finished: int = 1
    timeout_s: float = 300.0
    offline_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.canary < 1:
            raise ConfigError(f"canary must be >= 1, got {self.canary}")
        if self.growth < 1.0:
            raise ConfigError(f"growth must be >= 1.0, got {self.growth}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"max_failure_rate must be in [0, 1], got {self.max_failure_rate}")
        if self.max_failures is not None and self.max_failures < 1:
            raise ConfigError(f"max_failures must be >= 1 or None, got {self.max_failures}")
        if self.min_finished < 1:
            raise ConfigError(f"min_finished must be >= 1, got {self.min_finished}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.offline_grace_s < 0:
            raise ConfigError(f"offline_grace_s must be >= 0, got {self.offline_grace_s}")

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> WavePolicy:
        return cls(**config)


def select(devices: Iterable[Device], target: Target) -> list[Device]:
    """The devices a target names, in a stable order (by id)."""
    return sorted((d for d in devices if target.matches(d)), key=lambda d: d.device_id)


def plan_waves(devices: Sequence[Device], policy: WavePolicy) -> list[list[Device]]:
    """Split devices into waves: the canary, then waves growing by ``policy.growth``."""
    waves: list[list[Device]] = []
    start, size = 0, policy.canary
    while start < len(devices):
        waves.append(list(devices[start : start + size]))
        start += size
        size = max(size + 1, math.ceil(size * policy.growth)) if policy.growth > 1 else size
    return waves


class Outcome(str, Enum):
    """What became of one device's deployment."""

    PENDING = "pending"
    ACTIVE = "active"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    OFFLINE = "offline"  # the device's Last Will said it went away mid-deployment
    EXPIRED = "expired"  # the manifest expired before the transfer finished
    CANCELLED = "cancelled"  # the rollout aborted before the device finished

    @property
    def finished(self) -> bool:
        return self is not Outcome.PENDING

    @property
    def failed(self) -> bool:
        return self in (Outcome.ROLLED_BACK, Outcome.REJECTED, Outcome.FAILED, Outcome.TIMED_OUT,
                        Outcome.OFFLINE, Outcome.EXPIRED)

    @property
    def revisable(self) -> bool:
        """An outcome the host decided without a final report: a late one overrides it."""
        return self in (Outcome.PENDING, Outcome.TIMED_OUT, Outcome.OFFLINE, Outcome.CANCELLED)


class Decision(str, Enum):
    WAIT = "wait"  # the wave has devices still pending
    PAUSE = "pause"  # the broker is unreachable: start nothing, time nothing out
    CONTINUE = "continue"  # the wave is done and healthy: start the next one
    DONE = "done"  # the last wave is done and healthy
    ABORT = "abort"  # a threshold was crossed: start no more waves


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    failures: int = 0
    finished: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def judge(outcomes: dict[str, Outcome], policy: WavePolicy, *, last_wave: bool) -> Verdict:
    """Decide what to do after a wave, from every outcome of the rollout so far.

    Abort is decided as soon as a threshold is crossed, even while devices of
    the wave are still pending, so a bad variant reaches no more devices.
    """
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome.value] = counts.get(outcome.value, 0) + 1
    finished = sum(1 for o in outcomes.values() if o.finished)
    failures = sum(1 for o in outcomes.values() if o.failed)
    pending = len(outcomes) - finished

    def verdict(decision: Decision, reason: str) -> Verdict:
        return Verdict(decision, reason, failures=failures, finished=finished, counts=counts)

    if policy.max_failures is not None and failures >= policy.max_failures:
        return verdict(
            Decision.ABORT, f"{failures} failures reached max_failures={policy.max_failures}"
        )
    if finished >= policy.min_finished and finished:
        rate = failures / finished
        if rate > policy.max_failure_rate:
            return verdict(
                Decision.ABORT,
                f"failure rate {rate:.0%} ({failures}/{finished}) is above "
                f"max_failure_rate={policy.max_failure_rate:.0%}",
            )
    if pending:
        return verdict(Decision.WAIT, f"{pending} device(s) still pending")
    if last_wave:
        return verdict(Decision.DONE, f"all {finished} device(s) finished, {failures} failed")
    return verdict(Decision.CONTINUE, f"wave healthy: {failures}/{finished} failed")


# --- what the devices say, and what the rollout does about it ----------------

_REPORTED = {
    "active": Outcome.ACTIVE,
    "rolled_back": Outcome.ROLLED_BACK,
    "rejected": Outcome.REJECTED,
    "failed": Outcome.FAILED,
    "error": Outcome.FAILED,
    "expired": Outcome.EXPIRED,
    "cancelled": Outcome.CANCELLED,
}


def reported_outcome(state: str) -> Outcome | None:
    """The outcome a final report's state means (None: not final)."""
    return _REPORTED.get(state)


@dataclass(frozen=True)
class Seen:
    """What a device last said, from its signed (retained) status and final report."""

    online: bool | None = None
    active_sha: str | None = None
    active_deployment: str | None = None
    final_deployment: str | None = None
    final_state: str | None = None
    final_reason: str | None = None
    offline_since: float | None = None  # link-clock time of the Last Will (None: online)


class Action(str, Enum):
    DEPLOY = "deploy"
    ALREADY = "already"  # it runs the variant: nothing to do
    OFFLINE = "offline"  # its Last Will says it is away: skipped
    UNKNOWN = "unknown"  # never heard of: skipped


def classify(seen: Seen | None, sha256: str, *, include_offline: bool = False
             ) -> tuple[Action, str]:
    """Whether a device of a wave gets a deployment, and why not."""
    if seen is None:
        return Action.UNKNOWN, "no status from the device"
    if seen.active_sha == sha256:
        return Action.ALREADY, f"already runs {sha256[:12]}"
    if seen.online is False and not include_offline:
        return Action.OFFLINE, "offline (its Last Will)"
    return Action.DEPLOY, ""


def settle(deployment_id: str, sha256: str, seen: Seen | None, *, now: float = 0.0,
           grace_s: float | None = 0.0, final_only: bool = False
           ) -> tuple[Outcome, str] | None:
    """The outcome of a pending deployment from what the device said (None: still pending).

    A final report for this deployment decides; without one, a status naming
    the deployment as the active model means active (the report was lost);
    a Last Will means offline once it has stood ``grace_s`` seconds of the
    host's own connected time (``now`` on the same clock; None: never), so
    the Wills a broker publishes as it shuts down settle nobody: the devices
    are back, online, before the grace is over. ``final_only``: only the final
    report decides (a caller that needs its measurements).
    """
    if seen is None:
        return None
    if seen.final_deployment == deployment_id and seen.final_state:
        outcome = reported_outcome(seen.final_state)
        if outcome is not None:
            return outcome, seen.final_reason or ""
    if final_only:
        return None
    if seen.active_deployment == deployment_id and seen.active_sha == sha256:
        return Outcome.ACTIVE, "from the device's status"
    if seen.online is False and grace_s is not None and (
            now - (seen.offline_since or 0.0) >= grace_s):
        return Outcome.OFFLINE, "device went offline (Last Will)"
    return None


def next_wave(waves: Sequence[Sequence[str]], started: set[str]) -> int | None:
    """The first wave with a device not yet started (None: every wave started)."""
    for index, wave in enumerate(waves):
        if any(d not in started for d in wave):
            return index
    return None


def gate(verdict: Verdict, *, connected: bool) -> Verdict:
    """Hold a rollout whose broker is away: nothing starts and nothing times out."""
    if connected or verdict.decision in (Decision.ABORT, Decision.DONE):
        return verdict
    return Verdict(Decision.PAUSE, "broker unreachable: paused", verdict.failures,
                   verdict.finished, verdict.counts)
