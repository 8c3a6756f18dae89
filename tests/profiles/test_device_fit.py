"""The real-device profiles carry the fit of bench/device_latency_bench.py, with its provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import device_profiles as dp
from device_profiles import latency

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "bench" / "results" / "device_latency.json"
DATA = ROOT / "bench" / "data" / "device_latency.json"
FEATURES = ROOT / "bench" / "results" / "device_latency_features.json"


@pytest.fixture(scope="module")
def fit():
    return json.loads(RESULT.read_text())


@pytest.mark.parametrize("pid", ["raspberry-pi-4", "raspberry-pi-zero-2w"])
def test_profile_coefficients_are_the_fit(fit, pid):
    profile = dp.load(pid)
    stored = fit["profiles"][pid]
    lm = profile.latency
    assert lm.provenance == "calibrated"
    assert "bench/device_latency_bench.py" in lm.source
    assert lm.coefficients == pytest.approx(stored["coefficients"], rel=1e-9)
    assert lm.calibration_error == pytest.approx(stored["calibration_error"])
    # every source the fitted figures cite is cited by the profile
    data = json.loads(DATA.read_text())
    cited = {r["source"] for r in data["records"] if r.get("fit", True)}
    assert all(any(url in s for s in profile.sources) for url in cited)
    assert any(data["single_thread_factor"]["source"] in s for s in profile.sources)


def test_profiles_reproduce_the_reported_predictions(fit):
    """Predicting from the stored .tflite features with the shipped profiles gives the table."""
    cache = json.loads(FEATURES.read_text())
    rows = [r for r in fit["rows"] if r["profile"]]
    assert {r["profile"] for r in rows} == set(fit["profiles"])
    for row in rows:
        lm = dp.load(row["profile"]).latency
        feats = latency.ModelFeatures.from_dict(cache[f"{row['model']}/{row['export']}"])
        assert latency.predict_latency_ms(lm, feats) == pytest.approx(
            row["predicted_one_thread_ms"], rel=1e-3
        )
