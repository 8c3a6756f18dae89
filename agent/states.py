"""The deployment state machine: each state's ``run(ctx)`` returns the next state.

    Accept -> Transfer -> Verify -> Install -> Benchmark -> Check -> Activate -> Report
      |          |           \\-> Rejected -> Report      |        \\-> RollBack -> Report
      |          \\-> expired or cancelled: Report       \\-> RollBack (load error, crash)
      \\-> refused (malformed, unsigned, expired, replay, downgrade, busy): Done

``Accept`` checks a manifest (format, device, signature, expiry, busy,
replay, release) before anything is written; every later state is recorded
in the deployment lock (stage and results) before it runs, and ``resume(ctx)``
rebuilds the recorded state after a restart. Every state is idempotent and
the active model only changes in ``Activate`` (and ``RollBack``, which puts
back the model that was active before the deployment), so the final report
always names the model that is active. ``Transfer`` returns itself while it
waits for chunks; ``advance`` stops there and the service calls it again.
No state exits the process; results travel in the states, not the context.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import ValidationError

from agent.checks import threshold_failures
from agent.isolate import Outcome, run_isolated
from agent.runtime import Runtime, select_runtime
from agent.storage import Storage
from agent.transfer import Transfer as ChunkStore
from core.errors import PaodingError, ProbeError, RuntimeLoadError, SignatureError
from core.files import sha256_file
from core.protocol import (
    RELEASE_AHEAD_MS,
    BenchmarkResult,
    CheckResults,
    Manifest,
    TransferStats,
)
from core.protocol import (
    Report as ReportMessage,
)
from core.signing import TrustStore, one_line

log = logging.getLogger(__name__)


class Link(Protocol):
    """How the machine reaches chunks: the service's MQTT side, or the disk alone."""

    def open(self, manifest: Manifest) -> ChunkStore: ...
    def close(self, deployment_id: str) -> None: ...
    def cancelled(self, deployment_id: str) -> bool: ...


class DiskLink:
    """Chunks already on disk, nothing from the network (tests, ``kill`` recovery)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._open: dict[str, ChunkStore] = {}

    def open(self, manifest: Manifest) -> ChunkStore:
        dep = manifest.deployment_id
        if dep not in self._open:
            self._open[dep] = ChunkStore(self.storage.transfer_dir(dep), manifest)
        return self._open[dep]

    def close(self, deployment_id: str) -> None:
        tr = self._open.pop(deployment_id, None)
        if tr is not None:
            tr.close()

    def cancelled(self, deployment_id: str) -> bool:
        return False


@dataclass(frozen=True)
class Context:
    """What every state may use; it does not change while the machine runs."""

    storage: Storage
    device_id: str
    emit: Callable[[ReportMessage], None]  # spooled, sent until acknowledged
    notify: Callable[[ReportMessage], None] | None = None  # refusals: sent once, not kept
    trust: TrustStore | None = None  # None: unsigned manifests are accepted
    link: Link | None = None  # None: a DiskLink on ``storage``
    runtime: Callable[[], Runtime] = select_runtime  # used when isolate is False
    runtime_name: str | None = None
    isolate: bool = True  # benchmark in a child process (see agent.isolate)
    slowdown: float = 1.0
    emulation: str | None = None
    clock: Callable[[], float] = time.time
    memory_limit_mb: float | None = None  # the benchmark child's cap (see agent.isolate)

    def __post_init__(self) -> None:
        if self.link is None:
            object.__setattr__(self, "link", DiskLink(self.storage))

    def report(self, m: Manifest | None, state: str, *, final: bool = False,
               **fields: Any) -> ReportMessage:
        active = self.storage.active()
        reason = fields.pop("reason", None)
        rep = ReportMessage(
            device_id=self.device_id, deployment_id=m.deployment_id if m else None,
            manifest_sha256=m.digest if m else None, state=state, final=final,
            model_sha256=m.model.sha256 if m else None,
            active_sha256=active["sha256"] if active else None,
            reason=" ".join(reason.split())[:4000] if reason else None, **fields)
        return rep

    def artifact_path(self, m: Manifest, name: str) -> Path:
        return self.storage.transfer_dir(m.deployment_id) / f"{name}.part"


class State:
    """A step of a deployment; dataclass fields are what the lock records."""

    name: ClassVar[str] = "state"

    def run(self, ctx: Context) -> State:
        raise NotImplementedError


class Done(State):
    name = "done"

    def run(self, ctx: Context) -> State:
        return self


# --- accept: nothing is written before a manifest is authenticated ------------------


@dataclass
class Accept(State):
    """Check one manifest from the network; refusals are answered, never stored."""

    payload: bytes
    name: ClassVar[str] = "accept"

    def _refuse(self, ctx: Context, reason: str, m: Manifest | None = None,
                state: str = "rejected") -> State:
        log.warning("%s", reason)
        rep = ctx.report(m, state, final=state != "error", reason=reason)
        (ctx.notify or ctx.emit)(rep)
        return Done()

    def run(self, ctx: Context) -> State:
        try:
            m = Manifest.from_json(self.payload)
        except (ValidationError, ValueError) as exc:
            return self._refuse(ctx, f"malformed manifest dropped: {one_line(exc, 600)}",
                                state="error")
        dep = m.deployment_id
        if m.device_id != ctx.device_id:
            return self._refuse(ctx, f"manifest {dep} is for device {m.device_id}, "
                                f"not {ctx.device_id}", m, "error")
        if ctx.trust is not None:
            try:
                ctx.trust.verify(m)
            except PaodingError as exc:
                return self._refuse(ctx, str(exc), m)
        # authenticated from here on
        st = ctx.storage
        lock = st.read_lock()
        if lock and lock.get("deployment_id") == dep:
            if lock.get("digest") not in (None, m.digest):
                return self._refuse(ctx, f"deployment {dep} is in progress with a different "
                                    "manifest: refused", m)
            log.info("manifest %s again: it is in progress", dep)
            return Done()
        if ctx.clock() >= m.expires_at:
            return self._refuse(ctx, f"manifest {dep} expired at {m.expires_at:.0f} "
                                f"(now {ctx.clock():.0f}): refused", m)
        if st.seen(dep):
            return self._refuse(ctx, f"deployment id {dep} was already used: replay refused",
                                m, "error")
        if lock:
            st.record(dep, m.release, accepted=False)  # a replay later is refused too
            return self._refuse(ctx, f"deployment {dep} refused: deployment "
                                f"{lock.get('deployment_id')} is in progress", m)
        if m.release <= st.last_release and not (m.rollback or m.release_reset):
            return self._refuse(ctx, f"release {m.release} of {dep} is not above the last "
                                f"accepted release {st.last_release}: downgrade or replay "
                                "refused (a rollback deployment must say so)", m)
        bound = max(st.last_release, int(ctx.clock() * 1000)) + RELEASE_AHEAD_MS
        if m.release > bound and not (m.release_jump or m.release_reset):
            return self._refuse(ctx, f"release {m.release} of {dep} is more than "
                                f"{RELEASE_AHEAD_MS // 86_400_000} days beyond the last "
                                f"accepted release {st.last_release} and the clock: refused "
                                "(a release that far ahead must be signed as a release jump)", m)
        st.record(dep, m.release, reset=m.release_reset)
        return Transfer(m, st.active())


# --- the deployment --------------------------------------------------------------------


@dataclass
class Step(State):
    """A state of an accepted deployment: its manifest and the model active before it."""

    manifest: Manifest
    prior: dict[str, Any] | None


@dataclass
class Transfer(Step):
    """Wait for every chunk (verified on arrival); expire or cancel if it does not come."""

    name: ClassVar[str] = "transfer"

    def run(self, ctx: Context) -> State:
        m = self.manifest
        dep = m.deployment_id
        assert ctx.link is not None
        if ctx.link.cancelled(dep):
            ctx.link.close(dep)
            return Report(m, self.prior, "cancelled", "cancelled by the host")
        tr = ctx.link.open(m)
        if tr.complete:
            stats = TransferStats(bytes=tr.bytes_total, chunks=tr.chunks_total,
                                  seconds=round(tr.seconds, 6), resumed=tr.resumed,
                                  resumed_chunks=tr.resumed_chunks)
            ctx.link.close(dep)
            ctx.emit(ctx.report(m, "received", transfer=stats))
            return Verify(m, self.prior)
        if ctx.clock() >= m.expires_at:
            ctx.link.close(dep)
            have = sum(r.count for r in tr.receivers.values())
            return Report(m, self.prior, "expired",
                          f"the transfer did not finish before the manifest expired "
                          f"({have} of {tr.chunks_total} chunks)")
        return self  # waiting


@dataclass
class Verify(Step):
    name: ClassVar[str] = "verify"

    def run(self, ctx: Context) -> State:
        m = self.manifest
        if ctx.trust is not None:
            try:
                ctx.trust.verify(m)
            except SignatureError as exc:
                return Rejected(m, self.prior, str(exc))
        for name, art in m.artifacts().items():
            path = ctx.artifact_path(m, name)
            try:
                size = path.stat().st_size
            except OSError:
                return Rejected(m, self.prior, f"{name} was not received")
            if size != art.size:
                return Rejected(m, self.prior,
                                f"{name} size {size} does not match the manifest's {art.size}")
            digest = sha256_file(path)
            if not hmac.compare_digest(digest, art.sha256):
                return Rejected(m, self.prior, f"{name} sha256 {digest} does not match the "
                                f"manifest's {art.sha256}")
        ctx.emit(ctx.report(m, "verified"))
        return Install(m, self.prior)


@dataclass
class Install(Step):
    name: ClassVar[str] = "install"

    def run(self, ctx: Context) -> State:
        m = self.manifest
        ctx.storage.install_model(ctx.artifact_path(m, "model"), m.model.sha256)
        ctx.emit(ctx.report(m, "installed"))
        return Benchmark(m, self.prior)


@dataclass
class Benchmark(Step):
    """Measure the installed model (and run the probes) in a child process."""

    name: ClassVar[str] = "benchmark"

    def run(self, ctx: Context) -> State:
        m = self.manifest
        path = ctx.storage.model_path(m.model.sha256)
        probes = ctx.artifact_path(m, "probes") if m.probes is not None else None
        if ctx.isolate:
            out = run_isolated(path, m.benchmark, probes=probes, slowdown=ctx.slowdown,
                               emulation=ctx.emulation, runtime=ctx.runtime_name,
                               memory_limit_mb=ctx.memory_limit_mb)
        else:
            out = _measure_here(ctx, m, path, probes)
        result = out.benchmark.model_dump(mode="json") if out.benchmark else None
        if out.failure is not None:
            return RollBack(m, self.prior, out.failure, result)
        assert out.benchmark is not None
        ctx.emit(ctx.report(m, "benchmarked", benchmark=out.benchmark, checks=out.checks,
                            runtime=out.benchmark.runtime))
        return Check(m, self.prior, result,
                     out.checks.model_dump(mode="json") if out.checks else None)


def _measure_here(ctx: Context, m: Manifest, path: Path, probes: Path | None) -> Outcome:
    """Benchmark and check in this process (when isolation is off)."""
    from agent.benchmark import run_benchmark
    from agent.checks import run_checks
    from core.probes import load_probes

    try:
        result, loaded = run_benchmark(ctx.runtime(), path, m.benchmark, slowdown=ctx.slowdown,
                                       emulation=ctx.emulation,
                                       memory_limit_mb=ctx.memory_limit_mb)
    except RuntimeLoadError as exc:
        return Outcome(failure=str(exc), kind="load")
    except Exception as exc:  # noqa: BLE001 - an interpreter failing at invoke
        return Outcome(failure=f"the model failed to run: {' '.join(str(exc).split())}",
                       kind="run")
    checks = None
    if probes is not None:
        try:
            checks = run_checks(loaded, load_probes(probes, max_mb=ctx.memory_limit_mb))
        except ProbeError as exc:
            return Outcome(failure=f"probe checks failed: {exc}", kind="probes",
                           benchmark=result)
        except Exception as exc:  # noqa: BLE001
            return Outcome(failure=f"the model failed on the probes: "
                           f"{' '.join(str(exc).split())}", kind="probes", benchmark=result)
    return Outcome(benchmark=result, checks=checks)


def _bench(data: dict[str, Any] | None) -> BenchmarkResult | None:
    return BenchmarkResult.model_validate(data) if data else None


def _checks(data: dict[str, Any] | None) -> CheckResults | None:
    return CheckResults.model_validate(data) if data else None


@dataclass
class Check(Step):
    """Hold the measurements against the manifest's thresholds."""

    result: dict[str, Any]
    checks: dict[str, Any] | None = None
    name: ClassVar[str] = "check"

    def run(self, ctx: Context) -> State:
        b = _bench(self.result)
        assert b is not None
        failures = threshold_failures(
            self.manifest.thresholds, p90_ms=b.latency_ms.p90, mean_ms=b.latency_ms.mean,
            peak_memory_mb=b.peak_memory_mb, checks=_checks(self.checks))
        if failures:
            return RollBack(self.manifest, self.prior, "; ".join(failures), self.result,
                            self.checks)
        return Activate(self.manifest, self.prior, self.result, self.checks)


@dataclass
class Activate(Step):
    """Switch the active model (one atomic rename); doing it twice changes nothing."""

    result: dict[str, Any]
    checks: dict[str, Any] | None = None
    name: ClassVar[str] = "activate"

    def run(self, ctx: Context) -> State:
        m = self.manifest
        ctx.storage.activate({
            "deployment_id": m.deployment_id, "sha256": m.model.sha256, "size": m.model.size,
            "benchmark": self.result, "checks": self.checks,
        })
        return Report(m, self.prior, "active", None, self.result, self.checks)


def _restore(ctx: Context, m: Manifest, prior: dict[str, Any] | None) -> None:
    """Make the model that was active before ``m`` active again, if ``m``'s model is."""
    st = ctx.storage
    active = st.active()
    if not active or active.get("sha256") != m.model.sha256:
        return
    if prior and prior.get("sha256") != m.model.sha256 and st.model_path(
            prior["sha256"]).exists():
        st.activate(prior)
        log.warning("deployment %s: restored the previous model %s", m.deployment_id,
                    prior["sha256"][:12])
    elif not prior:
        st.deactivate()
        log.warning("deployment %s: no previous model; none is active now", m.deployment_id)


@dataclass
class RollBack(Step):
    """The model failed on the device: the previous model stays (or becomes again) active."""

    reason: str
    result: dict[str, Any] | None = None
    checks: dict[str, Any] | None = None
    name: ClassVar[str] = "rollback"

    def run(self, ctx: Context) -> State:
        _restore(ctx, self.manifest, self.prior)
        return Report(self.manifest, self.prior, "rolled_back", self.reason, self.result,
                      self.checks)


@dataclass
class Rejected(Step):
    reason: str
    name: ClassVar[str] = "reject"

    def run(self, ctx: Context) -> State:
        return Report(self.manifest, self.prior, "rejected", self.reason)


@dataclass
class Failed(Step):
    reason: str
    name: ClassVar[str] = "fail"

    def run(self, ctx: Context) -> State:
        _restore(ctx, self.manifest, self.prior)
        return Report(self.manifest, self.prior, "failed", self.reason)


@dataclass
class Report(Step):
    """Send the final report, record the outcome, release the lock and the transfer files.

    The report id is fixed when this state is first recorded, so a restart
    that runs it again sends the same report, not a second one.
    """

    outcome: str
    reason: str | None = None
    result: dict[str, Any] | None = None
    checks: dict[str, Any] | None = None
    report_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    name: ClassVar[str] = "report"

    def run(self, ctx: Context) -> State:
        m = self.manifest
        if self.outcome != "active":
            _restore(ctx, m, self.prior)
        b = _bench(self.result)
        ctx.emit(ctx.report(m, self.outcome, final=True, reason=self.reason, benchmark=b,
                            checks=_checks(self.checks), runtime=b.runtime if b else None,
                            report_id=self.report_id))
        ctx.storage.append_history({
            "deployment_id": m.deployment_id, "outcome": self.outcome, "reason": self.reason,
            "sha256": m.model.sha256, "size": m.model.size, "finished_at": time.time(),
        })
        ctx.storage.clear_lock()
        ctx.storage.remove_transfer(m.deployment_id)
        ctx.storage.prune_models()
        return Done()


STAGES: dict[str, type[Step]] = {cls.name: cls for cls in (
    Transfer, Verify, Install, Benchmark, Check, Activate, RollBack, Rejected, Failed, Report)}


# --- the driver ----------------------------------------------------------------------


def record(ctx: Context, state: Step) -> None:
    """Write ``state`` to the deployment lock (before it runs)."""
    data = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.name not in ("manifest", "prior")}
    m = state.manifest
    ctx.storage.write_lock({
        "deployment_id": m.deployment_id, "stage": state.name, "digest": m.digest,
        "sha256": m.model.sha256, "manifest": m.model_dump(mode="json"),
        "prior": state.prior, "data": data, "updated_at": time.time()})


def resume(ctx: Context) -> Step | None:
    """The state recorded in the deployment lock (None: no deployment in progress)."""
    lock = ctx.storage.read_lock()
    if not lock:
        return None
    try:
        cls = STAGES[lock["stage"]]
        m = Manifest.model_validate(lock["manifest"])
        state = cls(m, lock.get("prior"), **lock.get("data", {}))
    except (KeyError, TypeError, ValueError) as exc:
        log.error("unreadable deployment lock dropped: %s", one_line(exc))
        ctx.storage.clear_lock()
        return None
    log.info("resuming deployment %s from %s", m.deployment_id, state.name)
    return state


def step(ctx: Context, state: State) -> State:
    """Run one state; a failure becomes ``Failed`` (or the end, if reporting failed)."""
    try:
        return state.run(ctx)
    except Exception as exc:  # noqa: BLE001 - the agent survives any bug in a state
        if isinstance(exc, PaodingError):
            reason = str(exc)
        else:
            log.exception("state %s failed", state.name)
            reason = f"{type(exc).__name__}: {exc}"
        if isinstance(state, Step) and not isinstance(state, Failed | Report):
            return Failed(state.manifest, state.prior, reason)
        if isinstance(state, Failed | Report):  # reporting failed: release the lock
            ctx.storage.clear_lock()
        return Done()


StepHook = Callable[[State, State], None]


def advance(ctx: Context, state: State, on_step: StepHook | None = None
            ) -> tuple[State | None, str | None]:
    """Run states until the end or one that waits; return (waiting state or None, outcome).

    Each next state is recorded in the lock before it runs. ``on_step(state,
    next)`` is called after each state ran, before the next is recorded.
    """
    outcome = None
    while not isinstance(state, Done):
        nxt = step(ctx, state)
        if on_step is not None:
            on_step(state, nxt)
        if nxt is state:
            return state, None
        if isinstance(state, Report):
            outcome = state.outcome
        if isinstance(nxt, Step):
            record(ctx, nxt)
        log.debug("%s -> %s", state.name, nxt.name)
        state = nxt
    return None, outcome


def run_machine(ctx: Context, state: State | None, *, poll: float = 0.05,
                timeout: float | None = None, on_step: StepHook | None = None) -> str | None:
    """Run ``state`` to the end (polling a waiting transfer); return the outcome.

    ``state`` None (no deployment in the lock, say) returns None.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    outcome = None
    while state is not None:
        state, outcome = advance(ctx, state, on_step)
        if state is not None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"deployment still waiting in {state.name}")
            time.sleep(poll)
    return outcome
