"""The checks: what the protocol promises, tried against one agent over a real broker.

Checks run in a fixed order (identity, malformed, oversized, refusals,
deployment, replay, downgrade, transfer, rollback, refusals-hold); each
group yields one ``Result`` per promise. Every manifest the kit sends is
served its chunks (on request), so an agent that wrongly accepts one is
seen to proceed (a ``received`` report) instead of waiting for a timeout,
and the kit waits for that deployment's end before going on.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conformance.host import Host, Received
from core.errors import MqttError, PaodingError
from core.mqtt import Broker
from core.protocol import (
    MAX_MESSAGE_BYTES,
    Artifact,
    BenchmarkSettings,
    Cancel,
    Manifest,
    Report,
    Status,
    Thresholds,
)
from core.signing import SigningKey, VerifyKey

ASSETS = Path(__file__).resolve().parent / "assets"
PROGRESS = ("received", "verified", "installed", "benchmarked")
EXPECTED_STATES = [*PROGRESS, "active"]


class NoAgent(Exception):
    """No agent answers: the remaining checks would only time out."""


@dataclass(frozen=True)
class Result:
    check: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.check}" + (
            f": {self.detail}" if self.detail else "")


@dataclass
class KitConfig:
    broker: Broker
    device_id: str
    key: SigningKey  # the host key the agent trusts
    device_key: VerifyKey  # the device's enrolled public key
    agent_client_id: str | None = None  # default: paoding-agent-<device id>
    timeout: float = 60.0  # seconds to wait for any one answer
    runs: int = 10
    only: tuple[str, ...] = ()  # check groups to run (default: all)
    assets: Path = ASSETS


@dataclass
class Kit:
    cfg: KitConfig
    host: Host
    blobs: dict[str, bytes]
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    accepted: Manifest | None = None
    refused: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (check, mark)
    counter: int = 0

    # -- building and sending ------------------------------------------------

    def manifest(self, model: str = "model_a", *, probes: bool = False, chunk: int = 1024,
                 sign: bool = True, **kw: object) -> Manifest:
        self.counter += 1
        kw.setdefault("benchmark", BenchmarkSettings(warmup_runs=1, runs=self.cfg.runs))
        m = Manifest(deployment_id=f"conf-{self.run_id}-{self.counter}",
                     device_id=self.cfg.device_id,
                     model=Artifact.of(self.blobs[model], chunk),
                     probes=Artifact.of(self.blobs["probes_a"], chunk) if probes else None,
                     **kw)  # type: ignore[arg-type]
        return self.cfg.key.sign(m) if sign else m

    def blobs_of(self, m: Manifest) -> dict[str, bytes]:
        by_sha = {Artifact.of(b, 1024).sha256: b for b in self.blobs.values()}
        return {name: by_sha[a.sha256] for name, a in m.artifacts().items()}

    def first_report(self, dep: str, mark: int) -> Received | None:
        return self.host.inbox.wait(
            lambda r: isinstance(r.message, Report) and r.message.deployment_id == dep,
            mark, self.cfg.timeout)

    def final_report(self, dep: str, mark: int) -> Received | None:
        return self.host.inbox.wait(
            lambda r: isinstance(r.message, Report) and r.message.deployment_id == dep
            and r.message.final, mark, self.cfg.timeout)

    def wait_end(self, m: Manifest, mark: int) -> None:
        """An agent that wrongly went on: let that deployment end (cancel, then its final)."""
        cancel = self.cfg.key.sign(Cancel(deployment_id=m.deployment_id,
                                          device_id=self.cfg.device_id))
        self.host.send(self.host.topics.cancel, cancel.to_json(), self.cfg.timeout)
        self.final_report(m.deployment_id, mark)

    def expect_refusal(self, check: str, m: Manifest, states: tuple[str, ...]) -> Result:
        """Send ``m``, which the agent must refuse with a report in ``states``; its chunks
        are served on request, so a wrong acceptance shows as progress, not a timeout."""
        dep = m.deployment_id
        self.host.serve(m, self.blobs_of(m))
        mark = self.host.send_manifest(m, self.cfg.timeout)
        self.refused[dep] = (check, mark)
        got = self.first_report(dep, mark)
        if got is None:
            return Result(check, False, f"no report for {dep} in {self.cfg.timeout:.0f}s")
        rep: Report = got.message  # type: ignore[assignment]
        if rep.state not in states:
            if rep.state in PROGRESS:
                self.wait_end(m, mark)
            return Result(check, False, f"answered {rep.state}, not {' or '.join(states)}"
                          + (f" ({rep.reason})" if rep.reason else ""))
        if not rep.reason:
            return Result(check, False, f"{rep.state} without a reason")
        if not got.authentic:
            return Result(check, False, f"{rep.state}, but {got.problem}")
        return Result(check, True, f"{rep.state}: {rep.reason[:120]}")

    def deploy(self, m: Manifest) -> tuple[int, Received | None]:
        """Publish ``m`` and its chunks (retained); wait for its final report; clear them."""
        server = self.host.serve(m, self.blobs_of(m))
        mark = self.host.send_manifest(m, self.cfg.timeout)
        for art in m.artifacts().values():
            for i in range(art.chunks):
                server.publish(art.sha256, i, retain=True)
        final = self.final_report(m.deployment_id, mark)
        server.clear(self.cfg.timeout)
        return mark, final

    def status_after(self, mark: int) -> Status | None:
        got = self.host.status(mark, self.cfg.timeout)
        return got.message if got else None  # type: ignore[return-value]

    # -- the checks --------------------------------------------------------------

    def identity(self) -> Iterator[Result]:
        got = self.host.status(0, self.cfg.timeout, lambda s: s.online)
        if got is None:
            yield Result("birth status", False, f"no online status on {self.host.topics.status} "
                         f"in {self.cfg.timeout:.0f}s (is the agent running?)")
            raise NoAgent
        s: Status = got.message  # type: ignore[assignment]
        missing = [f for f in ("runtime", "agent_version") if getattr(s, f) is None]
        yield Result("birth status", not missing,
                     f"missing {', '.join(missing)}" if missing else
                     f"online, {s.runtime.name} {s.runtime.version}, agent {s.agent_version}, "
                     f"active {s.active_model.sha256[:12] if s.active_model else 'none'}")
        yield Result("birth signed by the device key", got.authentic, got.problem or "")

    def malformed(self) -> Iterator[Result]:
        base = json.loads(self.manifest().to_json())
        cases = {
            "not JSON": b"{manifest",
            "protocol 1": json.dumps({**base, "protocol": 1}).encode(),
            "unknown field": json.dumps({**base, "surprise": True}).encode(),
            "NaN number": json.dumps({**base, "created_at": float("nan")}).encode(),
            "control character": json.dumps({**base, "deployment_id": "conf\u0007x"}).encode(),
        }
        for what, payload in cases.items():
            mark = self.host.send_manifest(payload, self.cfg.timeout)
            got = self.host.inbox.wait(lambda r: isinstance(r.message, Report), mark,
                                       self.cfg.timeout)
            check = f"malformed manifest ({what}) answered"
            if got is None:
                yield Result(check, False, f"no report in {self.cfg.timeout:.0f}s")
                continue
            rep: Report = got.message  # type: ignore[assignment]
            ok = rep.state == "error" and bool(rep.reason) and got.authentic
            yield Result(check, ok, f"{rep.state}: {(rep.reason or '')[:100]}"
                         + (f"; {got.problem}" if got.problem else ""))

    def oversized(self) -> Iterator[Result]:
        base = json.loads(self.manifest().to_json())
        pad = "x" * (MAX_MESSAGE_BYTES + 64 * 1024)
        payload = json.dumps({**base, "padding": pad}).encode()
        mark = self.host.inbox.mark()
        try:
            self.host.send_manifest(payload, self.cfg.timeout)
            sent = "sent"
        except MqttError:  # a broker with a packet limit drops the sender
            sent = "refused by the broker"
            self.host.client.wait_connected(self.cfg.timeout)
        follow = self.manifest(sign=False)
        result = self.expect_refusal("agent alive after an oversized manifest", follow,
                                     ("rejected",))
        died = [r for r in self.host.inbox.since(mark)
                if isinstance(r.message, Status) and not r.message.online]
        answered = [r.message for r in self.host.inbox.since(mark)
                    if isinstance(r.message, Report) and r.message.deployment_id is None]
        how = (f"{sent}, answered error" if any(a.state == "error" for a in answered)  # type: ignore[union-attr]
               else f"{sent}, not answered")
        if died:
            yield Result(result.check, False, "the agent went offline (its Last Will)")
        else:
            yield Result(result.check, result.ok, f"{how} ({len(payload)} bytes); then "
                         f"{result.detail}")

    def refusals(self) -> Iterator[Result]:
        m = self.manifest(sign=False)
        yield self.expect_refusal("unsigned manifest refused", m, ("rejected",))
        m = SigningKey.generate().sign(self.manifest(sign=False))
        yield self.expect_refusal("manifest signed by an unknown key refused", m, ("rejected",))
        m = self.manifest()
        forged = m.model_copy(update={"thresholds": Thresholds(max_p90_ms=3_600_000)})
        yield self.expect_refusal("manifest altered after signing refused", forged,
                                  ("rejected",))
        now = time.time()
        m = self.manifest(created_at=now - 7200, expires_at=now - 3600)
        yield self.expect_refusal("expired manifest refused", m, ("rejected",))
        m = self.cfg.key.sign(self.manifest(sign=False).model_copy(
            update={"device_id": "conformance-other-device"}))
        yield self.expect_refusal("manifest for another device refused", m, ("error", "rejected"))

    def deployment(self) -> Iterator[Result]:
        m = self.manifest(probes=True, thresholds=Thresholds(min_agreement=0.9,
                                                             max_p90_ms=600_000))
        mark, final = self.deploy(m)
        model = m.model.sha256
        if final is None:
            yield Result("signed manifest accepted and activated", False,
                         f"no final report in {self.cfg.timeout:.0f}s")
            return
        rep: Report = final.message  # type: ignore[assignment]
        ok = rep.state == "active" and rep.active_sha256 == model
        yield Result("signed manifest accepted and activated", ok,
                     f"final {rep.state}, active {str(rep.active_sha256)[:12]} "
                     f"(model {model[:12]})" + (f": {rep.reason}" if rep.reason else ""))
        if rep.state == "active":
            self.accepted = m
        items = [r for r in self.host.inbox.since(mark) if isinstance(r.message, Report)
                 and r.message.deployment_id == m.deployment_id]
        states = [r.message.state for r in items]  # type: ignore[union-attr]
        wrong = [r.message.state for r in items if r.message.manifest_sha256 != m.digest  # type: ignore[union-attr]
                 or r.message.model_sha256 != model]  # type: ignore[union-attr]
        yield Result("reports in order, naming the manifest",
                     states == EXPECTED_STATES and not wrong,
                     f"{' -> '.join(states)}" + (f"; wrong manifest/model in {wrong}"
                                                 if wrong else ""))
        bad = [f"{r.message.state}: {r.problem}" for r in items if not r.authentic]  # type: ignore[union-attr]
        yield Result("reports signed by the device key", not bad and bool(items),
                     "; ".join(bad)[:200] or f"{len(items)} reports verified")
        yield self._transfer_stats(items, m, "deployment")
        yield from self._measurements(rep, m)
        after = self.status_after(final.seq + 1)
        active = after.active_model.sha256 if after and after.active_model else None
        yield Result("status names the new active model", active == model,
                     f"status active {str(active)[:12]}" if after else "no status after "
                     "the final report")

    def _transfer_stats(self, items: list[Received], m: Manifest, what: str) -> Result:
        got = next((r.message for r in items if r.message.state == "received"), None)  # type: ignore[union-attr]
        t = got.transfer if isinstance(got, Report) else None
        size = sum(a.size for a in m.artifacts().values())
        chunks = sum(a.chunks for a in m.artifacts().values())
        ok = t is not None and t.bytes == size and t.chunks == chunks
        return Result(f"{what}: received report's transfer bytes and chunks", ok,
                      f"{t.bytes} bytes, {t.chunks} chunks (expected {size}, {chunks})"
                      if t else "no transfer stats in the received report")

    def _measurements(self, rep: Report, m: Manifest) -> Iterator[Result]:
        b = rep.benchmark
        problems = []
        if b is None:
            problems.append("no benchmark")
        else:
            lat = b.latency_ms
            if not (lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.max):
                problems.append("percentiles out of order")
            if not lat.min <= lat.mean <= lat.max:
                problems.append("mean outside [min, max]")
            if lat.count < m.benchmark.runs:
                problems.append(f"{lat.count} runs < {m.benchmark.runs}")
            if b.warmup_runs != m.benchmark.warmup_runs:
                problems.append(f"warm-up {b.warmup_runs} != {m.benchmark.warmup_runs}")
            if b.peak_memory_mb <= 0 or b.measured_seconds <= 0:
                problems.append("no peak memory or measured time")
            if not (b.runtime.name and b.runtime.version):
                problems.append("no runtime name/version")
        if rep.runtime is None:
            problems.append("report without runtime")
        yield Result("benchmark fields", not problems, "; ".join(problems) or
                     f"{b.runtime.name} {b.runtime.version}: p50 {b.latency_ms.p50:.3f} ms, "  # type: ignore[union-attr]
                     f"p90 {b.latency_ms.p90:.3f} ms over {b.latency_ms.count} runs, "  # type: ignore[union-attr]
                     f"init {b.init_ms:.1f} ms, peak {b.peak_memory_mb:.1f} MB")  # type: ignore[union-attr]
        c = rep.checks
        problems = []
        n_probes = 16
        if c is None:
            problems.append("no checks")
        else:
            if c.count != n_probes:
                problems.append(f"count {c.count} != {n_probes} probes")
            for f in ("clean_accuracy", "agreement", "max_abs_deviation", "min_robust_accuracy"):
                if getattr(c, f) is None:
                    problems.append(f"no {f}")
            if "fgsm@0.05" not in c.robust_accuracy:
                problems.append("no robust_accuracy['fgsm@0.05']")
            elif c.min_robust_accuracy is not None and not math.isclose(
                    c.min_robust_accuracy, min(c.robust_accuracy.values())):
                problems.append("min_robust_accuracy is not the minimum")
        yield Result("robustness fields", not problems, "; ".join(problems) or
                     f"{c.count} probes: clean {c.clean_accuracy}, robust "  # type: ignore[union-attr]
                     f"{c.robust_accuracy}, agreement {c.agreement}, "  # type: ignore[union-attr]
                     f"max deviation {c.max_abs_deviation:.2e}")  # type: ignore[union-attr]

    def replay(self) -> Iterator[Result]:
        if self.accepted is None:
            yield Result("replayed manifest refused", False, "needs an accepted deployment")
            return
        m = self.accepted
        yield self.expect_refusal("replayed manifest refused", m, ("error", "rejected"))

    def downgrade(self) -> Iterator[Result]:
        if self.accepted is None:
            yield Result("downgrade refused", False, "needs an accepted deployment")
            return
        m = self.manifest(release=self.accepted.release - 1)
        yield self.expect_refusal("downgrade refused", m, ("rejected",))

    def transfer(self) -> Iterator[Result]:
        m = self.manifest("model_b", chunk=1024)
        art = m.model
        n, k = art.chunks, art.chunks // 2
        server = self.host.serve(m, self.blobs_of(m))
        server.allow = lambda _sha, i: i < k
        mark = self.host.send_manifest(m, self.cfg.timeout)
        for i in range(k):
            server.publish(art.sha256, i, retain=True)
        dep = m.deployment_id

        def need(r: Received, have: int | None = None) -> bool:
            msg = r.message
            return (r.kind == "need" and msg is not None and msg.deployment_id == dep  # type: ignore[union-attr]
                    and (have is None or msg.have == have))  # type: ignore[union-attr]

        first = self.host.inbox.wait(lambda r: need(r, k), mark, self.cfg.timeout)
        if first is None:
            yield Result("resume after a disconnect", False, f"no chunk request with {k} of "
                         f"{n} chunks held in {self.cfg.timeout:.0f}s")
            self.wait_end(m, mark)
            server.clear(self.cfg.timeout)
            return
        kicked = self.host.inbox.mark()
        client_id = self.cfg.agent_client_id or f"paoding-agent-{self.cfg.device_id}"
        self.host.kick_agent(client_id, self.cfg.timeout)
        will = self.host.status(kicked, self.cfg.timeout, lambda s: not s.online)
        yield Result("Last Will: offline status when the connection drops", bool(
            will and will.authentic), (will.problem or "signed offline status")
            if will else f"no offline status in {self.cfg.timeout:.0f}s after taking over "
            f"client id {client_id}")
        back = self.host.status(kicked, self.cfg.timeout, lambda s: s.online)
        req = self.host.inbox.wait(need, back.seq + 1, self.cfg.timeout) if back else None
        if req is None:
            yield Result("resume after a disconnect", False, "no online status and chunk "
                         "request after the reconnect")
        else:
            msg = req.message
            asked = {i for s, e in msg.ranges for i in range(s, e)}  # type: ignore[union-attr]
            ok = asked == set(range(k, n)) and msg.have == k  # type: ignore[union-attr]
            yield Result("resume after a disconnect", ok and req.authentic,
                         f"holding {msg.have} of {n}, asked for {len(asked)} chunks "  # type: ignore[union-attr]
                         f"({min(asked) if asked else '-'}..{max(asked) if asked else '-'}; "
                         f"missing {k}..{n - 1})" + (f"; {req.problem}" if req.problem else ""))
        garbage = bytes(b ^ 0xFF for b in server.chunk(art.sha256, k))
        server.publish(art.sha256, k, payload=garbage)
        server.allow = lambda _sha, _i: True
        for i in range(k, n):
            server.publish(art.sha256, i)
        final = self.final_report(dep, mark)
        server.clear(self.cfg.timeout)
        if final is None:
            yield Result("chunked transfer completes", False,
                         f"no final report in {self.cfg.timeout:.0f}s")
            return
        rep: Report = final.message  # type: ignore[assignment]
        items = [r for r in self.host.inbox.since(mark) if isinstance(r.message, Report)
                 and r.message.deployment_id == dep]
        yield self._transfer_stats(items, m, "chunked transfer")
        yield Result("chunked transfer completes (a corrupt chunk was dropped)",
                     rep.state == "active" and rep.active_sha256 == art.sha256,
                     f"{n} chunks of {art.chunk_size} B: final {rep.state}, active "
                     f"{str(rep.active_sha256)[:12]} (model {art.sha256[:12]})"
                     + (f": {rep.reason}" if rep.reason else ""))
        self.status_after(final.seq + 1)  # the status that follows a deployment

    def rollback(self) -> Iterator[Result]:
        self.host.status(0, self.cfg.timeout, lambda s: s.online)
        statuses = [r.message for r in self.host.inbox.since(0)
                    if isinstance(r.message, Status) and r.message.online]
        last = statuses[-1] if statuses else None
        prior = last.active_model.sha256 if last and last.active_model else None  # type: ignore[union-attr]
        m = self.manifest(thresholds=Thresholds(max_p90_ms=1e-6))
        mark, final = self.deploy(m)
        if final is None:
            yield Result("missed threshold rolled back", False,
                         f"no final report in {self.cfg.timeout:.0f}s")
            return
        rep: Report = final.message  # type: ignore[assignment]
        yield Result("missed threshold rolled back", rep.state == "rolled_back"
                     and bool(rep.reason) and rep.benchmark is not None,
                     f"final {rep.state}" + (f": {rep.reason[:100]}" if rep.reason else ""))
        after = self.status_after(final.seq + 1)
        active = after.active_model.sha256 if after and after.active_model else None
        yield Result("previous model stays active", rep.active_sha256 == prior
                     and active == prior,
                     f"report active {str(rep.active_sha256)[:12]}, status active "
                     f"{str(active)[:12]}, before {str(prior)[:12]}")

    def refusals_hold(self) -> Iterator[Result]:
        went_on = sorted({f"{self.refused[r.message.deployment_id][0]} ({r.message.state})"  # type: ignore[union-attr]
                          for r in self.host.inbox.since(0) if isinstance(r.message, Report)
                          and r.message.deployment_id in self.refused
                          and r.seq >= self.refused[r.message.deployment_id][1]
                          and r.message.state in (*PROGRESS, "active", "rolled_back")})
        yield Result("refused manifests never started", not went_on,
                     "; ".join(went_on) or f"{len(self.refused)} refused, none went on")


CHECKS: dict[str, Callable[[Kit], Iterator[Result]]] = {
    "identity": Kit.identity,
    "malformed": Kit.malformed,
    "oversized": Kit.oversized,
    "refusals": Kit.refusals,
    "deployment": Kit.deployment,
    "replay": Kit.replay,
    "downgrade": Kit.downgrade,
    "transfer": Kit.transfer,
    "rollback": Kit.rollback,
    "refusals-hold": Kit.refusals_hold,
}


NEEDS = {"replay": "deployment", "downgrade": "deployment"}  # a group that needs another


def load_assets(directory: Path) -> dict[str, bytes]:
    names = {"model_a": "model_a.tflite", "model_b": "model_b.tflite",
             "probes_a": "probes_a.npz"}
    try:
        return {k: (directory / f).read_bytes() for k, f in names.items()}
    except OSError as exc:
        raise PaodingError(f"conformance assets missing: {exc}") from None


def run_kit(cfg: KitConfig, emit: Callable[[Result], None] = lambda _r: None) -> list[Result]:
    """Run the check groups in order; ``emit`` each result as it is known."""
    unknown = sorted(set(cfg.only) - set(CHECKS))
    if unknown:
        raise PaodingError(f"unknown check group(s) {', '.join(unknown)}: "
                           f"use {', '.join(CHECKS)}")
    selected = set(cfg.only) | {NEEDS[g] for g in cfg.only if g in NEEDS}
    host = Host(cfg.broker, cfg.device_id, cfg.device_key)
    kit = Kit(cfg, host, load_assets(cfg.assets))
    results: list[Result] = []
    host.connect(cfg.timeout)
    try:
        for name, check in CHECKS.items():
            if cfg.only and name not in selected:
                continue
            try:
                for result in check(kit):
                    results.append(result)
                    emit(result)
            except NoAgent:
                break
            except PaodingError as exc:
                result = Result(name, False, f"stopped: {exc}")
                results.append(result)
                emit(result)
    finally:
        if host.server is not None and host.client.connected:
            try:  # an interrupted run leaves no retained chunks behind
                host.server.clear(min(cfg.timeout, 10.0))
            except MqttError:
                pass
        host.close()
    return results
