"""Refitting a profile from observations (pure): error before and after, pairs, minimum."""

from __future__ import annotations

import pytest

import device_profiles as dp
from device_profiles import calibration, latency


def observations(profile, factor: float, n: int = 8) -> list[latency.Measurement]:
    """Models of growing size measured on a device ``factor`` times slower than predicted."""
    out = []
    for i in range(n):
        counts = {
            "conv_macs.float": 2e5 * (i + 1),
            "conv_elements.float": 4e3 * (1 + i % 3),
            "dense_macs.float": 3e4 * (n - i),
            "elements.float": 500.0 * (i + 2),
            "conv_ops.float": 3.0,
            "ops.float": 6.0,
        }
        feats = latency.ModelFeatures(counts, 40_000 * (i + 1), 20_000 * (i + 1))
        p90 = factor * latency.predict_latency_ms(profile.latency, feats)
        mem = 1.2 * latency.predict_memory_mb(profile.latency, feats)
        out.append(latency.Measurement(feats, p90, mem, emulated=True, label=f"m{i}"))
    return out


def test_refit_from_observations_cuts_the_error():
    prior = dp.load("raspberry-pi-4-emulated")
    data = observations(prior, 1.6)
    new = calibration.calibrate(prior, data, source="test observations, 8 models")
    before = calibration.errors(prior.latency, data)
    after = calibration.errors(new.latency, data)
    assert before["median_abs"] == pytest.approx(0.375, abs=1e-3)  # 1/1.6 - 1
    assert after["median_abs"] < 0.05 and after["within_15pct"] == 1.0
    assert before["memory_median_abs"] > 0.15 > after["memory_median_abs"]
    lm = new.latency
    assert lm.provenance == "calibrated" and lm.calibration_reports == 8 and lm.calibrated_at
    assert new.budgets == prior.budgets and new.emulation == prior.emulation
    dp.validate(new.model_dump(mode="json"))  # a loadable profile


def test_prediction_pairs_before_and_after():
    prior = dp.load("raspberry-pi-4-emulated")
    data = observations(prior, 2.0, n=4)
    new = calibration.calibrate(prior, data, source="test observations, 4 models")
    pairs = calibration.prediction_pairs(prior.latency, new.latency, data)
    assert [p.label for p in pairs] == ["m0", "m1", "m2", "m3"]
    for p, m in zip(pairs, data, strict=True):
        assert p.measured_p90_ms == m.p90_ms
        assert p.before_p90_ms == pytest.approx(m.p90_ms / 2)
        assert p.after_p90_ms == pytest.approx(m.p90_ms, rel=0.1)
        assert p.measured_memory_mb == m.peak_memory_mb
    only_before = calibration.prediction_pairs(prior.latency, None, data)
    assert all(p.after_p90_ms is None and p.after_memory_mb is None for p in only_before)


def test_too_few_observations_name_the_minimum():
    prior = dp.load("dev-host")
    data = observations(prior, 1.5, n=calibration.MIN_OBSERVATIONS - 1)
    with pytest.raises(ValueError, match=f"at least {calibration.MIN_OBSERVATIONS}"):
        calibration.calibrate(prior, data, source="too few observations")


def test_error_row_formats_a_summary():
    row = calibration.error_row("x", {"n": 5.0, "median_abs": 0.1234, "p90_abs": 0.5,
                                      "within_15pct": 0.6})
    assert row == ["x", "5", "12.3%", "50.0%", "60%", "-"]
    assert len(row) == len(calibration.ERROR_HEADER)


def test_three_observations_of_a_uniformly_slower_device_suffice():
    """Few reports: the refit starts from the prior times the measured / predicted ratio."""
    prior = dp.load("raspberry-pi-zero-2w-emulated")
    data = observations(prior, 1.5, n=calibration.MIN_OBSERVATIONS)
    new = calibration.calibrate(prior, data, source="test observations, 3 models")
    held_out = observations(prior, 1.5, n=12)[3:]  # larger models than any it saw
    assert calibration.errors(prior.latency, held_out)["median_abs"] > 0.3
    assert calibration.errors(new.latency, held_out)["median_abs"] < 0.05
