"""Latency models that learn from the fleet: prediction error and the tuner's re-tries, before
and after `profiles calibrate --db`.

    nice -n 10 python bench/calibration_bench.py                  # N = 3 and 6 reports
    nice -n 10 python bench/calibration_bench.py --observations 4 --slower 1.6,1.4

The emulated devices run SLOWER than their profile says (a board throttled or
clocked below the profile's): each agent emulates its profile with the
emulation slowdown multiplied by the factor (same CPU set, quota, memory limit
and priority), while the host tunes with the shipped profile. For each profile:

1. before: `tune` (the demo CNN, paoding pruning, float32/float16) predicts with
   the shipped latency model, then the closed loop (`tune --verify-on`) deploys
   candidates until one is VERIFIED; the candidates it needed are counted;
2. the fleet: rollouts (`fleet.orchestrator.run_rollout`, registry on SQLite)
   deploy other candidates of the same model to the devices, one rollout each,
   those predicted nearest the budget first (a fleet runs models tuned for its
   device class); every VERIFIED report becomes an observation in the registry;
3. after N reports: `paoding-edge profiles calibrate PROFILE --db` refits the
   profile (written to a profiles directory of the bench's own), and `tune`
   with the closed loop runs again on it, counting the candidates again.

Prediction error is judged on held-out models: every deployment of the two
closed loops whose model is not among the observations. Writes
bench/results/calibration.{md,json,png}. Host emulation, not real devices.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, git_commit, machine, machine_line, save_figure, write_json  # noqa: E402

PROFILES = "raspberry-pi-4-emulated,raspberry-pi-zero-2w-emulated"
BENCH_SETTINGS = {"runs": 200, "min_seconds": 1.0, "warmup_runs": 10}


def slowed_profiles(pids: list[str], slower: dict[str, float], out: Path) -> None:
    """The agents' profiles: the shipped ones with the emulation slowdown times ``slower``."""
    import device_profiles as dp

    out.mkdir(parents=True, exist_ok=True)
    for pid in pids:
        data = dp.shipped(pid).model_dump(mode="json", exclude_none=True)
        data["emulation"]["slowdown"] = round(data["emulation"]["slowdown"] * slower[pid], 3)
        data["notes"] = f"calibration bench: the device runs {slower[pid]:g}x slower than " \
                        "the shipped profile says"
        (out / f"{pid}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def blob_of(search: Any, c: Any) -> bytes:
    for s in search.steps.get((c.mode, c.seed), []):
        if s.step == c.step:
            return search.export(s, c.export)
    raise KeyError(c.key)


def tune_and_verify(pid: str, model: Any, search: Any, deployer: Any, log: list[dict],
                    device: str, rounds: int) -> tuple[dict[str, Any], Any]:
    """tune + the closed loop; what it predicted, measured and how many candidates it took."""
    import tuner as tn
    from device_profiles import latency

    def recording(c: Any, blob: bytes) -> dict[str, Any]:
        m = deployer(c, blob)
        log.append({"sha256": hashlib.sha256(blob).hexdigest(), "candidate": c.key,
                    "features": latency.features_from_tflite(blob).to_dict(),
                    "p90_ms": m.get("p90_ms"), "peak_memory_mb": m.get("peak_memory_mb"),
                    "state": m.get("state")})
        return m

    start = len(log)
    r = tn.tune(model, pid, search=search, modes=("paoding",), progress=False)
    note = r.to_dict()["latency_model"]["calibrated_profile"]
    first = r.chosen
    first_pred = first.predicted_p90_ms if first else None
    tn.verify(r, search, recording, rounds=rounds, device=device, log=lambda s: None)
    tried = r.verification
    return {
        "profile_used": note or "shipped",
        "first_candidate": first.key if first else None,
        "first_predicted_p90_ms": first_pred,
        "first_measured_p90_ms": tried[0].get("p90_ms") if tried else None,
        "first_verified": bool(tried and tried[0].get("verified")),
        "candidates_deployed": len(tried),
        "retries": max(len(tried) - 1, 0) if r.verified else None,
        "deployments": len(log) - start,
        "verified": r.verified,
        "chosen": r.chosen.key if r.chosen else None,
        "chosen_measured_p90_ms": r.chosen.measured.get("p90_ms") if r.chosen else None,
        "statement": r.statement,
    }, r


def calibrate(pid: str, db: Path) -> str:
    """`paoding-edge profiles calibrate PID --db DB`; its output."""
    from hostcli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["profiles", "calibrate", pid, "--db", str(db)])
    if rc != 0:
        raise RuntimeError(f"calibrate {pid} failed ({rc}): {buf.getvalue()}")
    return buf.getvalue()


def errors_on(lm: Any, rows: list[dict]) -> dict[str, float]:
    from device_profiles import latency

    data = [latency.Measurement(latency.ModelFeatures.from_dict(r["features"]), r["p90_ms"])
            for r in rows]
    return latency.error_summary(latency.relative_errors(lm, data))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default=PROFILES)
    ap.add_argument("--slower", default="1.3,1.5",
                    help="per profile: how much slower the device runs than its profile says")
    ap.add_argument("--observations", default="3,6",
                    help="numbers of fleet reports to calibrate from, in increasing order")
    ap.add_argument("--rounds", type=int, default=6, help="most candidates per closed loop")
    ap.add_argument("--workdir", default="out/calibration_bench")
    args = ap.parse_args()

    from bench.common import quiet_tensorflow

    quiet_tensorflow()
    import device_profiles as dp
    import tuner as tn
    from core.signing import write_key_pair
    from fleet.broker import local_broker
    from fleet.orchestrator import run_rollout
    from fleet.registry import Registry
    from fleet.rollout import WavePolicy
    from hostcli.demo import EmulatedAgents, demo_model
    from hostcli.tune import probes_for
    from tuner.quiet import native_quiet

    pids = [p.strip() for p in args.profiles.split(",") if p.strip()]
    factors = [float(f) for f in args.slower.split(",")]
    slower = {p: factors[min(i, len(factors) - 1)] for i, p in enumerate(pids)}
    ns = sorted(int(n) for n in args.observations.split(","))
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for old in ("config", "agent-profiles", "agents", "fleet.sqlite"):
        shutil.rmtree(work / old, ignore_errors=True) if (work / old).is_dir() else \
            (work / old).unlink(missing_ok=True)
    os.environ["XDG_CONFIG_HOME"] = str(work / "config")  # calibrated profiles land here
    os.environ.pop("PAODING_PROFILES", None)
    load_start = os.getloadavg()
    t0 = time.perf_counter()

    print("[1/5] the demo CNN and its pruned candidates")
    with native_quiet():  # the interpreter's start-up notice
        model, data = demo_model(work)
        search = tn.Search.create(model, data, progress=False)
        probes = probes_for(search)
    if not (work / "keys" / "paoding.key").exists():
        write_key_pair(work / "keys")
    priv, pub = work / "keys" / "paoding.key", work / "keys" / "paoding.pub"
    slowed_profiles(pids, slower, work / "agent-profiles")
    db = work / "fleet.sqlite"
    registry = Registry(db)
    log: dict[str, list[dict]] = {p: [] for p in pids}
    runs: dict[str, dict[str, Any]] = {p: {"slower": slower[p], "after": {}} for p in pids}
    observed: dict[str, list[str]] = {p: [] for p in pids}
    calib_out: dict[str, dict[int, str]] = {p: {} for p in pids}
    agents = EmulatedAgents(work)
    with local_broker() as broker:
        try:
            print(f"[2/5] broker {broker.url}; {len(pids)} emulated agents, each slower than its "
                  f"profile ({', '.join(f'{p} x{slower[p]:g}' for p in pids)})")
            os.environ["PAODING_PROFILES"] = str(work / "agent-profiles")  # the agents' only
            try:
                for p in pids:
                    agents.start(f"cal-{p}", p, broker.url, pub)
            finally:
                os.environ.pop("PAODING_PROFILES")
            deployers = {p: tn.mqtt_deployer(f"cal-{p}", broker.url, dp.load(p), probes=probes,
                                             key=priv, timeout=180) for p in pids}
            print("[3/5] before: tune with the shipped profiles, verified on the devices")
            results: dict[str, Any] = {}
            for p in pids:
                runs[p]["before"], results[p] = tune_and_verify(
                    p, model, search, deployers[p], log[p], f"cal-{p}", args.rounds)
                print(f"  {p}: {_line(runs[p]['before'])}")
            # the fleet's models: the candidates the closed loop has not measured, nearest
            # the budget first (a fleet runs models tuned for its device class)
            pool = {}
            for p in pids:
                budget = dp.load(p).budgets.p90_latency_ms
                cands = sorted((c for c in results[p].candidates
                                if c.exported and not c.runtime_error and not c.measured),
                               key=lambda c: abs(np.log(c.predicted_p90_ms / budget)))
                pool[p] = [blob_of(search, c) for c in cands]
            print(f"[4/5] the fleet: rollouts of other candidates; calibrate after "
                  f"{', '.join(map(str, ns))} VERIFIED reports")
            for n in ns:
                while min(len(registry.observations(p)) for p in pids) < n:
                    variants = {}
                    for p in pids:
                        if len(registry.observations(p)) < n and pool[p]:
                            variants[p] = pool[p].pop(0)
                    if not variants:
                        raise RuntimeError("no more candidate models for the fleet's rollouts")
                    run_rollout(variants, broker.url, registry, key=priv,
                                benchmark={**BENCH_SETTINGS, "threads": 1},
                                policy=WavePolicy(timeout_s=240))
                for p in pids:
                    observed[p] = [r["model_sha256"] for r in registry.observations(p)]
                    calib_out[p][n] = calibrate(p, db)
                    after, _ = tune_and_verify(p, model, search, deployers[p], log[p],
                                               f"cal-{p}", args.rounds)
                    after["calibrated_from"] = len(observed[p])
                    after["latency_model"] = dp.load(p).latency.model_dump(mode="json")
                    runs[p]["after"][n] = after
                    print(f"  {p} after {len(observed[p])} reports: {_line(after)}")
        finally:
            agents.stop()
            registry.close()

    print("[5/5] prediction error on held-out models (deployed by the closed loops)")
    from device_profiles.schema import LatencyModel

    table = []
    for p in pids:
        shipped = dp.shipped(p).latency
        held = [r for r in log[p] if r["p90_ms"] and r["sha256"] not in set(observed[p])]
        runs[p]["held_out"] = len(held)
        runs[p]["error_before"] = errors_on(shipped, held)
        runs[p]["pairs"] = []
        for after in runs[p]["after"].values():
            lm = LatencyModel.model_validate(after["latency_model"])
            after["error_after"] = errors_on(lm, held)
        last = LatencyModel.model_validate(runs[p]["after"][ns[-1]]["latency_model"])
        from device_profiles import calibration, latency

        pairs = calibration.prediction_pairs(
            shipped, last, [latency.Measurement(latency.ModelFeatures.from_dict(r["features"]),
                                                r["p90_ms"], label=r["candidate"]) for r in held])
        runs[p]["pairs"] = [asdict(x) for x in pairs]
        b = runs[p]["before"]
        for after in runs[p]["after"].values():
            eb, ea = runs[p]["error_before"], after["error_after"]
            table.append([
                p, f"x{slower[p]:g}", str(after["calibrated_from"]), str(len(held)),
                f"{eb.get('median_abs', 0):.1%} -> {ea.get('median_abs', 0):.1%}",
                f"{eb.get('within_15pct', 0):.0%} -> {ea.get('within_15pct', 0):.0%}",
                f"{_tried(b)} -> {_tried(after)}",
                f"{b['deployments']} -> {after['deployments']}",
                f"{_ok(b)} -> {_ok(after)}",
            ])
    noise = []
    for p in pids:
        by_model: dict[str, list[float]] = {}
        for r in log[p]:
            if r["p90_ms"]:
                by_model.setdefault(r["sha256"], []).append(r["p90_ms"])
        spread = max((max(v) / min(v) for v in by_model.values() if len(v) > 1), default=None)
        runs[p]["repeat_spread"] = spread
        if spread:
            noise.append(f"{p} up to {spread:.2f}x")
    header = ["profile", "device vs profile", "N reports", "held-out measurements",
              "median |err| before -> after", "within 15%", "candidates deployed",
              "deployments", "first candidate verified"]
    load_end = os.getloadavg()
    conditions = (
        f"{machine_line()}; shared host, load average {load_start[0]:.1f} at the start, "
        f"{load_end[0]:.1f} at the end; bench run under nice; agents emulate their profile "
        "(CPU set, quota, memory limit, priority) with the slowdown times the factor; "
        f"{time.perf_counter() - t0:.0f} s")
    md = "\n".join([
        "# Calibration from the fleet's reports (`python bench/calibration_bench.py`)",
        "",
        conditions,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in table),
        "",
        "Before: the shipped profile. After: `profiles calibrate --db` from the N VERIFIED "
        "reports the fleet's rollouts left in the registry. Errors: p90 predicted against "
        "measured on the models the closed loops deployed that are not among the observations. "
        "Candidates deployed: what the closed loop (`tune --verify-on`) needed until one was "
        "VERIFIED (1 = the first candidate, no re-try). Host emulation, not real devices.",
        "",
        "Measurement noise: the p90 of one model measured in several deployments of this run "
        f"varied by {', '.join(noise) or 'n/a'} (max / min).",
        "",
    ])
    (RESULTS / "calibration.md").write_text(md)
    write_json(RESULTS / "calibration.json", relative({
        "machine": machine(), "commit": git_commit(), "conditions": conditions,
        "settings": vars(args), "profiles": runs,
        "calibrate_output": {p: {str(n): o for n, o in c.items()} for p, c in calib_out.items()},
    }))
    plot(runs, pids, ns, RESULTS / "calibration.png")
    print(md)
    return 0


def relative(obj: Any) -> Any:
    """``obj`` with the checkout's absolute path left out of every string."""
    if isinstance(obj, dict):
        return {k: relative(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative(v) for v in obj]
    return obj.replace(f"{ROOT}{os.sep}", "") if isinstance(obj, str) else obj


def _tried(r: dict[str, Any]) -> str:
    return f"{r['candidates_deployed']}" + ("" if r["verified"] else " (none VERIFIED)")


def _ok(r: dict[str, Any]) -> str:
    return "yes" if r["first_verified"] else "no"


def _line(r: dict[str, Any]) -> str:
    pred, meas = r["first_predicted_p90_ms"], r["first_measured_p90_ms"]
    return (f"first candidate {r['first_candidate']} predicted {pred or float('nan'):.3g} ms, "
            f"measured {meas or float('nan'):.3g} ms; {r['candidates_deployed']} candidate(s), "
            f"{r['deployments']} deployment(s), {'VERIFIED' if r['verified'] else 'NOT VERIFIED'}")


def plot(runs: dict[str, Any], pids: list[str], ns: list[int], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pids) + 1, figsize=(4.6 * (len(pids) + 1), 4.2))
    for ax, p in zip(axes, pids, strict=False):
        pairs = runs[p]["pairs"]
        meas = [x["measured_p90_ms"] for x in pairs]
        ax.scatter(meas, [x["before_p90_ms"] for x in pairs], label="shipped profile", marker="x")
        ax.scatter(meas, [x["after_p90_ms"] for x in pairs],
                   label=f"calibrated ({ns[-1]} reports)", marker="o", facecolors="none",
                   edgecolors="C1")
        hi = max([*meas, *(x["before_p90_ms"] for x in pairs), 1e-3]) * 1.1
        ax.plot([0, hi], [0, hi], color="grey", lw=0.8)
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("measured p90 (ms, emulated device)")
        ax.set_ylabel("predicted p90 (ms)")
        ax.set_title(f"{p}\n(device x{runs[p]['slower']:g} slower), held-out", fontsize=9)
        ax.legend(fontsize=8)
    ax = axes[-1]
    width = 0.8 / (len(ns) + 1)
    xs = np.arange(len(pids))
    ax.bar(xs, [runs[p]["before"]["candidates_deployed"] for p in pids], width, label="shipped")
    for i, n in enumerate(ns):
        ax.bar(xs + (i + 1) * width, [runs[p]["after"][n]["candidates_deployed"] for p in pids],
               width, label=f"calibrated, {n} reports")
    ax.set_xticks(xs + width * len(ns) / 2)
    ax.set_xticklabels([p.replace("-emulated", "\n(emulated)") for p in pids], fontsize=8)
    ax.set_ylabel("candidates deployed until VERIFIED")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png)


if __name__ == "__main__":
    sys.exit(main())
