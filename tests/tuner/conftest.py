"""Fixtures for the tuner tests: a small trained model, its search cache, test profiles."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> tuple[Path, tuple[np.ndarray, np.ndarray]]:
    """A small MLP trained on the bundled digits (784 -> 48 -> 24 -> 10), saved as .keras."""
    import keras

    from pruner.datasets import digits28

    x_tr, y_tr, x_te, y_te = digits28(flatten=True)
    keras.utils.set_random_seed(0)
    inp = keras.Input((784,))
    h = keras.layers.Dense(48, activation="relu")(inp)
    h = keras.layers.Dropout(0.2)(h)
    h = keras.layers.Dense(24, activation="relu")(h)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_tr, y_tr, epochs=15, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("model") / "small.keras"
    model.save(path)
    return path, (x_te, y_te)


@pytest.fixture(scope="session")
def search(small_model):
    """One search (pruned steps, exports, scores) shared by every tuning in the session."""
    import tuner as tn
    from pruner.io import load_model

    path, data = small_model
    return tn.Search.create(load_model(path), data, robust_samples=100, progress=False)


@pytest.fixture
def make_profile(tmp_path, monkeypatch) -> Callable[..., str]:
    """Write a profile derived from a shipped one into a search-path directory; returns its id."""
    import device_profiles as dp

    pdir = tmp_path / "profiles"
    pdir.mkdir()
    monkeypatch.setenv("PAODING_PROFILES", str(pdir))

    def make(pid: str, base: str = "dev-host", **changes) -> str:
        data = copy.deepcopy(yaml.safe_load((dp.PACKAGE_DIR / f"{base}.yaml").read_text()))
        data["id"] = pid
        for dotted, value in changes.items():
            node = data
            keys = dotted.split("__")
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
        (pdir / f"{pid}.yaml").write_text(yaml.safe_dump(data))
        dp.load(pid)  # validates
        return pid

    return make


@pytest.fixture(scope="session")
def tflite_runtime_python(pytestconfig, tmp_path_factory) -> Path:
    """Python of a venv holding tflite-runtime 2.14.0 and numpy<2 (created when missing).

    Kept in the pytest cache between runs (a temporary directory without the cache
    plugin); the tests using it are skipped, saying why, only when the package index
    cannot provide it (and CI fails on a skip).
    """
    cache = getattr(pytestconfig, "cache", None)
    venv = (
        Path(cache.mkdir("tflite-runtime-2.14-venv"))
        if cache is not None
        else tmp_path_factory.mktemp("tflite-runtime-2.14-venv")
    )
    py = venv / "bin" / "python"
    check = [
        str(py),
        "-c",
        "import tflite_runtime, numpy; assert tflite_runtime.__version__ == '2.14.0'",
    ]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(py), "-m", "pip", "install", "-q", "tflite-runtime==2.14.0", "numpy<2"],
    ]
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            pytest.skip(
                f"cannot build the tflite-runtime 2.14 environment ({' '.join(cmd[:4])}): "
                f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}"
            )
    return py
