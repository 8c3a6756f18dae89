"""The default data-free gate on a real small model: a good pruned model is handed over,
a collapse is refused (rates across models live in bench/results/verdict.md)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from core.errors import FidelityError  # noqa: E402
from pruner.api import prune  # noqa: E402
from pruner.evaluate import accuracy  # noqa: E402

FAST = dict(progress=False, measure_tflite=False, n_random=0, eps=())


@pytest.fixture(scope="module")
def digits_mlp():
    """An MLP 64-64-32-10 trained on the 8x8 scikit-learn digits, with its test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    idx = np.random.default_rng(0).permutation(len(x))
    tr, te = idx[:1300], idx[1300:]
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((64,))
    h = L.Dense(32, activation="relu")(L.Dense(64, activation="relu")(inp))
    model = keras.Model(inp, L.Dense(10)(h))
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[tr], d.target[tr], epochs=30, batch_size=64, verbose=0)
    return model, x[te], d.target[te]


def test_a_good_pruned_model_passes_the_default_gate(digits_mlp):
    model, x, y = digits_mlp
    result = prune(model, 0.3, "paoding", **FAST)
    assert accuracy(model, x, y) - accuracy(result.model, x, y) <= 0.03  # a good model
    verdict = result.final.verdict
    assert result.stop_reason == "target reached" and verdict["passed"]
    assert verdict["evidence"] == "synthesised" and verdict["floor"] == 0.9


def test_a_collapse_is_refused_by_the_default_gate(digits_mlp):
    model, x, y = digits_mlp
    with pytest.raises(FidelityError, match=r"refused at step .*synthesised evidence"):
        prune(model, 0.6, "random", **FAST)
    kept = prune(model, 0.6, "random", keep_below_floor=True, **FAST)
    assert accuracy(model, x, y) - accuracy(kept.model, x, y) > 0.10  # it is a collapse
    assert not kept.final.verdict["passed"]
