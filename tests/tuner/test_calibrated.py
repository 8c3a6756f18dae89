"""tune uses a calibrated profile in place of the shipped one, and says so."""

from __future__ import annotations

from tunehelp import TUNE_KW

import device_profiles as dp
import tuner as tn
from device_profiles import calibration, latency


def test_tune_picks_the_calibrated_profile(search, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("PAODING_PROFILES", raising=False)
    shipped = dp.shipped("dev-host")
    plain = tn.tune(search.model, "dev-host", search=search, exports=["float32"], **TUNE_KW)
    assert dp.calibration_note(plain.profile) is None
    assert plain.to_dict()["latency_model"]["calibrated_profile"] is None

    # the device runs 3x slower than the shipped model says: measured on the original's features
    data = []
    for i, c in enumerate(plain.candidates):
        feats = latency.ModelFeatures.from_dict(c.features)
        data.append(latency.Measurement(
            feats, 3 * latency.predict_latency_ms(shipped.latency, feats), label=f"c{i}"))
    fitted = calibration.calibrate(shipped, data, source="test: 3x slower than shipped")
    dp.user_dir().mkdir(parents=True)
    (dp.user_dir() / "dev-host.yaml").write_text(dp.dump(fitted))

    r = tn.tune(search.model, "dev-host", search=search, exports=["float32"], **TUNE_KW)
    note = r.to_dict()["latency_model"]["calibrated_profile"]
    assert note and str(dp.user_dir() / "dev-host.yaml") in note
    assert note in tn.table(r).splitlines()[0]  # the output says so
    feats = latency.ModelFeatures.from_dict(r.original.features)
    assert r.original.predicted_p90_ms == latency.predict_latency_ms(fitted.latency, feats)
    ratio = r.original.predicted_p90_ms / plain.original.predicted_p90_ms
    assert 2.5 < ratio < 3.5
