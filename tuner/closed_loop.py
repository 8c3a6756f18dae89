"""The tuner's closed loop: measure candidates on a device until one is verified, or say why none is.

``verify`` deploys the best candidate predicted to meet the budgets (NetAdapt-style:
measured, not only predicted), measures it repeatedly under a noise rule
(``NoiseRule``), rescales the latency model by the median measured / predicted
ratio on a miss, re-screens the candidates skipped before export under that
scale, and deploys the next one (when the rescaled model rules out every
candidate, the unmeasured one predicted fastest among those meeting every other
budget and predicted faster than every candidate that missed: the model has
just been shown wrong, so measure). It ends in one of two
ways only:

- a candidate VERIFIED on the device: every budget met as measured there, with
  the noise margin, and the model left active on the device; or
- no verified candidate: ``chosen`` is None, and the statement names the
  closest measured candidate and what it misses (the command exits non-zero).

Reports whose latency is not a device measurement (an interpreter under an
instruction-set emulator such as qemu) never verify a latency budget.
``mqtt_deployer`` is the deployer for an agent over MQTT (fleet.publisher).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from device_profiles.schema import DeviceProfile
from tuner import choice
from tuner.candidates import Candidate, Step, TuneResult
from tuner.choice import choose
from tuner.quiet import native_quiet
from tuner.search import Search, attach_model, fill

Deployer = Callable[[Candidate, bytes], dict[str, Any]]


@dataclass(frozen=True)
class NoiseRule:
    """How measurements on a shared or busy device decide a latency budget.

    Each measurement is one deployment's benchmark (its p90 over the agent's runs).
    A measurement passes when the device keeps the model active, its p90 is at most
    ``budget * (1 - margin)`` and its peak memory is within budget. A candidate is
    verified when a majority of ``repeats`` measurements pass and the last one left
    it active (the median p90 is then within the margin); it misses when a majority
    fail, at once when one p90 is above ``budget * (1 + clear_miss)``, or when the
    device refuses it for another reason. ``verify`` chooses each candidate to deploy
    against the same ``budget * (1 - margin)``, so an accurate prediction passes at once.
    """

    repeats: int = 3
    margin: float = 0.05
    clear_miss: float = 0.25

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if not 0.0 <= self.margin < 0.5:
            raise ConfigError(f"noise margin must be in [0, 0.5), got {self.margin}")
        if self.clear_miss < 0:
            raise ConfigError(f"clear_miss must be >= 0, got {self.clear_miss}")

    @property
    def majority(self) -> int:
        return self.repeats // 2 + 1


def latency_note(m: dict[str, Any]) -> str | None:
    """Why a measurement's latency cannot verify a latency budget (None: it can)."""
    if m.get("latency_is_measurement") is False:
        return m.get("latency_note") or "the device says its latency is not a device measurement"
    if m.get("p90_ms") is None:
        return f"no benchmark in the report (device {m.get('state')}: {m.get('reason')})"
    return None


def measure(
    c: Candidate,
    blob: bytes,
    deployer: Deployer,
    profile: DeviceProfile,
    rule: NoiseRule = NoiseRule(),  # noqa: B008 - frozen
) -> dict[str, Any]:
    """Deploy one candidate up to ``rule.repeats`` times; the measurement summary and verdict."""
    b = profile.budgets
    limit = b.p90_latency_ms * (1.0 - rule.margin)
    runs: list[dict[str, Any]] = []
    passes = fails = 0
    refused = note = None
    while len(runs) < rule.repeats:
        m = deployer(c, blob)
        runs.append(m)
        note = latency_note(m)
        state = m.get("state")
        p90, mem = m.get("p90_ms"), m.get("peak_memory_mb")
        latency_rollback = p90 is not None and p90 > b.p90_latency_ms
        memory_rollback = mem is not None and mem > b.peak_memory_mb
        if state != "active" and not (latency_rollback or memory_rollback):
            refused = f"device {state}: {m.get('reason') or 'no reason given'}"
            break
        if note is not None:
            break
        ok = state == "active" and p90 <= limit and not memory_rollback
        passes, fails = passes + ok, fails + (not ok)
        if passes >= rule.majority or fails >= rule.majority:
            break
        if p90 > b.p90_latency_ms * (1.0 + rule.clear_miss):
            break
    last = runs[-1]
    p90s = [r["p90_ms"] for r in runs if r.get("p90_ms") is not None]
    mems = [r["peak_memory_mb"] for r in runs if r.get("peak_memory_mb") is not None]
    summary = {k: v for k, v in last.items() if k not in ("p90_ms", "p50_ms", "peak_memory_mb")}
    summary.update(
        p90_ms=float(np.median(p90s)) if p90s and note is None else None,
        p50_ms=float(np.median([r["p50_ms"] for r in runs if r.get("p50_ms") is not None]))
        if p90s
        else None,
        p90_runs_ms=p90s,
        peak_memory_mb=float(np.median(mems)) if mems else None,
        measurements=len(runs),
        noise_rule=asdict(rule),
    )
    emu = ", emulated" if last.get("emulated") else ""
    misses: list[str] = []
    if refused:
        misses.append(refused)
    elif note:
        misses.append(f"p90 latency not verified: {note}")
    else:
        median = summary["p90_ms"]
        if median is not None and (fails >= passes or median > limit):
            misses.append(
                f"p90 latency {median:.3g} ms > {limit:.3g} ms (budget {b.p90_latency_ms:g} ms "
                f"less the {rule.margin:.0%} noise margin; median of {len(p90s)} measured{emu})"
            )
        if summary["peak_memory_mb"] is not None and summary["peak_memory_mb"] > b.peak_memory_mb:
            misses.append(
                f"peak memory {summary['peak_memory_mb']:.4g} MB > {b.peak_memory_mb:g} MB "
                "(measured)"
            )
        if not misses and last.get("state") != "active":
            misses.append(f"device {last.get('state')}: {last.get('reason') or 'not active'}")
    if not misses and passes < rule.majority:
        misses.append(f"p90 latency: {passes} of {len(runs)} measurements within the margin")
    summary["misses"] = misses
    summary["verified"] = not misses
    return summary


def verify(
    result: TuneResult,
    search: Search,
    deployer: Deployer,
    *,
    rounds: int = 6,
    rule: NoiseRule = NoiseRule(),  # noqa: B008 - frozen
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> TuneResult:
    """Measure candidates on the device until one is verified (at most ``rounds`` candidates).

    ``deployer(candidate, model_bytes)`` deploys and returns one measurement:
    ``{"p90_ms", "peak_memory_mb", "emulated", "emulation", "state", "reason", ...}``.
    Afterwards ``result.chosen`` is the verified candidate, active on the device, or
    None with a statement naming the closest measured candidate and its misses.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    result.device = device or result.device or "the device"
    result.latency_margin = rule.margin  # choose what can pass the rule, not only the budget
    ratios: list[float] = []
    tried = 0
    verified: Candidate | None = None
    while tried < rounds:
        c = choose(result)
        if c is not None and tried and all(c is not u for u in _untried(result)):
            c = None  # predicted slower than a candidate that missed: it would miss too
        c = c or (_fastest_untried(result) if tried else None)
        if c is None:
            break
        result.chosen = c
        attach_model(result, search)
        assert result.model_bytes is not None
        m = measure(c, result.model_bytes, deployer, result.profile, rule)
        tried += 1
        c.measured = m
        result.verification.append({"candidate": c.key, **m})
        if m.get("p90_ms"):
            ratios.append(m["p90_ms"] / c.predicted_p90_ms)
            result.correction = float(np.median(ratios))
        if m["verified"]:
            verified = c
            log(
                f"verified {c.key}: p90 {m['p90_ms']:.3g} ms (median of {m['measurements']} "
                f"measured), peak memory {m.get('peak_memory_mb') or float('nan'):.4g} MB; "
                "meets every budget, active on the device"
            )
            break
        log(f"{c.key} misses on the device: {'; '.join(m['misses'])}")
        if m.get("latency_is_measurement") is False:
            break  # no candidate's latency can be verified on this device
        log(f"latency model rescaled x{result.correction:.2f} (measured/predicted)")
        added = _expand(result, search)
        if added:
            log(f"re-screened with the rescaled latency model: {added} more candidates measured")
    _conclude(result, verified, tried, rounds)
    return result


def _untried(result: TuneResult) -> list[Candidate]:
    """Unmeasured candidates that meet every budget but latency and are predicted faster
    than every candidate measured over the latency budget (a slower one would miss too)."""
    slowest_ok = min(
        (
            c.predicted_p90_ms
            for c in result.candidates
            if c.measured and any(m.startswith("p90 latency") for m in c.measured["misses"])
        ),
        default=float("inf"),
    )
    return [
        c
        for c in result.candidates
        if c.evaluated
        and not c.runtime_error
        and not c.measured
        and c.predicted_p90_ms < slowest_ok
        and all(m.startswith("p90 latency") for m in c.misses)
    ]


def _fastest_untried(result: TuneResult) -> Candidate | None:
    """When the rescaled model rules out every candidate: the unmeasured one with the lowest
    predicted latency that meets every other budget (the model just proved wrong; measure)."""
    return min(_untried(result), key=lambda c: c.predicted_p90_ms, default=None)


def _conclude(result: TuneResult, verified: Candidate | None, tried: int, rounds: int) -> None:
    """Set chosen / statement from the verification only: never an unverified candidate."""
    p = result.profile
    for c in result.candidates:
        c.chosen = False
        if c.evaluated:
            c.misses = choice.misses(c, p, result.correction, result.latency_margin)
    result.verified = verified is not None
    if verified is not None:
        verified.chosen = True
        result.chosen = verified
        m = verified.measured or {}
        emu = " under emulation" if m.get("emulated") else ""
        mem = m.get("peak_memory_mb")
        result.statement = (
            f"VERIFIED on {result.device}: {verified.key} for {p.id} meets every budget as "
            f"measured{emu}: p90 {m['p90_ms']:.3g} ms (median of {m['measurements']}; budget "
            f"{p.budgets.p90_latency_ms:g} ms, noise margin {m['noise_rule']['margin']:.0%})"
            + (f", peak memory {mem:.4g} MB" if mem is not None else "")
            + f", {verified.size_kb:.1f} KB, accuracy {verified.accuracy:.3f}, robust accuracy "
            f"{verified.robust:.3f}; active on the device; objective {result.objective}: "
            f"{choice.OBJECTIVES[result.objective]} of those predicted to meet every budget, "
            f"{tried} deployed"
        )
        return
    result.chosen = None
    result.model_bytes = result.keras_model = None
    measured = [c for c in result.candidates if c.measured]
    if not measured:
        return  # nothing was deployed: the tuning's own statement says why
    closest = min(measured, key=lambda c: (choice.excess(c, p, result.correction), choice.rank_key(c)))
    m = closest.measured or {}
    left = len(_untried(result))
    why = (
        f"{tried} deployed, the {rounds} rounds used up with {left} more predicted to meet"
        if tried >= rounds and left
        else f"{tried} deployed, no other candidate can: the rest miss a budget the host "
        "measures or are predicted slower than one that missed"
    )
    p90 = m.get("p90_ms")
    result.statement = (
        f"NOT VERIFIED: no candidate could be verified on {result.device} for {p.id} ({why}); "
        f"the closest measured is {closest.key} ("
        + (f"p90 {p90:.3g} ms measured, " if p90 is not None else "")
        + f"{closest.size_kb:.1f} KB): it misses {'; '.join(closest.misses) or 'a budget'}"
    )


def _expand(result: TuneResult, search: Search) -> int:
    """Export and measure screened-out candidates that meet the budgets once rescaled."""
    p = result.profile
    groups: dict[tuple[str, int, str], list[tuple[Candidate, Step]]] = {}
    for c, s in result.pending:
        if choice.excess(c, p, result.correction) <= 0.15:
            groups.setdefault((c.mode, c.seed, c.export), []).append((c, s))
    added: list[Candidate] = []
    for (mode, seed, _), items in groups.items():
        base = search.score(search.steps[(mode, seed)][0], "float32")
        for c, s in sorted(items, key=lambda cs: cs[0].ratio)[: result.per_export]:
            fill(c, search, s, p, base)
            result.candidates.append(c)
            added.append(c)
    result.pending = [(c, s) for c, s in result.pending if all(c is not a for a in added)]
    result.screened_out -= len(added)
    return len(added)


def report_measurement(report: Any) -> dict[str, Any]:
    """The fields of a DeploymentReport the tuner uses, as plain data."""
    bench = report.benchmark
    checks = report.checks
    # qemu-user and the like: the latency is the emulator's, not the device's
    cpu_emulator = getattr(bench, "cpu_emulator", None) if bench else None
    return {
        "device_id": report.device_id,
        "deployment_id": report.deployment_id,
        "state": report.state,
        "reason": report.reason,
        "p90_ms": bench.latency_ms.p90 if bench else None,
        "p50_ms": bench.latency_ms.p50 if bench else None,
        "runs": bench.latency_ms.count if bench else None,
        "peak_memory_mb": bench.peak_memory_mb if bench else None,
        "runtime": f"{bench.runtime.name} {bench.runtime.version}" if bench else None,
        "emulated": bool(bench.emulated) if bench else None,
        "emulation": bench.emulation if bench else None,
        "latency_is_measurement": False if cpu_emulator else None,
        "latency_note": (
            f"measured under {cpu_emulator}: the emulator's latency, not a device measurement"
            if cpu_emulator
            else None
        ),
        "probe_accuracy": checks.clean_accuracy if checks else None,
        "probe_min_robust_accuracy": checks.min_robust_accuracy if checks else None,
        "probe_agreement": checks.agreement if checks else None,
    }


def mqtt_deployer(
    device_id: str,
    broker: Any,
    profile: DeviceProfile,
    *,
    probes: dict[str, np.ndarray] | None,
    key: Any = None,
    timeout: float = 120.0,
    runs: int = 200,
    min_seconds: float = 1.0,
    save_dir: str | os.PathLike[str] | None = None,
    device_key: Any = None,
) -> Deployer:
    """A deployer that publishes each candidate to one agent and returns its measurement.

    With ``save_dir``, each agent report is kept as ``reports/<deployment>.json`` and
    each deployed model as ``models/<sha256>.tflite`` (what ``profiles calibrate
    --from-reports ... --models`` reads). With ``device_key`` (the device's
    enrolled public key) only reports signed by it count.
    """
    import hashlib

    from fleet.publisher import deploy
    from pruner.export import run_tflite

    def quiet_outputs(model: bytes, x: np.ndarray) -> np.ndarray:
        with native_quiet():
            return run_tflite(model, x)

    def run(c: Candidate, blob: bytes) -> dict[str, Any]:
        b = profile.budgets
        report = deploy(
            blob,
            device_id,
            broker,
            probes=probes,
            key=key,
            timeout=timeout,
            host_outputs=quiet_outputs,
            device_key=device_key,
            thresholds={"max_p90_ms": b.p90_latency_ms, "max_peak_memory_mb": b.peak_memory_mb},
            benchmark={
                "runs": runs,
                "min_seconds": min_seconds,
                "warmup_runs": 10,
                "threads": profile.runtime.threads,
            },
        )
        if save_dir is not None:
            root = Path(save_dir)
            (root / "reports").mkdir(parents=True, exist_ok=True)
            (root / "models").mkdir(parents=True, exist_ok=True)
            (root / "reports" / f"{report.deployment_id}.json").write_text(
                report.model_dump_json(indent=2)
            )
            (root / "models" / f"{hashlib.sha256(blob).hexdigest()}.tflite").write_bytes(blob)
        return report_measurement(report)

    return run
