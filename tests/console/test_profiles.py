"""The profiles pages: predicted against measured p90 per profile, before and after calibration."""

from __future__ import annotations

import pytest
from consolehelp import CALIBRATING as PROFILE
from consolehelp import SLOWER, calibrate, observed, small_models
from starlette.testclient import TestClient

import device_profiles as dp
from console.app import create_app

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def models() -> list[bytes]:
    pytest.importorskip("keras")
    return small_models()


@pytest.fixture
def fleet(registry_target, models, tmp_path, monkeypatch):
    """Three VERIFIED reports of three models from devices SLOWER than the shipped profile."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("PAODING_PROFILES", raising=False)
    return registry_target, observed(registry_target, models)


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
