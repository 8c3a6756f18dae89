"""The deployment state machine: each state's ``run(ctx)`` returns the next state.

received -> verified -> installed -> benchmarked -> active
                 \\-> rejected        \\-> rolled_back (load error or thresholds)
any unexpected error -> failed. ``Done`` is the end state. No state exits the
process; results travel in the state objects, not in the context.

Before each state runs, its name is written to the deployment lock so a
restarted agent resumes the deployment (from verification: every step is
idempotent and the active model only changes in ``Activate``).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.checks import threshold_failures
from agent.isolate import Outcome, run_isolated
from agent.runtime import Runtime, select_runtime
from agent.storage import Storage
from core.errors import PaodingError, ProbeError, RuntimeLoadError, SignatureError
from core.files import sha256_file
from core.protocol import BenchmarkResult, CheckResults, Manifest, Report, TransferStats
from core.signing import TrustStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """What every state may use; it does not change while the machine runs."""

    storage: Storage
    manifest: Manifest
    transfer_dir: Path
    device_id: str
    emit: Callable[[Report], None]
    trust: TrustStore | None = None  # None: unsigned manifests are accepted
    runtime: Callable[[], Runtime] = select_runtime  # used when isolate is False
    runtime_name: str | None = None
    isolate: bool = True  # benchmark in a child process (see agent.isolate)
    slowdown: float = 1.0
    emulation: str | None = None
    transfer: TransferStats | None = None

    def report(self, state: str, *, final: bool = False, **fields: Any) -> None:
        active = self.storage.active()
        self.emit(Report(
            device_id=self.device_id, deployment_id=self.manifest.deployment_id,
            manifest_sha256=self.manifest.digest, state=state, final=final, model_sha256=self.manifest.model.sha256,
            active_sha256=active["sha256"] if active else None, **fields,
        ))

    def artifact_path(self, name: str) -> Path:
        return self.transfer_dir / f"{name}.part"


class State:
    name = "state"

    def run(self, ctx: Context) -> State:
        raise NotImplementedError


class Done(State):
    name = "done"

    def run(self, ctx: Context) -> State:
        return self


@dataclass
class Received(State):
    name = "received"

    def run(self, ctx: Context) -> State:
        ctx.report("received", transfer=ctx.transfer)
        return Verify()


@dataclass
class Verify(State):
    name = "verify"

    def run(self, ctx: Context) -> State:
        m = ctx.manifest
        if ctx.trust is not None:
            try:
                ctx.trust.verify(m)
            except SignatureError as exc:
                return Rejected(str(exc))
        for name, art in m.artifacts().items():
            path = ctx.artifact_path(name)
            try:
                size = path.stat().st_size
            except OSError:
                return Rejected(f"{name} was not received")
            if size != art.size:
                return Rejected(f"{name} size {size} does not match the manifest's {art.size}")
            digest = sha256_file(path)
            if not hmac.compare_digest(digest, art.sha256):
                return Rejected(f"{name} sha256 {digest} does not match the manifest's "
                                f"{art.sha256}")
        ctx.report("verified")
        return Install()


@dataclass
class Install(State):
    name = "install"

    def run(self, ctx: Context) -> State:
        ctx.storage.install_model(ctx.artifact_path("model"), ctx.manifest.model.sha256)
        ctx.report("installed")
        return Benchmark()


@dataclass
class Benchmark(State):
    name = "benchmark"

    def run(self, ctx: Context) -> State:
        m = ctx.manifest
        path = ctx.storage.model_path(m.model.sha256)
        probes = ctx.artifact_path("probes") if m.probes is not None else None
        if ctx.isolate:
            out = run_isolated(path, m.benchmark, probes=probes, slowdown=ctx.slowdown,
                               emulation=ctx.emulation, runtime=ctx.runtime_name)
        else:
            out = _measure_here(ctx, path, probes)
        if out.failure is not None:
            return RollBack(out.failure, out.benchmark)
        result, checks = out.benchmark, out.checks
        assert result is not None
        ctx.report("benchmarked", benchmark=result, checks=checks, runtime=result.runtime)
        failures = threshold_failures(
            m.thresholds, p90_ms=result.latency_ms.p90, mean_ms=result.latency_ms.mean,
            peak_memory_mb=result.peak_memory_mb, checks=checks)
        if failures:
            return RollBack("; ".join(failures), result, checks)
        return Activate(result, checks)


def _measure_here(ctx: Context, path: Path, probes: Path | None) -> Outcome:
    """Benchmark and check in this process (when isolation is off)."""
    from agent.benchmark import run_benchmark
    from agent.checks import run_checks
    from core.probes import load_probes

    m = ctx.manifest
    try:
        result, loaded = run_benchmark(ctx.runtime(), path, m.benchmark, slowdown=ctx.slowdown,
                                       emulation=ctx.emulation)
    except RuntimeLoadError as exc:
        return Outcome(failure=str(exc), kind="load")
    except Exception as exc:  # noqa: BLE001 - an interpreter failing at invoke
        return Outcome(failure=f"the model failed to run: {' '.join(str(exc).split())}",
                       kind="run")
    checks = None
    if probes is not None:
        try:
            checks = run_checks(loaded, load_probes(probes))
        except ProbeError as exc:
            return Outcome(failure=f"probe checks failed: {exc}", kind="probes",
                           benchmark=result)
        except Exception as exc:  # noqa: BLE001
            return Outcome(failure=f"the model failed on the probes: "
                           f"{' '.join(str(exc).split())}", kind="probes", benchmark=result)
    return Outcome(benchmark=result, checks=checks)


@dataclass
class Activate(State):
    result: BenchmarkResult
    checks: CheckResults | None = None
    name = "activate"

    def run(self, ctx: Context) -> State:
        m = ctx.manifest
        ctx.storage.activate({
            "deployment_id": m.deployment_id, "sha256": m.model.sha256, "size": m.model.size,
            "benchmark": self.result.model_dump(mode="json"),
            "checks": self.checks.model_dump(mode="json") if self.checks else None,
        })
        ctx.report("active", final=True, benchmark=self.result, checks=self.checks,
                   runtime=self.result.runtime)
        return Finish("active")


@dataclass
class RollBack(State):
    reason: str
    result: BenchmarkResult | None = None
    checks: CheckResults | None = None
    name = "rollback"

    def run(self, ctx: Context) -> State:
        ctx.report("rolled_back", final=True, reason=self.reason, benchmark=self.result,
                   checks=self.checks, runtime=self.result.runtime if self.result else None)
        return Finish("rolled_back", self.reason)


@dataclass
class Rejected(State):
    reason: str
    name = "reject"

    def run(self, ctx: Context) -> State:
        ctx.report("rejected", final=True, reason=self.reason)
        return Finish("rejected", self.reason)


@dataclass
class Failed(State):
    reason: str
    name = "fail"

    def run(self, ctx: Context) -> State:
        ctx.report("failed", final=True, reason=self.reason)
        return Finish("failed", self.reason)


@dataclass
class Finish(State):
    """Record the outcome, release the lock and the transfer files."""

    outcome: str
    reason: str | None = None
    name = "finish"

    def run(self, ctx: Context) -> State:
        m = ctx.manifest
        ctx.storage.append_history({
            "deployment_id": m.deployment_id, "outcome": self.outcome, "reason": self.reason,
            "sha256": m.model.sha256, "size": m.model.size, "finished_at": time.time(),
        })
        ctx.storage.clear_lock()
        ctx.storage.remove_transfer(m.deployment_id)
        ctx.storage.prune_models()
        return Done()


def run_machine(ctx: Context, start: State | None = None) -> str:
    """Run states until ``Done``; return the outcome (active, rolled_back, rejected, failed)."""
    state: State = start or Received()
    outcome = "failed"
    while not isinstance(state, Done):
        lock = ctx.storage.read_lock() or {}
        if lock.get("deployment_id") == ctx.manifest.deployment_id:
            ctx.storage.write_lock(dict(lock, stage=state.name, sha256=ctx.manifest.model.sha256))
        log.debug("deployment %s: %s", ctx.manifest.deployment_id, state.name)
        if isinstance(state, Finish):
            outcome = state.outcome
        try:
            state = state.run(ctx)
        except PaodingError as exc:
            state = Failed(str(exc)) if not isinstance(state, Failed | Finish) else Done()
        except Exception as exc:  # noqa: BLE001 - the agent survives any bug in a state
            log.exception("state %s failed", state.name)
            reason = f"{type(exc).__name__}: {exc}"
            state = Failed(reason) if not isinstance(state, Failed | Finish) else Done()
    return outcome
