"""Attacks and measures checked where the answer is known by hand."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from core.errors import ConfigError, DataError  # noqa: E402
from pruner import evaluate  # noqa: E402

W = np.array([1.0, -2.0, 0.5, 0.0], np.float32)


class Box:
    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi


def linear_model(softmax: bool) -> keras.Model:
    """Two logits, z0 = w.x and z1 = -w.x: class 0 iff w.x > 0."""
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(2, use_bias=False, activation="softmax" if softmax else None),
    ])
    model.layers[0].set_weights([np.stack([W, -W], axis=1)])
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = rng.random((300, 4), dtype=np.float32)
    x[:5] = [0.0, 1.0, 0.995, 0.5]  # on the box edges: clipping matters
    y = (x @ W <= 0).astype(np.int64)  # true labels from the model itself ...
    y[::7] = 1 - y[::7]  # ... with some wrong ones
    return x, y


def expected_fgsm(x, y, eps, lo=0.0, hi=1.0):
    # loss grows when the true class logit margin shrinks: move against the label
    direction = np.where(y[:, None] == 0, -np.sign(W), np.sign(W))
    return np.clip(x + eps * direction, lo, hi).astype(np.float32)


@pytest.mark.parametrize("softmax", [False, True])
def test_fgsm_moves_by_eps_sign_w_and_clips(data, softmax):
    x, y = data
    model = linear_model(softmax)
    adv = evaluate.fgsm(model, x, y, 0.05, Box(0.0, 1.0))
    np.testing.assert_allclose(adv, expected_fgsm(x, y, 0.05), atol=1e-7)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert np.all(adv[:, 3] == x[:, 3])  # zero weight: no gradient, no move


@pytest.mark.parametrize("head", ["dense-softmax", "softmax-layer", "functional"])
def test_saturated_softmax_still_has_a_gradient(data, head):
    """p = 1 in float32 would kill a probability gradient: the loss must see the logits."""
    x, y = data
    big = np.stack([W, -W], axis=1) * 10.0  # margins up to 70: p == 1, logits fine
    if head == "dense-softmax":
        model = keras.Sequential([keras.Input((4,)),
                                  keras.layers.Dense(2, use_bias=False, activation="softmax")])
    elif head == "softmax-layer":
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, use_bias=False),
                                  keras.layers.Softmax()])
    else:
        inp = keras.Input((4,))
        model = keras.Model(inp, keras.layers.Dense(2, use_bias=False,
                                                    activation="softmax")(inp))
    model.layers[-1 if head != "softmax-layer" else 0].set_weights([big])
    if head == "softmax-layer":
        model.layers[0].set_weights([big])
    p = np.asarray(model(x))
    # saturated: p within one float32 step of 1 (exactly 1.0 or 1 - 6e-8, by CPU)
    assert np.mean(p.max(1) >= np.float32(1) - np.finfo(np.float32).epsneg) > 0.2
    adv = evaluate.fgsm(model, x, y, 0.05, Box(0.0, 1.0))
    np.testing.assert_allclose(adv, expected_fgsm(x, y, 0.05), atol=1e-7)


def test_fgsm_per_feature_box(data):
    x, y = data
    lo = np.array([0.0, 0.2, 0.0, 0.0], np.float32)
    hi = np.array([1.0, 0.9, 1.0, 1.0], np.float32)
    adv = evaluate.fgsm(linear_model(False), x, y, 0.1, Box(lo, hi))
    np.testing.assert_allclose(adv, expected_fgsm(x, y, 0.1, lo, hi), atol=1e-7)


def test_pgd_on_linear_model_reaches_the_fgsm_corner(data):
    x, y = data
    model = linear_model(False)
    adv = evaluate.pgd(model, x, y, 0.05, Box(0.0, 1.0), steps=10, seed=1)
    # 10 steps of eps/4 from anywhere in the ball reach the corner x + eps*direction
    np.testing.assert_allclose(adv[:, :3], expected_fgsm(x, y, 0.05)[:, :3], atol=1e-6)
    assert np.all(np.abs(adv - x) <= 0.05 + 1e-6)
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_pgd_random_start_is_seeded_and_stays_in_ball(data):
    x, y = data
    model = linear_model(False)
    a = evaluate.pgd(model, x, y, 0.2, Box(0.0, 1.0), steps=1, step_size=0.0, seed=5)
    b = evaluate.pgd(model, x, y, 0.2, Box(0.0, 1.0), steps=1, step_size=0.0, seed=5)
    c = evaluate.pgd(model, x, y, 0.2, Box(0.0, 1.0), steps=1, step_size=0.0, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.abs(a - x) <= 0.2 + 1e-6) and a.min() >= 0.0 and a.max() <= 1.0


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_robust_accuracy_by_hand(data, attack):
    x, y = data
    model = linear_model(True)
    eps = 0.05
    adv = expected_fgsm(x, y, eps)
    clean_ok = (x @ W <= 0).astype(int) == y
    adv_ok = (adv @ W <= 0).astype(int) == y
    want = np.mean(clean_ok & adv_ok)
    got = evaluate.robust_accuracy(model, x, y, eps, Box(0.0, 1.0), attack=attack)
    assert got == pytest.approx(want, abs=1 / len(x))  # ties at w.x == 0 aside
    assert got < evaluate.accuracy(model, x, y)
    assert evaluate.robust_accuracy(model, x, y, 0.0, Box(0.0, 1.0), attack) == pytest.approx(
        evaluate.accuracy(model, x, y)
    )


def test_accuracy_fidelity_and_one_hot_labels(data):
    x, y = data
    model = linear_model(False)
    want = np.mean((x @ W <= 0).astype(int) == y)
    assert evaluate.accuracy(model, x, y, batch_size=7) == pytest.approx(want)
    assert evaluate.accuracy(model, x, np.eye(2)[y]) == pytest.approx(want)
    assert evaluate.fidelity(model, linear_model(True), x) == 1.0
    flipped = linear_model(False)
    flipped.layers[0].set_weights([np.stack([-W, W], axis=1)])
    assert evaluate.fidelity(model, flipped, x) < 0.05


def test_random_inputs_in_box_and_deterministic():
    lo = np.array([0.0, -1.0], np.float32)
    hi = np.array([1.0, 3.0], np.float32)
    a = evaluate.random_inputs(Box(lo, hi), (None, 2), 500, seed=2)
    assert a.shape == (500, 2) and a.dtype == np.float32
    assert np.all(a >= lo) and np.all(a <= hi)
    assert a[:, 1].max() > 2.5 and a[:, 1].min() < -0.5
    np.testing.assert_array_equal(a, evaluate.random_inputs(Box(lo, hi), (2,), 500, seed=2))
    assert evaluate.random_inputs(Box(0.0, 1.0), (28, 28, 1), 3, seed=0).shape == (3, 28, 28, 1)


def test_bad_arguments(data):
    x, y = data
    model = linear_model(False)
    with pytest.raises(ConfigError, match="attack"):
        evaluate.robust_accuracy(model, x, y, 0.1, Box(0.0, 1.0), attack="cw")
    with pytest.raises(ConfigError, match="eps"):
        evaluate.fgsm(model, x, y, -0.1, Box(0.0, 1.0))
    with pytest.raises(DataError, match="samples"):
        evaluate.accuracy(model, x, y[:-1])
    with pytest.raises(ConfigError, match="lo > hi"):
        evaluate.fgsm(model, x, y, 0.1, Box(1.0, 0.0))
