"""Supervised measurement: accuracy, FGSM/PGD robust accuracy, fidelity.

Attacks are batched with ``tf.GradientTape``; the clip range is the input
box (any object with ``.lo`` and ``.hi``, scalars or per-feature arrays).
Epsilons are absolute, in the units of the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import ConfigError, DataError

BATCH = 256


def _labels(y: Any) -> np.ndarray:
    """Integer labels from int labels or one-hot rows."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    return y.reshape(-1).astype(np.int64)


def box_bounds(box: Any, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The box's (lo, hi) as float32 arrays broadcast to one input's shape."""
    if isinstance(box, (tuple, list)) and len(box) == 2:
        lo, hi = box
    else:
        lo, hi = box.lo, box.hi
    try:
        lo = np.broadcast_to(np.asarray(lo, np.float32), input_shape)
        hi = np.broadcast_to(np.asarray(hi, np.float32), input_shape)
    except ValueError as exc:
        raise ConfigError(f"input box does not fit the input shape {input_shape}") from exc
    if np.any(lo > hi):
        raise ConfigError("input box has lo > hi")
    return lo.astype(np.float32), hi.astype(np.float32)


def outputs_probabilities(model: Any) -> bool:
    """True when the model ends in a softmax (its outputs are probabilities)."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    if last is None:
        return False
    if type(last).__name__ == "Softmax":
        return True
    act = getattr(last, "activation", None)
    return getattr(act, "__name__", "") == "softmax"


def predict(model: Any, x: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """Model outputs on x, batched, as a numpy array."""
    x = np.asarray(x, np.float32)
    outs = [
        np.asarray(model(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ]
    if not outs:
        raise DataError("no samples to evaluate")
    return np.concatenate(outs, axis=0)


def _top1(model: Any, x: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    return predict(model, x, batch_size).argmax(axis=-1)


def accuracy(model: Any, x: np.ndarray, y: Any, batch_size: int = BATCH) -> float:
    """Clean top-1 accuracy."""
    y = _labels(y)
    if len(y) != len(x):
        raise DataError(f"x has {len(x)} samples but y has {len(y)}")
    return float(np.mean(_top1(model, x, batch_size) == y))


def fidelity(reference_model: Any, model: Any, x: np.ndarray) -> float:
    """Top-1 agreement between two models on x (no labels needed)."""
    return float(np.mean(_top1(reference_model, x) == _top1(model, x)))


def random_inputs(box: Any, input_shape: tuple, n: int, seed: int) -> np.ndarray:
    """n inputs drawn uniformly from the box, float32 [n, *input_shape].

    A leading ``None`` (a Keras batch dimension) in input_shape is ignored.
    """
    shape = tuple(input_shape)
    if shape and shape[0] is None:
        shape = shape[1:]
    lo, hi = box_bounds(box, shape)
    rng = np.random.default_rng(seed)
    return (lo + rng.random((n, *shape), dtype=np.float32) * (hi - lo)).astype(np.float32)


def _loss_grad_sign(model: Any, x: np.ndarray, y: np.ndarray, probs: bool) -> np.ndarray:
    """sign of d(cross-entropy)/dx for one batch."""
    import tensorflow as tf

    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = model(xt, training=False)
        loss = tf.keras.losses.sparse_categorical_crossentropy(
            tf.convert_to_tensor(y), out, from_logits=not probs
        )
    grad = tape.gradient(loss, xt)
    if grad is None:
        raise DataError("the model output does not depend on its input (no gradient)")
    return np.sign(grad.numpy())


def _check_attack_args(x: np.ndarray, y: Any, eps: float) -> tuple[np.ndarray, np.ndarray]:
    if eps < 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    x = np.asarray(x, np.float32)
    y = _labels(y)
    if len(y) != len(x):
        raise DataError(f"x has {len(x)} samples but y has {len(y)}")
    return x, y


def fgsm(model: Any, x: np.ndarray, y: Any, eps: float, box: Any) -> np.ndarray:
    """Fast gradient sign method: x + eps * sign(grad), clipped to the box."""
    x, y = _check_attack_args(x, y, eps)
    lo, hi = box_bounds(box, x.shape[1:])
    probs = outputs_probabilities(model)
    out = np.empty_like(x)
    for i in range(0, len(x), BATCH):
        xb = x[i : i + BATCH]
        step = eps * _loss_grad_sign(model, xb, y[i : i + BATCH], probs)
        out[i : i + BATCH] = np.clip(xb + step, lo, hi)
    return out


def pgd(
    model: Any,
    x: np.ndarray,
    y: Any,
    eps: float,
    box: Any,
    steps: int = 10,
    step_size: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Projected gradient descent (L-inf) with a uniform random start.

    Each step moves by ``step_size`` (default eps/4) along the gradient sign,
    then projects onto the eps-ball around x and onto the input box.
    """
    x, y = _check_attack_args(x, y, eps)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    alpha = eps / 4.0 if step_size is None else float(step_size)
    lo, hi = box_bounds(box, x.shape[1:])
    ball_lo = np.maximum(x - eps, lo)
    ball_hi = np.minimum(x + eps, hi)
    rng = np.random.default_rng(seed)
    start = x + rng.uniform(-eps, eps, size=x.shape).astype(np.float32)
    adv = np.clip(start, ball_lo, ball_hi)
    probs = outputs_probabilities(model)
    for _ in range(steps):
        for i in range(0, len(x), BATCH):
            sl = slice(i, i + BATCH)
            moved = adv[sl] + alpha * _loss_grad_sign(model, adv[sl], y[sl], probs)
            adv[sl] = np.clip(moved, ball_lo[sl], ball_hi[sl])
    return adv.astype(np.float32)


def robust_accuracy(
    model: Any,
    x: np.ndarray,
    y: Any,
    eps: float,
    box: Any,
    attack: str = "fgsm",
    steps: int = 10,
    seed: int = 0,
) -> float:
    """Share of samples classified correctly both clean and under attack."""
    x, y = _check_attack_args(x, y, eps)
    if attack == "fgsm":
        adv = fgsm(model, x, y, eps, box)
    elif attack == "pgd":
        adv = pgd(model, x, y, eps, box, steps=steps, seed=seed)
    else:
        raise ConfigError(f"attack must be 'fgsm' or 'pgd', got {attack!r}")
    clean_ok = _top1(model, x) == y
    adv_ok = _top1(model, adv) == y
    return float(np.mean(clean_ok & adv_ok))
