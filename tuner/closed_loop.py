"""The tuner's closed loop: measure the chosen candidate on a device, rescale, move on.

``verify`` deploys the chosen candidate (NetAdapt-style: measured, not only
predicted), compares the measured p90 latency and peak memory with the
budgets, rescales the latency model by the median measured / predicted
ratio, re-screens the candidates skipped before export under that scale, and
deploys the next best candidate when the measurement misses.
``mqtt_deployer`` is the deployer for an agent over MQTT (fleet.publisher).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from device_profiles.schema import DeviceProfile
from tuner import choice
from tuner.candidates import Candidate, Step, TuneResult
from tuner.choice import choose
from tuner.search import Search, attach_model, fill

Deployer = Callable[[Candidate, bytes], dict[str, Any]]


def verify(
    result: TuneResult,
    search: Search,
    deployer: Deployer,
    *,
    rounds: int = 3,
    log: Callable[[str], None] = print,
) -> TuneResult:
    """Measure the chosen candidate on the device; on a miss, rescale and try the next.

    ``deployer(candidate, model_bytes)`` deploys and returns the measurement:
    ``{"p90_ms", "peak_memory_mb", "emulated", "emulation", "state", "reason", ...}``.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    b = result.profile.budgets
    ratios: list[float] = []
    for _ in range(rounds):
        c = result.chosen
        if c is None:
            break
        blob = result.model_bytes
        assert blob is not None
        m = deployer(c, blob)
        misses = []
        if m.get("p90_ms") is not None and m["p90_ms"] > b.p90_latency_ms:
            misses.append(
                f"p90 latency {m['p90_ms']:.3g} ms > {b.p90_latency_ms:g} ms (measured"
                f"{', emulated' if m.get('emulated') else ''})"
            )
        if m.get("peak_memory_mb") is not None and m["peak_memory_mb"] > b.peak_memory_mb:
            misses.append(
                f"peak memory {m['peak_memory_mb']:.4g} MB > {b.peak_memory_mb:g} MB (measured)"
            )
        if m.get("state") not in (None, "active"):
            misses.append(f"device {m.get('state')}: {m.get('reason') or 'no reason given'}")
        m["misses"] = misses
        c.measured = m
        if m.get("p90_ms"):
            ratios.append(m["p90_ms"] / c.predicted_p90_ms)
            result.correction = float(np.median(ratios))
        result.verification.append({"candidate": c.key, **m})
        if not misses:
            log(
                f"verified {c.key}: measured p90 {m.get('p90_ms', float('nan')):.3g} ms, "
                f"peak memory {m.get('peak_memory_mb') or float('nan'):.4g} MB: meets the budgets"
            )
            c.misses = choice.misses(c, result.profile, result.correction)
            choose(result)
            attach_model(result, search)
            return result
        log(
            f"{c.key} misses on the device: {'; '.join(misses)}; latency model rescaled "
            f"x{result.correction:.2f} (measured/predicted)"
        )
        added = _expand(result, search)
        if added:
            log(f"re-screened with the rescaled latency model: {added} more candidates measured")
        choose(result)
        attach_model(result, search)
    return result


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
        "probe_accuracy": checks.clean_accuracy if checks else None,
        "probe_min_robust_accuracy": checks.min_robust_accuracy if checks else None,
        "probe_agreement": checks.agreement if checks else None,
    }


def mqtt_deployer(
    device_id: str,
    broker: str,
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

    def run(c: Candidate, blob: bytes) -> dict[str, Any]:
        b = profile.budgets
        report = deploy(
            blob,
            device_id,
            broker,
            probes=probes,
            key=key,
            timeout=timeout,
            host_outputs=run_tflite,
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
