"""VERIFIED reports become latency observations in the registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib

import pytest

from core.protocol import BenchmarkResult, LatencyStats, Report, RuntimeInfo
from device_profiles import latency
from fleet.calibration import observations, pairs_by_profile
from fleet.registry import Registry
from fleet.rollout import Device

PROFILE = "raspberry-pi-4-emulated"


@pytest.fixture(scope="module")
def model() -> bytes:
    keras = pytest.importorskip("keras")
    from pruner.export import export_tflite

    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                          keras.layers.Flatten(), keras.layers.Dense(3)])
    return export_tflite(m)


def body(dep: str, device: str, state: str, sha: str, *, final: bool = True, p90: float = 2.0,
         cpu_emulator: str | None = None) -> dict:
    lat = LatencyStats(count=200, mean=1.5, std=0.1, min=1.0, max=3.0, p50=1.5, p90=p90, p99=2.5)
    bench = BenchmarkResult(
        runtime=RuntimeInfo(name="ai-edge-litert", version="2.3"), threads=1, init_ms=1,
        first_inference_ms=1, warmup_runs=10, warmup_mean_ms=1, latency_ms=lat,
        peak_memory_mb=80.0, rss_before_mb=70.0, measured_seconds=1.0, emulated=True,
        slowdown=14.5, emulation="slowdown 14.5", cpu_emulator=cpu_emulator)
    return Report(device_id=device, deployment_id=dep, state=state, final=final,
                  model_sha256=sha, benchmark=bench).model_dump(mode="json")


def test_only_verified_reports_become_observations(registry_target, model, tmp_path,
                                                    monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))  # no calibrated profile
    sha = hashlib.sha256(model).hexdigest()
    other = "cd" * 32
    with Registry(registry_target) as reg:
        reg.upsert_devices([(Device(d, PROFILE), None, True, None) for d in ("pi-1", "pi-2")])
        reg.put_artifact(sha, model)
        for dep, dev, s in [("d1", "pi-1", sha), ("d2", "pi-1", sha), ("d3", "pi-2", sha),
                            ("d4", "pi-2", sha), ("d5", "pi-2", other)]:
            reg.add_deployment(dep, dev, s, len(model), rollout_id=f"r-{dep}")
        reg.add_reports([
            ("a", "d1", "pi-1", "benchmarked", body("d1", "pi-1", "benchmarked", sha,
                                                     final=False)),  # not final
            ("b", "d1", "pi-1", "active", body("d1", "pi-1", "active", sha, p90=2.0)),
            ("b2", "d1", "pi-1", "active", body("d1", "pi-1", "active", sha, p90=9.0)),  # again
            ("c", "d2", "pi-1", "rolled_back", body("d2", "pi-1", "rolled_back", sha)),
            ("d", "d3", "pi-1", "active", body("d3", "pi-1", "active", sha)),  # not its own
            ("e", "d4", "pi-2", "active", body("d4", "pi-2", "active", sha,
                                               cpu_emulator="qemu-user aarch64")),
            ("f", "d5", "pi-2", "active", body("d5", "pi-2", "active", sha)),  # not its model
        ])
        rows = reg.observations(PROFILE)
        assert [(r["deployment_id"], r["p50_ms"], r["p90_ms"]) for r in rows] == [
            ("d1", 1.5, 2.0)]
        assert rows[0]["features"] is None  # joined from the artifact when first read
        assert rows[0]["threads"] == 1 and rows[0]["peak_memory_mb"] == 80.0
        assert rows[0]["runtime"] == "ai-edge-litert 2.3" and rows[0]["emulation"]
    with Registry(registry_target) as reg:  # features are recorded once, by sha256
        found = observations(reg, PROFILE)
        assert found.without_model == 0
        (m,) = found.measurements
        assert m.p90_ms == 2.0 and m.peak_memory_mb == 80.0 and m.emulated
        assert m.features.counts == latency.features_from_tflite(model).counts
        assert reg.observations()[0]["export"] == "float32"
        assert reg.observations()[0]["features"] == m.features.to_dict()
        assert observations(reg, "raspberry-pi-4").measurements == []
        pairs = pairs_by_profile(reg)
        assert list(pairs) == [PROFILE]
        assert pairs[PROFILE][0].measured_p90_ms == 2.0
        assert pairs[PROFILE][0].after_p90_ms is None  # nothing calibrated yet


def test_observation_without_its_model_bytes_is_counted(registry_target):
    with Registry(registry_target) as reg:
        reg.upsert_device(Device("pi-1", PROFILE))
        reg.add_deployment("d1", "pi-1", "ab" * 32, 10, rollout_id="r1")
        reg.add_report("d1", "pi-1", "active", body("d1", "pi-1", "active", "ab" * 32),
                       report_id="x")
        found = observations(reg, PROFILE)
    assert found.measurements == [] and found.without_model == 1
