"""The latency model: features from real .tflite bytes, prediction, least-squares fit."""

from __future__ import annotations

import numpy as np
import pytest

import device_profiles as dp
from device_profiles import latency


@pytest.fixture(scope="module")
def tflite_models():
    keras = pytest.importorskip("keras")
    from pruner.export import export_tflite

    out = {}
    for width in (8, 32):
        m = keras.Sequential(
            [
                keras.Input((12, 12, 1)),
                keras.layers.Conv2D(width, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        out[width] = export_tflite(m)
    return out


def test_features_count_macs(tflite_models):
    f8 = latency.features_from_tflite(tflite_models[8])
    # conv: 10*10*8 outputs * 3*3*1; dense: 800*8 + 8*10
    assert f8.counts["conv_macs.float"] == 10 * 10 * 8 * 9
    assert f8.counts["dense_macs.float"] == 800 * 8 + 8 * 10
    assert f8.counts["ops.float"] >= 3
    f32 = latency.features_from_tflite(tflite_models[32])
    assert f32.counts["conv_macs.float"] == 4 * f8.counts["conv_macs.float"]
    assert f32.model_bytes > f8.model_bytes


def test_prediction_grows_with_work(tflite_models):
    lm = dp.load("raspberry-pi-4").latency
    small, big = (latency.features_from_tflite(tflite_models[w]) for w in (8, 32))
    assert latency.predict_latency_ms(lm, big) > latency.predict_latency_ms(lm, small) > 0
    assert latency.predict_memory_mb(lm, big) > lm.memory.base_mb


def test_fit_recovers_coefficients():
    prior = dp.load("dev-host").latency
    rng = np.random.default_rng(0)
    truth = {"conv_macs.float": 3e-8, "dense_macs.float": 9e-8, "ops.float": 0.002}
    data = []
    for _ in range(12):
        counts = {
            "conv_macs.float": rng.uniform(1e5, 1e7),
            "dense_macs.float": rng.uniform(1e4, 1e6),
            "ops.float": float(rng.integers(4, 20)),
        }
        y = 0.01 + sum(truth[k] * v for k, v in counts.items())
        feats = latency.ModelFeatures(counts, 1000, 1000)
        data.append(latency.Measurement(feats, y * rng.uniform(0.98, 1.02)))
    fitted = latency.fit(prior, data, source="synthetic measurements for the test")
    assert fitted.provenance == "calibrated"
    errs = latency.relative_errors(fitted, data)
    assert np.all(np.abs(errs) < 0.05)
    assert fitted.coefficients["conv_macs.float"] == pytest.approx(3e-8, rel=0.1)
    # features never measured keep their prior
    assert fitted.coefficients["conv_macs.int8"] == prior.coefficients["conv_macs.int8"]


def test_fit_needs_data():
    prior = dp.load("dev-host").latency
    with pytest.raises(ValueError, match="at least 3"):
        latency.fit(prior, [], source="nothing at all here")
    with pytest.raises(ValueError, match="p90_ms"):
        latency.Measurement.from_dict({"features": {}})


def _conv_macs_from_keras(model) -> tuple[float, float, float, int]:
    """(all conv MACs, depthwise MACs, MACs of the output channels padded to 16, conv layers)
    computed from the Keras layer shapes."""
    keras = pytest.importorskip("keras")
    total = dw = pad = 0.0
    layers = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            dw += h * w * c * kh * kw
            total += h * w * c * kh * kw
            layers += 1
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw * layer.input.shape[-1]
            pad += h * w * (16 * -(-c // 16) - c) * kh * kw * layer.input.shape[-1]
            layers += 1
    return total, dw, pad, layers


def test_features_of_a_real_mobilenet_match_its_keras_graph():
    """A real keras.applications MobileNet: MACs, depthwise MACs and conv ops as its layers say."""
    keras = pytest.importorskip("keras")
    from pruner.export import export_tflite

    model = keras.applications.MobileNet(alpha=0.25, input_shape=(96, 96, 3), weights=None)
    feats = latency.features_from_tflite(export_tflite(model))
    total, dw, pad, layers = _conv_macs_from_keras(model)
    assert 0 < dw < total / 5  # MobileNet v1 at alpha 0.25: depthwise is ~10% of the MACs
    assert feats.counts["conv_macs.float"] == total
    assert feats.counts["dw_macs.float"] == dw
    assert feats.counts["pad16_macs.float"] == pad > 0  # 8-channel layers, 1000 classes
    assert feats.counts["conv_ops.float"] == layers
    assert 0 < feats.counts["ops.float"] < layers  # pooling, reshape, softmax: a few
    assert feats.counts["conv_macs.int8"] == feats.counts["dw_macs.int8"] == 0
    # the depthwise cost the profiles fitted makes the prediction larger than MACs alone
    lm = dp.load("raspberry-pi-4").latency
    no_dw = latency.ModelFeatures(
        {k: v for k, v in feats.counts.items() if not k.startswith("dw_")},
        feats.model_bytes, feats.activation_bytes,
    )
    assert latency.predict_latency_ms(lm, feats) > latency.predict_latency_ms(lm, no_dw)
