"""TFLite export: every quantisation loads in LiteRT and agrees with Keras."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")

from core.errors import ConfigError, DataError  # noqa: E402
from pruner import datasets, export  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    x_tr, y_tr, x_te, y_te = datasets.digits28(0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_tr, y_tr, epochs=3, batch_size=64, verbose=0)
    return model, x_tr, x_te


@pytest.fixture(scope="module")
def exports(trained):
    model, x_tr, _ = trained
    return {
        q: export.export_tflite(model, quantization=q, representative_data=x_tr[:100])
        for q in export.QUANTIZATIONS
    }


def test_float32_equals_keras(trained, exports, tmp_path):
    model, _, x_te = trained
    want = np.asarray(model(x_te, training=False))
    got = export.run_tflite(exports["float32"], x_te)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4)
    # batching by resizing gives the same as one sample at a time
    np.testing.assert_allclose(export.run_tflite(exports["float32"], x_te[:5], batch_size=1),
                               got[:5], atol=1e-6)
    path = tmp_path / "m.tflite"
    data = export.export_tflite(model, path)
    assert path.read_bytes() == data and len(data) > 4 * 784 * 64


@pytest.mark.parametrize("quantization", ["float16", "dynamic", "int8"])
def test_quantised_exports_load_and_agree(trained, exports, quantization):
    model, _, x_te = trained
    want = np.asarray(model(x_te, training=False)).argmax(1)
    got = export.run_tflite(exports[quantization], x_te).argmax(1)
    assert np.mean(got == want) >= 0.95
    assert len(exports[quantization]) < 0.6 * len(exports["float32"])


def test_int8_without_data_calibrates_on_the_box_and_says_so(trained):
    model, _, x_te = trained
    with pytest.warns(UserWarning, match="random inputs"):
        data = export.export_tflite(model, quantization="int8")
    assert export.run_tflite(data, x_te[:10]).shape == (10, 10)


def test_tflite_ops_shows_dynamic_range_version(exports):
    ops = {q: dict(export.tflite_ops(b)) for q, b in exports.items()}
    assert ops["float32"]["FULLY_CONNECTED"] == 1
    assert ops["float32"]["SOFTMAX"] >= 1
    assert ops["dynamic"]["FULLY_CONNECTED"] > ops["float32"]["FULLY_CONNECTED"]
    # per-tensor hybrid kernels by default (v9), not per-channel ones (v12)
    assert ops["dynamic"]["FULLY_CONNECTED"] == 9
    assert "DEQUANTIZE" in ops["float16"]
    assert "QUANTIZE" in ops["int8"]
    assert all(isinstance(n, str) and isinstance(v, int) for n, v in export.tflite_ops(
        exports["int8"]))


def test_bad_inputs(trained, exports):
    model, _, x_te = trained
    with pytest.raises(export.ExportError, match="TFL3"):
        export.tflite_ops(b"not a model at all")
    with pytest.raises(export.ExportError, match="cannot load"):
        export.run_tflite(b"\0" * 64, x_te[:2])
    with pytest.raises(DataError, match="does not fit"):
        export.run_tflite(exports["float32"], np.zeros((2, 64), np.float32))
    with pytest.raises(ConfigError, match="quantization"):
        export.export_tflite(model, quantization="int4")


def test_a_conversion_is_memoised_until_the_weights_change(trained):
    """The same model object and weights give the memoised flatbuffer; a weight changed in
    place gives a new conversion that follows it."""
    model = keras.models.clone_model(trained[0])
    model.set_weights(trained[0].get_weights())
    first = export.export_tflite(model)
    assert export.export_tflite(model) is first
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, bias + 1.0])
    again = export.export_tflite(model)
    assert again != first
    x = trained[2][:8]
    np.testing.assert_allclose(export.run_tflite(again, x), model.predict(x, verbose=0),
                               atol=1e-5)
