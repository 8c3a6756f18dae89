"""What the console reads from the fleet record: one function per page, plain dicts out.

Counts and pages are computed in SQL (a fleet of 10,000 devices is one page of
rows plus a few GROUP BYs); every function returns JSON-ready data, which the
HTML page renders and the ``.json`` twin returns unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

import device_profiles
from core.errors import ConfigError
from device_profiles import latency
from device_profiles.calibration import Pair
from device_profiles.schema import DeviceProfile
from fleet.calibration import pairs_by_profile
from fleet.registry import Registry

PAGE_SIZE = 50
FINAL = ("active", "rolled_back", "rejected", "failed", "timed_out", "offline", "cancelled")
IN_PROGRESS = "('running', 'aborting')"
# a device's state: in a rollout in progress, else online or offline
_STATE = (f"CASE WHEN d.lock_rollout IN (SELECT rollout_id FROM rollouts WHERE state IN "
          f"{IN_PROGRESS}) THEN 'updating' WHEN d.online = 1 THEN 'online' ELSE 'offline' END")
STATES = ("online", "updating", "offline")


def fleet(reg: Registry, *, page: int = 1, profile: str | None = None,
          state: str | None = None, size: int = PAGE_SIZE) -> dict[str, Any]:
    """Counts by profile and state, models in use, rollouts, and one page of devices."""
    if state is not None and state not in STATES:
        raise ConfigError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    if page < 1:
        raise ConfigError(f"page must be 1 or more, got {page}")
    db = reg.db
    counts = db.query(f"SELECT d.profile AS profile, {_STATE} AS state, COUNT(*) AS n "
                      "FROM devices d GROUP BY 1, 2 ORDER BY 1, 2")
    by_profile: dict[str, dict[str, int]] = {}
    for r in counts:
        row = by_profile.setdefault(r["profile"], dict.fromkeys(STATES, 0))
        row[r["state"]] = int(r["n"])
    totals = {s: sum(p[s] for p in by_profile.values()) for s in STATES}
    models = db.query("SELECT active_sha AS sha256, COUNT(*) AS devices FROM devices "
                      "WHERE active_sha IS NOT NULL GROUP BY active_sha "
                      "ORDER BY devices DESC, sha256 LIMIT 20")
    where, args = [], []
    if profile:
        where.append("d.profile = ?")
        args.append(profile)
    if state:
        where.append(f"{_STATE} = ?")
        args.append(state)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    matching = int(db.query(f"SELECT COUNT(*) AS n FROM devices d {cond}", args)[0]["n"])
    pages = max(1, math.ceil(matching / size))
    rows = db.query(
        f"SELECT d.device_id, d.profile, d.runtime, d.active_sha, d.last_seen, d.online, "
        f"d.lock_rollout, d.public_key IS NOT NULL AS enrolled, {_STATE} AS state, "
        "(SELECT outcome FROM deployments x WHERE x.device_id = d.device_id "
        " ORDER BY x.started_at DESC LIMIT 1) AS last_outcome "
        f"FROM devices d {cond} ORDER BY d.device_id LIMIT ? OFFSET ?",
        [*args, size, (page - 1) * size])
    for r in rows:
        r["online"], r["enrolled"] = bool(r["online"]), bool(r["enrolled"])
    rollouts = db.query("SELECT rollout_id, state, reason, created_at, updated_at "
                        "FROM rollouts ORDER BY created_at DESC LIMIT 10")
    return {
        "total": sum(totals.values()), "states": totals, "by_profile": by_profile,
        "models": models, "rollouts": rollouts,
        "filter": {"profile": profile, "state": state},
        "page": page, "pages": pages, "matching": matching, "devices": rows,
    }


def _final_report(reg: Registry, deployment_id: str) -> dict[str, Any] | None:
    rows = reg.db.query(
        "SELECT body FROM reports WHERE deployment_id=? AND state IN "
        "('active', 'rolled_back', 'rejected', 'failed') ORDER BY id DESC LIMIT 1",
        (deployment_id,))
    return json.loads(rows[0]["body"]) if rows else None


def _prediction(reg: Registry, sha256: str, profile: str) -> dict[str, float | None]:
    """The tuner's predicted p90 and memory for this model on this profile, when recorded."""
    for step in reg.lineage(sha256):
        body = step["body"]
        if step["kind"] == "tune" and body.get("profile") == profile:
            return {"p90_ms": body.get("predicted_p90_ms"),
                    "memory_mb": body.get("predicted_memory_mb")}
    return {"p90_ms": None, "memory_mb": None}


def _budgets(profile: str) -> dict[str, float] | None:
    import device_profiles

    try:
        b = device_profiles.load(profile).budgets
    except Exception:  # noqa: BLE001 (an unknown or broken profile has no budgets to show)
        return None
    return {"p90_ms": b.p90_latency_ms, "memory_mb": b.peak_memory_mb}


def device(reg: Registry, device_id: str) -> dict[str, Any] | None:
    """One device: its record, every deployment with its measured figures and checks."""
    rows = reg.db.query(
        f"SELECT d.device_id, d.profile, d.tags, d.runtime, d.online, d.active_sha, "
        f"d.active_deployment, d.last_seen, d.lock_rollout, d.enrolled_at, "
        f"d.public_key IS NOT NULL AS enrolled, {_STATE} AS state FROM devices d "
        "WHERE d.device_id=?", (device_id,))
    if not rows:
        return None
    dev = rows[0]
    dev["tags"] = json.loads(dev["tags"] or "[]")
    dev["online"], dev["enrolled"] = bool(dev["online"]), bool(dev["enrolled"])
    history = []
    for dep in reg.deployments(device_id):
        final = _final_report(reg, dep["deployment_id"]) or {}
        bench = final.get("benchmark") or {}
        lat = bench.get("latency_ms") or {}
        checks = final.get("checks") or {}
        history.append({
            "deployment_id": dep["deployment_id"], "rollout_id": dep["rollout_id"],
            "wave": dep["wave"], "model_sha256": dep["model_sha256"],
            "outcome": dep["outcome"], "reason": dep["reason"],
            "started_at": dep["started_at"], "finished_at": dep["finished_at"],
            "reports": [r["state"] for r in reg.db.query(
                "SELECT state FROM reports WHERE deployment_id=? ORDER BY id",
                (dep["deployment_id"],))],
            "measured": {"p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"),
                         "memory_mb": bench.get("peak_memory_mb"),
                         "emulated": bench.get("emulated")},
            "predicted": _prediction(reg, dep["model_sha256"], dev["profile"]),
            "checks": {"agreement": checks.get("agreement"),
                       "clean_accuracy": checks.get("clean_accuracy"),
                       "min_robust_accuracy": checks.get("min_robust_accuracy"),
                       "robust_accuracy": checks.get("robust_accuracy") or {},
                       "count": checks.get("count")} if checks else None,
        })
    return {"device": dev, "budgets": _budgets(dev["profile"]), "deployments": history}


def rollout(reg: Registry, rollout_id: str, *, limit: int = 500) -> dict[str, Any] | None:
    """One rollout: state, reason, policy, counts per wave, and its devices (first ``limit``)."""
    found = reg.rollout(rollout_id)
    if found is None:
        return None
    spec = found["spec"]
    waves = spec.get("waves") or []
    per_wave = reg.db.query(
        "SELECT wave, outcome, COUNT(*) AS n FROM deployments WHERE rollout_id=? "
        "GROUP BY wave, outcome", (rollout_id,))
    counts: list[dict[str, int]] = [{} for _ in waves]
    for r in per_wave:
        while r["wave"] >= len(counts):
            counts.append({})
        counts[r["wave"]][r["outcome"]] = int(r["n"])
    wave_rows = [{"wave": i, "devices": len(waves[i]) if i < len(waves) else sum(c.values()),
                  "outcomes": c, "reached": bool(c)} for i, c in enumerate(counts)]
    devices = reg.db.query(
        "SELECT device_id, wave, outcome, reason, model_sha256, started_at, finished_at "
        "FROM deployments WHERE rollout_id=? ORDER BY wave, device_id LIMIT ?",
        (rollout_id, limit))
    total = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    failed = sum(v for k, v in total.items() if k not in ("active", "pending"))
    settled = sum(v for k, v in total.items() if k != "pending")
    policy = spec.get("policy") or {}
    return {
        "rollout_id": rollout_id, "state": found["state"], "reason": found["reason"],
        "created_at": found["created_at"], "updated_at": found["updated_at"],
        "policy": policy,
        "abort_threshold": {"max_failure_rate": policy.get("max_failure_rate"),
                            "max_failures": policy.get("max_failures")},
        "variants": {p: v[0] for p, v in (spec.get("variants") or {}).items()},
        "totals": total, "failed": failed, "settled": settled,
        "failure_rate": failed / settled if settled else 0.0,
        "waves": wave_rows, "skipped": len(spec.get("skipped") or {}),
        "devices": devices, "devices_shown": len(devices),
    }


def model(reg: Registry, sha256: str) -> dict[str, Any] | None:
    """A model's lineage (source digest -> prune -> tune -> artifact) and who runs it."""
    chain, seen, frontier = [], set(), [sha256]
    while frontier and len(chain) < 20:
        sha = frontier.pop(0)
        if sha in seen:
            continue
        seen.add(sha)
        for step in reg.lineage(sha):
            chain.append(step)
            frontier.append(step["source_sha256"])
    art = reg.db.query("SELECT sha256, size, created_at FROM artifacts WHERE sha256=?",
                       (sha256,))
    deployments = reg.db.query(
        "SELECT outcome, COUNT(*) AS n FROM deployments WHERE model_sha256=? GROUP BY outcome",
        (sha256,))
    manifest = reg.db.query(
        "SELECT manifest FROM deployments WHERE model_sha256=? AND manifest IS NOT NULL "
        "ORDER BY started_at DESC LIMIT 1", (sha256,))
    signature = None
    if manifest:
        sig = (json.loads(manifest[0]["manifest"]) or {}).get("signature") or {}
        signature = {"alg": sig.get("alg"), "key_id": sig.get("key_id")}
    running = reg.db.query(
        "SELECT device_id, profile, last_seen FROM devices WHERE active_sha=? "
        "ORDER BY device_id LIMIT 200", (sha256,))
    n_running = int(reg.db.query("SELECT COUNT(*) AS n FROM devices WHERE active_sha=?",
                                 (sha256,))[0]["n"])
    if not chain and not art and not deployments and not n_running:
        return None
    return {
        "sha256": sha256,
        "lineage": list(reversed(chain)),  # oldest step first: source -> ... -> this model
        "artifact": art[0] if art else None, "signature": signature,
        "deployments": {r["outcome"]: int(r["n"]) for r in deployments},
        "running": running, "running_count": n_running,
    }


def profiles(reg: Registry) -> list[str]:
    """The device profiles in the fleet, for choosing where a model goes."""
    return [r["profile"] for r in reg.db.query(
        "SELECT DISTINCT profile FROM devices ORDER BY profile")]


def model_bytes(reg: Registry, sha256: str) -> bytes | None:
    """The model's bytes: published before (artifacts), or the file its lineage names."""
    data = reg.artifact(sha256)
    if data is not None:
        return data
    for step in reg.lineage(sha256):
        path = step["body"].get("path")
        if path and Path(path).is_file():
            data = Path(path).read_bytes()
            if hashlib.sha256(data).hexdigest() == sha256:
                return data
    return None


def _median_error(pairs: list[Pair], predicted: Callable[[Pair], float | None]) -> float | None:
    errs = [(p, predicted(p)) for p in pairs]
    rel = np.array([(v - p.measured_p90_ms) / p.measured_p90_ms for p, v in errs if v is not None])
    return latency.error_summary(rel).get("median_abs") if rel.size else None


def calibration(reg: Registry, profile: str | None = None) -> dict[str, dict[str, Any]]:
    """Predicted against measured p90 per observed profile (or only ``profile``), before and
    after calibration: median error, N reports, and the provenance of the profile in use."""
    if profile is not None:
        try:
            device_profiles.check_profile_id(profile)
        except device_profiles.ProfileError as exc:
            raise ConfigError(str(exc)) from None
    loaded: dict[str, tuple[DeviceProfile, DeviceProfile | None]] = {}

    def load(pid: str) -> tuple[DeviceProfile, DeviceProfile | None]:
        loaded[pid] = device_profiles.before_after(pid)
        return loaded[pid]

    out = {}
    for pid, pairs in pairs_by_profile(reg, load, profile).items():
        before, after = loaded[pid]
        lm = (after or before).latency
        out[pid] = {
            "profile": pid,
            "reports": len(pairs),
            "in_use": {"calibrated": after is not None, "provenance": lm.provenance,
                       "calibrated_at": lm.calibrated_at,
                       "calibration_reports": lm.calibration_reports, "source": lm.source},
            "before": {"provenance": before.latency.provenance,
                       "median_error": _median_error(pairs, lambda p: p.before_p90_ms)},
            "after": {"median_error": _median_error(pairs, lambda p: p.after_p90_ms)},
            "pairs": [asdict(p) for p in pairs],
        }
    return out
