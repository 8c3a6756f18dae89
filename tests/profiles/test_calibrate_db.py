"""`paoding-edge profiles calibrate PROFILE --db`: from the fleet's VERIFIED reports."""

from __future__ import annotations

import hashlib

import pytest
import yaml

import device_profiles as dp
from device_profiles import latency
from fleet.registry import Registry
from fleet.rollout import Device
from hostcli.main import main

PROFILE = "raspberry-pi-4-emulated"
SLOWER = 1.6  # the emulated devices run 1.6x slower than the shipped profile predicts


@pytest.fixture(scope="module")
def models() -> list[bytes]:
    keras = pytest.importorskip("keras")
    from pruner.export import export_tflite

    out = []
    for width in (4, 8, 16, 24):
        m = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(width, 3),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
        out.append(export_tflite(m))
    return out


def fill(db, models: list[bytes], profile: str = PROFILE) -> None:
    """One VERIFIED deployment per model, measured SLOWER x the shipped prediction."""
    shipped = dp.shipped(profile).latency
    with Registry(db) as reg:
        reg.upsert_device(Device("pi-1", profile), online=True)
        for i, blob in enumerate(models):
            sha = hashlib.sha256(blob).hexdigest()
            feats = latency.features_from_tflite(blob)
            p90 = SLOWER * latency.predict_latency_ms(shipped, feats)
            reg.put_artifact(sha, blob)
            reg.add_deployment(f"d{i}", "pi-1", sha, len(blob), rollout_id=f"r{i}")
            bench = {"latency_ms": {"p50": p90 * 0.9, "p90": p90}, "peak_memory_mb": 90.0,
                     "threads": 1, "emulated": True, "emulation": "slowdown 23.2",
                     "runtime": {"name": "ai-edge-litert", "version": "2.3"}}
            reg.add_report(f"d{i}", "pi-1", "active",
                           {"state": "active", "final": True, "model_sha256": sha,
                            "benchmark": bench}, report_id=f"x{i}")


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("PAODING_PROFILES", raising=False)
    return tmp_path / "cfg" / "paoding-edge" / "profiles"


def test_calibrate_from_the_fleet_record(models, tmp_path, config, capsys, monkeypatch):
    db = tmp_path / "fleet.sqlite"
    fill(db, models)
    monkeypatch.setenv("PAODING_DB", str(db))  # the default --db
    assert main(["profiles", "calibrate", PROFILE]) == 0
    out = capsys.readouterr().out
    assert f"calibrated {PROFILE} from 4 measurements" in out and str(db) in out
    before = next(line for line in out.splitlines() if line.startswith("before: shipped"))
    after = next(line for line in out.splitlines() if line.startswith("after:"))
    assert "37.5%" in before  # 1 / 1.6 - 1
    assert before.split()[-2] == "0%" and after.split()[-2] == "100%"  # within 15%
    assert f"tune --profile {PROFILE}` now uses it" in out
    written = config / f"{PROFILE}.yaml"
    p = dp.load(PROFILE)
    assert dp.locate(PROFILE) == written
    assert p.latency.provenance == "calibrated" and p.latency.calibration_reports == 4
    assert "VERIFIED" not in p.latency.source and "fleet record" in p.latency.source
    assert str(written) in dp.calibration_note(p)
    assert p.budgets == dp.shipped(PROFILE).budgets
    assert yaml.safe_load(written.read_text())["id"] == PROFILE

    # again: the shipped model stays the starting point, the one in use is shown as well
    assert main(["profiles", "calibrate", PROFILE, "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "before: in use (calibrated" in out, out


def test_calibrate_error_lines(models, tmp_path, config, capsys):
    db = tmp_path / "fleet.sqlite"
    fill(db, models[:2])
    cases = [
        (["nope-profile", "--db", str(db)], "unknown profile 'nope-profile'"),
        (["raspberry-pi-4", "--db", str(db)], "no VERIFIED reports of profile 'raspberry-pi-4'"),
        ([PROFILE, "--db", str(db)], "calibration needs at least 3"),
        ([PROFILE, "--db", str(tmp_path / "none.sqlite")], "no fleet record at"),
    ]
    for args, message in cases:
        assert main(["profiles", "calibrate", *args]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "none.sqlite").exists()
    assert not config.exists()  # nothing written
