"""The profiles pages: predicted against measured p90 per profile, before and after calibration."""

from __future__ import annotations

import hashlib

import pytest
from starlette.testclient import TestClient

import device_profiles as dp
from console.app import create_app
from core.protocol import BenchmarkResult, LatencyStats, Report, RuntimeInfo
from device_profiles import calibration, latency
from fleet.calibration import observations
from fleet.registry import Registry
from fleet.rollout import Device

PROFILE = "raspberry-pi-4-emulated"
SLOWER = 1.5  # the devices run this much slower than the shipped profile predicts
BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def models() -> list[bytes]:
    keras = pytest.importorskip("keras")
    from pruner.export import export_tflite

    return [export_tflite(keras.Sequential([
        keras.Input((12, 12, 1)), keras.layers.Conv2D(4 * k, 3), keras.layers.Flatten(),
        keras.layers.Dense(8 * k)])) for k in (1, 2, 4)]


def verified(dep: str, device: str, sha: str, p90: float) -> dict:
    lat = LatencyStats(count=100, mean=p90, std=0.1, min=p90, max=p90, p50=p90, p90=p90,
                       p99=p90)
    bench = BenchmarkResult(
        runtime=RuntimeInfo(name="ai-edge-litert", version="2.3"), threads=1, init_ms=1,
        first_inference_ms=1, warmup_runs=10, warmup_mean_ms=1, latency_ms=lat,
        peak_memory_mb=60.0, rss_before_mb=50.0, measured_seconds=1.0, emulated=True,
        slowdown=10.0, emulation="slowdown 10")
    return Report(device_id=device, deployment_id=dep, state="active", final=True,
                  model_sha256=sha, benchmark=bench).model_dump(mode="json")


@pytest.fixture
def fleet(registry_target, models, tmp_path, monkeypatch):
    """Three VERIFIED reports of three models from devices SLOWER than the shipped profile."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("PAODING_PROFILES", raising=False)
    shipped = dp.load(PROFILE)
    measured = []
    with Registry(registry_target) as reg:
        for i, blob in enumerate(models):
            sha = hashlib.sha256(blob).hexdigest()
            dev, dep = f"pi-{i}", f"d{i}"
            p90 = SLOWER * latency.predict_latency_ms(shipped.latency,
                                                      latency.features_from_tflite(blob))
            measured.append(p90)
            reg.upsert_device(Device(dev, PROFILE))
            reg.put_artifact(sha, blob)
            reg.add_deployment(dep, dev, sha, len(blob), rollout_id=f"r{i}")
            reg.add_report(dep, dev, "active", verified(dep, dev, sha, p90), report_id=f"x{i}")
    return registry_target, measured


def calibrate(db) -> dp.DeviceProfile:
    """What `profiles calibrate PROFILE --db` writes beside the shipped profile."""
    with Registry(db) as reg:
        data = observations(reg, PROFILE).measurements
    new = calibration.calibrate(dp.load(PROFILE), data, source="test: three fleet reports")
    out = dp.user_dir() / f"{PROFILE}.yaml"
    out.parent.mkdir(parents=True)
    out.write_text(dp.dump(new))
    return new


def test_profiles_show_predicted_against_measured_before_and_after(fleet):
    db, measured = fleet
    with TestClient(create_app(db), base_url=BASE) as client:
        (row,) = client.get("/profiles.json").json()["profiles"]
        assert row["profile"] == PROFILE and row["reports"] == 3
        assert row["in_use"]["calibrated"] is False
        assert row["in_use"]["source"] == dp.shipped(PROFILE).latency.source
        assert row["before"]["median_error"] == pytest.approx(1 - 1 / SLOWER, abs=1e-3)
        assert row["after"]["median_error"] is None
        assert f'href="/profile/{PROFILE}"' in client.get("/profiles").text
        assert 'href="/profiles"' in client.get("/fleet").text

        new = calibrate(db)
        d = client.get(f"/profile/{PROFILE}.json").json()
        assert d["in_use"] == {"calibrated": True, "provenance": "calibrated",
                               "calibrated_at": new.latency.calibrated_at,
                               "calibration_reports": 3, "source": new.latency.source}
        assert d["before"]["median_error"] == pytest.approx(1 - 1 / SLOWER, abs=1e-3)
        assert d["after"]["median_error"] < 0.05
        assert [p["measured_p90_ms"] for p in d["pairs"]] == pytest.approx(measured)
        html = client.get(f"/profile/{PROFILE}").text
        assert 'id="calibration-chart"' in html and 'class="diagonal"' in html
        assert html.count('class="point before"') == 3 and html.count('class="point after"') == 3
        assert f"calibrated {new.latency.calibrated_at[:10]} from 3 reports" in html


def test_unknown_or_bad_profile_is_one_clear_message(fleet):
    db, _ = fleet
    with TestClient(create_app(db), base_url=BASE) as client:
        r = client.get("/profile/raspberry-pi-4.json")  # a profile with no report
        assert r.status_code == 404
        assert r.json() == {"error": "no measurement of profile 'raspberry-pi-4' here"}
        r = client.get("/profile/-x.json")
        assert r.status_code == 400 and r.json()["error"].startswith("invalid profile id '-x'")
