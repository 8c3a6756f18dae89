"""Profile validation: the shipped profiles load, bad ones fail naming the field."""

from __future__ import annotations

import copy

import pytest
import yaml

import device_profiles as dp

SHIPPED = {
    "raspberry-pi-4",
    "raspberry-pi-zero-2w",
    "android-midrange",
    "dev-host",
    "raspberry-pi-4-emulated",
    "raspberry-pi-zero-2w-emulated",
}


@pytest.fixture
def good() -> dict:
    return yaml.safe_load((dp.PACKAGE_DIR / "raspberry-pi-4.yaml").read_text())


def test_shipped_profiles_load_and_cite_sources():
    assert SHIPPED <= set(dp.list_profiles())
    for pid in SHIPPED:
        p = dp.load(pid)
        assert p.id == pid
        assert p.sources, pid
        if p.latency.provenance == "estimated":
            assert "stimated" in p.latency.source or "easured here" in p.latency.source
    assert dp.load("raspberry-pi-zero-2w").runtime.interpreter == "tflite-runtime"
    assert dp.load("raspberry-pi-4-emulated").emulation.emulates == "raspberry-pi-4"
    assert not dp.load("raspberry-pi-4").emulated


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        (("budgets", "p90_latency_ms"), -1, "budgets.p90_latency_ms", "greater than 0"),
        (("runtime", "interpreter"), "onnx", "runtime.interpreter", "ai-edge-litert"),
        (("runtime", "version"), "latest", "runtime.version", "2.14"),
        (("runtime", "threads"), 8, "(profile)", "exceeds cpu.cores"),
        (("platform",), "windows", "platform", "linux-aarch64"),
        (("id",), "Bad Id", "id", "lower-case"),
        (("latency", "coefficients", "gpu_macs.float"), 1.0, "latency.coefficients", "unknown"),
        (("latency", "provenance"), "measured", "latency.provenance", "estimated"),
        (("budgets", "min_accuracy_retention"), 1.5, "budgets.min_accuracy_retention", "1"),
        (("colour",), "red", "colour", "unknown field"),
    ],
)
def test_bad_field_is_named(good, path, value, field, reason):
    data = copy.deepcopy(good)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(dp.ProfileError) as exc:
        dp.validate(data, "test.yaml")
    msg = str(exc.value)
    assert f"{field}:" in msg and reason in msg, msg


def test_emulation_validation(good):
    data = copy.deepcopy(good)
    data["emulation"] = {"cpuset": [0, 0], "memory_limit_mb": 256}
    with pytest.raises(dp.ProfileError, match=r"emulation.cpuset: .*repeat"):
        dp.validate(data)
    data["emulation"] = {
        "cpuset": [0],
        "memory_limit_mb": 256,
        "cpu_quota": 0.1,
        "quota_period_us": 2000,
    }
    with pytest.raises(dp.ProfileError, match=r"emulation: .*kernel minimum"):
        dp.validate(data)


def test_calibrated_needs_provenance(good):
    data = copy.deepcopy(good)
    data["latency"]["provenance"] = "calibrated"
    data["latency"].pop("calibrated_at", None)
    data["latency"].pop("calibration_reports", None)
    with pytest.raises(dp.ProfileError, match="calibrated_at"):
        dp.validate(data)


def test_unreadable_and_unknown(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("id: [unclosed")
    with pytest.raises(dp.ProfileError, match="cannot read profile"):
        dp.load(bad)
    with pytest.raises(dp.ProfileError, match="expected a mapping"):
        bad.write_text("- 1\n- 2\n")
        dp.load(bad)
    with pytest.raises(dp.ProfileError, match="unknown profile 'nope'.*raspberry-pi-4"):
        dp.load("nope")


def test_search_path_and_roundtrip(tmp_path, monkeypatch, good):
    good["id"] = "my-board"
    (tmp_path / "my-board.yaml").write_text(yaml.safe_dump(good))
    monkeypatch.setenv("PAODING_PROFILES", str(tmp_path))
    assert "my-board" in dp.list_profiles()
    p = dp.load("my-board")
    again = dp.validate(yaml.safe_load(dp.dump(p)))
    assert again == p
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(good))
    with pytest.raises(dp.ProfileError, match="has id 'my-board', expected 'other'"):
        dp.load("other")


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, device_profiles, device_profiles.latency; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
