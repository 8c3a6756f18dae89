"""`paoding-edge profiles` list / show / validate / calibrate."""

from __future__ import annotations

import json

import yaml

import device_profiles as dp
from hostcli.main import main


def test_list_and_show(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for pid in ("raspberry-pi-4", "raspberry-pi-zero-2w", "android-midrange", "dev-host"):
        assert pid in out
    assert main(["profiles", "show", "raspberry-pi-4"]) == 0
    shown = capsys.readouterr().out
    assert yaml.safe_load(shown)["id"] == "raspberry-pi-4"
    assert main(["profiles", "show", "dev-host", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "dev-host"


def test_validate_bad_file_names_field(tmp_path, capsys):
    data = yaml.safe_load((dp.PACKAGE_DIR / "raspberry-pi-4.yaml").read_text())
    data["budgets"]["model_size_kb"] = "big"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["profiles", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "budgets.model_size_kb" in err and "valid number" in err
    assert len(err.strip().splitlines()) == 1


def test_calibrate_writes_calibrated_profile(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    prior = dp.load("dev-host").latency
    true_conv = prior.coefficients["conv_macs.float"] * 2
    recs = []
    for i in range(6):
        macs = 1e5 * (i + 1)
        counts = {
            "conv_macs.float": macs,
            "dense_macs.float": macs / 4,
            "ops.float": 6,
            "elements.float": 1000 * (i + 1),
        }
        p90 = 0.01 + true_conv * macs + prior.coefficients["dense_macs.float"] * macs / 4
        recs.append(
            {
                "profile": "dev-host",
                "p90_ms": p90,
                "peak_memory_mb": 60 + i,
                "features": {
                    "counts": counts,
                    "model_bytes": 4 * macs,
                    "activation_bytes": 4000 * (i + 1),
                },
            }
        )
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"measurements": recs}))
    assert main(["profiles", "calibrate", "dev-host", "--from-reports", str(report)]) == 0
    out = capsys.readouterr().out
    assert "calibrated dev-host from 6 measurements" in out
    p = dp.load("dev-host")  # the user directory shadows the shipped profile
    assert p.latency.provenance == "calibrated"
    assert p.latency.calibration_reports == 6
    assert p.latency.calibration_error["within_15pct"] == 1.0


def test_calibrate_refuses_emulated_for_real_device(tmp_path, capsys):
    recs = [
        {
            "p90_ms": 1.0 + i,
            "emulated": True,
            "features": {"counts": {"ops.float": 1 + i}, "model_bytes": 10, "activation_bytes": 10},
        }
        for i in range(3)
    ]
    report = tmp_path / "r.json"
    report.write_text(json.dumps(recs))
    rc = main(
        [
            "profiles",
            "calibrate",
            "raspberry-pi-4",
            "--from-reports",
            str(report),
            "-o",
            str(tmp_path / "x.yaml"),
        ]
    )
    assert rc == 2
    assert "host emulation" in capsys.readouterr().err


def test_calibrate_refuses_reports_measured_under_a_cpu_emulator(tmp_path, capsys):
    report = tmp_path / "agent-report.json"
    lat = {"count": 100, "mean": 9, "std": 1, "min": 8, "max": 12, "p50": 9, "p90": 10, "p99": 11}
    report.write_text(
        json.dumps(
            {
                "model_sha256": "0" * 64,
                "device_id": "pi-qemu",
                "state": "active",
                "benchmark": {"latency_ms": lat, "cpu_emulator": "qemu-aarch64 (cortex-a72)"},
            }
        )
    )
    rc = main(["profiles", "calibrate", "raspberry-pi-4", "--from-reports", str(report)])
    assert rc == 2
    assert "not a device measurement" in capsys.readouterr().err
