"""Recorded fleets for the console tests: devices, a rollout, reports, lineage; and VERIFIED
reports of real models for the calibration pages."""

from __future__ import annotations

import hashlib

import device_profiles as dp
from core.protocol import BenchmarkResult, LatencyStats, Report, RuntimeInfo
from device_profiles import calibration, latency
from fleet.calibration import observations
from fleet.registry import Registry
from fleet.rollout import Device, Outcome

SOURCE = "a" * 64
KERAS = "b" * 64
MODEL = "c" * 64
OLD = "d" * 64
PROFILE = "raspberry-pi-4"  # a shipped profile: its budgets are on the device page


def report(device_id: str, dep: str, state: str, p50: float, p90: float, mem: float,
           agreement: float) -> dict:
    return {
        "device_id": device_id, "deployment_id": dep, "state": state, "final": True,
        "benchmark": {"latency_ms": {"p50": p50, "p90": p90, "count": 5}, "peak_memory_mb": mem,
                      "emulated": True},
        "checks": {"count": 20, "agreement": agreement, "clean_accuracy": 0.95,
                   "min_robust_accuracy": 0.8, "robust_accuracy": {"fgsm@0.05": 0.8}},
    }


def populate(reg: Registry, n: int = 120) -> dict[str, list[str]]:
    """``n`` devices over two profiles; a finished rollout to the first 6; lineage of MODEL."""
    pi = [f"pi-{i:04d}" for i in range(n // 2)]
    phone = [f"phone-{i:04d}" for i in range(n - n // 2)]
    reg.upsert_devices([(Device(d, PROFILE, frozenset()), "litert", i % 3 != 0, None)
                        for i, d in enumerate(pi)])
    reg.upsert_devices([(Device(d, "android-midrange", frozenset({"lab"})), "litert", True,
                         None) for d in phone])
    for d in pi[:6]:
        reg.set_identity(d, PROFILE, "PEM", d)
    spec = {"waves": [pi[:2], pi[2:6]], "variants": {PROFILE: [MODEL, None]},
            "policy": {"max_failure_rate": 0.2, "max_failures": None}, "skipped": {}}
    reg.create_rollout("r-done", spec)
    reg.add_deployments([(f"r-done-{d}", d, MODEL, 1000, "r-done", 0 if i < 2 else 1, None, 1)
                         for i, d in enumerate(pi[:6])])
    for i, d in enumerate(pi[:6]):
        outcome = Outcome.ROLLED_BACK if i == 5 else Outcome.ACTIVE
        reg.add_report(f"r-done-{d}", d, outcome.value,
                       report(d, f"r-done-{d}", outcome.value, 10 + i, 12 + i, 40.0, 0.97))
        reg.settle([(f"r-done-{d}", outcome, "checks failed" if i == 5 else "")])
    reg.note_devices([(d, True, MODEL, f"r-done-{d}") for d in pi[:5]])
    reg.set_rollout_state("r-done", "done", "every wave finished")
    reg.add_lineage("prune", SOURCE, KERAS, {"source": "digits.keras", "mode": "paoding",
                                             "target": 0.5, "seed": 0, "fidelity": 0.91,
                                             "accuracy": 0.97, "export": "keras"})
    reg.add_lineage("tune", KERAS, MODEL, {"source": "pruned.keras", "profile": PROFILE,
                                           "key": "paoding/s0/r0.30/int8", "mode": "paoding",
                                           "seed": 0, "ratio": 0.3, "export": "int8",
                                           "accuracy": 0.96, "robust": 0.8,
                                           "predicted_p90_ms": 11.0,
                                           "predicted_memory_mb": 35.0, "outcome": "predicted"})
    return {"pi": pi, "phone": phone}


CALIBRATING = "raspberry-pi-4-emulated"  # the profile of the calibration pages' devices
SLOWER = 1.5  # those devices run this much slower than the shipped profile predicts


def small_models() -> list[bytes]:
    """Three real .tflite models of growing size (the latency model's features differ)."""
    import keras

    from pruner.export import export_tflite

    return [export_tflite(keras.Sequential([
        keras.Input((12, 12, 1)), keras.layers.Conv2D(4 * k, 3), keras.layers.Flatten(),
        keras.layers.Dense(8 * k)])) for k in (1, 2, 4)]


def verified(dep: str, device: str, sha: str, p90: float) -> dict:
    """A VERIFIED report body (final, active) measuring ``p90`` ms."""
    lat = LatencyStats(count=100, mean=p90, std=0.1, min=p90, max=p90, p50=p90, p90=p90,
                       p99=p90)
    bench = BenchmarkResult(
        runtime=RuntimeInfo(name="ai-edge-litert", version="2.3"), threads=1, init_ms=1,
        first_inference_ms=1, warmup_runs=10, warmup_mean_ms=1, latency_ms=lat,
        peak_memory_mb=60.0, rss_before_mb=50.0, measured_seconds=1.0, emulated=True,
        slowdown=10.0, emulation="slowdown 10")
    return Report(device_id=device, deployment_id=dep, state="active", final=True,
                  model_sha256=sha, benchmark=bench).model_dump(mode="json")


def observed(db, models: list[bytes]) -> list[float]:
    """One VERIFIED deployment of each model on its own CALIBRATING device, measured SLOWER
    than the shipped profile predicts; the measured p90s."""
    shipped = dp.load(CALIBRATING)
    measured = []
    with Registry(db) as reg:
        for i, blob in enumerate(models):
            sha = hashlib.sha256(blob).hexdigest()
            dev, dep = f"pi-{i}", f"d{i}"
            p90 = SLOWER * latency.predict_latency_ms(shipped.latency,
                                                      latency.features_from_tflite(blob))
            measured.append(p90)
            reg.upsert_device(Device(dev, CALIBRATING))
            reg.put_artifact(sha, blob)
            reg.add_deployment(dep, dev, sha, len(blob), rollout_id=f"r{i}")
            reg.add_report(dep, dev, "active", verified(dep, dev, sha, p90), report_id=f"x{i}")
    return measured


def calibrate(db) -> dp.DeviceProfile:
    """What `profiles calibrate CALIBRATING --db` writes beside the shipped profile."""
    with Registry(db) as reg:
        data = observations(reg, CALIBRATING).measurements
    new = calibration.calibrate(dp.load(CALIBRATING), data, source="test: three fleet reports")
    out = dp.user_dir() / f"{CALIBRATING}.yaml"
    out.parent.mkdir(parents=True)
    out.write_text(dp.dump(new))
    return new
