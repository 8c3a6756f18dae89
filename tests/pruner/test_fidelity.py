"""The data-free fidelity figure: check inputs near the boundaries, KL and its score."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from pruner.fidelity import Fidelity, check_set, measure  # noqa: E402


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(3)
    inp = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu")(inp)
    return keras.Model(inp, keras.layers.Dense(4)(h))


def test_check_set_adds_interpolations_between_classes(net):
    x = np.random.default_rng(0).random((40, 6)).astype(np.float32)
    check = check_set(net, x, seed=1)
    assert len(check) == 3 * len(x)
    np.testing.assert_array_equal(check[:40], x)
    mixes = check[40:]
    assert mixes.min() >= 0.0 and mixes.max() <= 1.0
    assert not any(np.any(np.all(np.isclose(m, x), axis=1)) for m in mixes)  # all new inputs
    np.testing.assert_array_equal(check, check_set(net, x, seed=1))  # seeded


def test_measure_is_one_for_the_same_model_and_falls_with_damage(net):
    x = check_set(net, np.random.default_rng(2).random((64, 6)).astype(np.float32))
    same = measure(net, net, x)
    assert same.agreement == 1.0 and same.kl == pytest.approx(0.0, abs=1e-9)
    assert same.score == pytest.approx(1.0)
    damaged = keras.models.clone_model(net)
    weights = net.get_weights()
    damaged.set_weights([w * (0.3 if i == 0 else 1.0) for i, w in enumerate(weights)])
    hurt = measure(net, damaged, x)
    assert hurt.kl > 0 and hurt.score < 1.0
    assert Fidelity(1.0, 2 * hurt.kl).score < hurt.score  # monotone in the divergence
