"""Probe bundles: built on the original model, saved, loaded, malformed ones refused."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")

from core import probes as fmt  # noqa: E402
from core.errors import (  # noqa: E402
    ConfigError,
    PaodingError,
    ProbeError,  # noqa: E402
)
from pruner import evaluate, probes  # noqa: E402


class Box:
    lo, hi = 0.0, 1.0


@pytest.fixture(scope="module")
def model_data():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    rng = np.random.default_rng(0)
    x = rng.random((40, 6), dtype=np.float32)
    y = np.asarray(model(x)).argmax(1)
    return model, x, y


@pytest.fixture(scope="module")
def bundle(model_data):
    model, x, y = model_data
    return probes.build_probes(model, x, y, eps=(0.05, 0.1), box=Box(), n=10, seed=3,
                               model_sha256="ab" * 32)


def test_bundle_format(model_data, bundle):
    model, x, y = model_data
    n = 10 * (1 + 2 * 2)
    assert bundle["x"].shape == (n, 6) and bundle["x"].dtype == np.float32
    assert bundle["y"].dtype == np.int64 and bundle["y"].shape == (n,)
    assert bundle["eps"].dtype == np.float32 and bundle["kind"].dtype.kind == "U"
    assert bundle["reference"].shape == (n, 3) and bundle["reference"].dtype == np.float32
    kinds, counts = np.unique(bundle["kind"], return_counts=True)
    assert dict(zip(kinds.tolist(), counts.tolist(), strict=True)) == {
        "clean": 10, "fgsm": 20, "pgd": 20}
    assert np.all(bundle["eps"][bundle["kind"] == "clean"] == 0)
    assert set(bundle["eps"][bundle["kind"] == "pgd"].tolist()) == {
        np.float32(0.05), np.float32(0.1)}
    # the clean rows are a seeded subset of the evaluation set; attacks are on the original
    clean = bundle["x"][bundle["kind"] == "clean"]
    idx = [int(np.flatnonzero((x == row).all(1))[0]) for row in clean]
    np.testing.assert_array_equal(bundle["y"][:10], y[idx])
    fgsm_01 = bundle["x"][(bundle["kind"] == "fgsm") & (bundle["eps"] == np.float32(0.1))]
    np.testing.assert_allclose(fgsm_01, evaluate.fgsm(model, clean, y[idx], 0.1, Box()))
    assert np.abs(fgsm_01 - clean).max() <= 0.1 + 1e-6
    np.testing.assert_allclose(bundle["reference"], np.asarray(model(bundle["x"])), atol=1e-4)
    meta = json.loads(str(bundle["meta"]))
    assert meta["input_box"] == {"lo": 0.0, "hi": 1.0} and meta["seed"] == 3
    assert meta["model_sha256"] == "ab" * 32 and meta["creator"].startswith("paoding-edge")
    assert len(meta["reference_tflite_sha256"]) == 64


def test_round_trip(bundle, tmp_path):
    path = fmt.save_probes(bundle, tmp_path / "p.npz")
    loaded = fmt.load_probes(path)
    assert set(loaded) == set(bundle)
    for key in bundle:
        np.testing.assert_array_equal(loaded[key], bundle[key])
        assert loaded[key].dtype == bundle[key].dtype
    with_expected = dict(bundle, expected=bundle["reference"] * 0.5)
    fmt.save_probes(with_expected, tmp_path / "q.npz")
    assert "expected" in fmt.load_probes(tmp_path / "q.npz")
    assert sorted(os.listdir(tmp_path)) == ["p.npz", "q.npz"]  # no temp files left


def test_build_is_deterministic(model_data, bundle):
    model, x, y = model_data
    again = probes.build_probes(model, x, y, eps=(0.05, 0.1), box=Box(), n=10, seed=3,
                                model_sha256="ab" * 32)
    for key in bundle:
        np.testing.assert_array_equal(again[key], bundle[key])


def test_pickled_files_refused(bundle, tmp_path):
    obj = tmp_path / "obj.npz"
    np.savez(obj, **dict(bundle, y=np.array([{"a": 1}] * len(bundle["y"]), dtype=object)))
    with pytest.raises(ProbeError, match="'y'.*pickled"):
        fmt.load_probes(obj)
    pkl = tmp_path / "bundle.pkl"
    pkl.write_bytes(pickle.dumps(dict(bundle)))
    with pytest.raises(ProbeError, match="not an npz"):
        fmt.load_probes(pkl)


@pytest.mark.parametrize("change, key", [
    ({"y": "float"}, "'y'"),
    ({"kind": "bad"}, "'kind'"),
    ({"meta": "notjson"}, "'meta'"),
    ({"reference": "short"}, "'reference'"),
    ({"eps": "clean-eps"}, "'eps'"),
    ({"extra": "key"}, "unknown key"),
    ({"x": "missing"}, "lacks key"),
])
def test_malformed_bundles_name_the_key(bundle, tmp_path, change, key):
    data = dict(bundle)
    what = next(iter(change.values()))
    if what == "float":
        data["y"] = data["y"].astype(np.float32)
    elif what == "bad":
        data["kind"] = np.where(data["kind"] == "pgd", "cw", data["kind"])
    elif what == "notjson":
        data["meta"] = np.array("{not json")
    elif what == "short":
        data["reference"] = data["reference"][:-1]
    elif what == "clean-eps":
        data["eps"] = np.full_like(data["eps"], 0.1)
    elif what == "key":
        data["extra"] = np.zeros(3)
    elif what == "missing":
        del data["x"]
    path = tmp_path / "bad.npz"
    np.savez(path, **data)
    with pytest.raises(ProbeError, match=key) as info:
        fmt.load_probes(path)
    assert "\n" not in str(info.value) and isinstance(info.value, PaodingError)
    with pytest.raises(ProbeError):
        fmt.save_probes(data, tmp_path / "never.npz")
    assert not (tmp_path / "never.npz").exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(ProbeError, match="does not exist"):
        fmt.load_probes(tmp_path / "none.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ProbeError):
        fmt.load_probes(junk)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ProbeError, match="single .npy"):
        fmt.load_probes(npy)


def test_bad_build_arguments(model_data):
    model, x, y = model_data
    with pytest.raises(ConfigError, match="attack"):
        probes.build_probes(model, x, y, box=Box(), attacks=("cw",))
    with pytest.raises(ConfigError, match="eps"):
        probes.build_probes(model, x, y, box=Box(), eps=(0.0,))
