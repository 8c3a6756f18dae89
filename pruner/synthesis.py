"""Inputs the tool makes itself, from what the model carries: no data set needed.

``synthesize`` optimises a batch of inputs inside the input box so that

* every BatchNormalization sees batch statistics close to its running mean
  and variance (ZeroQ, Cai et al. 2020; DeepInversion, Yin et al. 2020), and
* the model assigns each input confidently to a class, the classes spread
  evenly over the batch (the class-impression term of DeepInversion; it is
  what remains for a model without BatchNormalization),

with a small total-variation prior on image-shaped inputs. They serve three
data-free purposes: activation statistics for scoring and compensating merges,
bias correction after removal, and the fidelity figure (top-1 agreement with
the original model on a separately seeded batch).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from core.errors import ConfigError
from pruner.evaluate import outputs_probabilities
from pruner.io import model_digest
from pruner.metrics import scaled_count

# Fewest optimisation steps whose inputs the fidelity figure can trust: on a 96x96
# MobileNetV2 pruned to 17% accuracy, inputs of 20 steps still read 0.96 (50 steps: 0.46;
# bench/README.md, "What the synthesis steps buy"); the default is 200 (pruner.config)
MIN_FIDELITY_STEPS = 50


def counts(n: int, macs: int) -> tuple[int, int]:
    """Inputs to synthesise for fitting and for the held-out fidelity check: ``n`` and
    max(32, n // 2), both scaled by metrics.scaled_count (floors 32 and 16), so synthesis
    time stops growing with the model's MACs."""
    check = max(32, n // 2)
    return scaled_count(n, macs, 32), scaled_count(check, macs, 16)


# inputs of the last few syntheses, by model digest and settings: the tuner and the demo
# prune one model several times (modes, profiles), and a synthesis is most of a run's time
CACHE_SIZE = 4
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
# the compiled optimisation of the last few models, by digest and settings: tracing it costs
# as much as tens of steps, and a run synthesises twice (fitting and check inputs, any count)
_compiled: OrderedDict[tuple, Any] = OrderedDict()
ADAM = (0.9, 0.999, 1e-7)  # beta_1, beta_2, epsilon: keras.optimizers.Adam's defaults


def clear_cache() -> None:
    """Forget the cached syntheses and compiled loops (a benchmark timing the synthesis)."""
    _cache.clear()
    _compiled.clear()


def _bn_layers(model: Any) -> list[Any]:
    return [lay for lay in model.layers if type(lay).__name__ == "BatchNormalization"]


def _optimiser(model: Any, lo: np.ndarray, hi: np.ndarray, tv: float, image: bool) -> Any:
    """The whole optimisation as one compiled TensorFlow loop (no Python between steps):
    ``f(z, shifts, lr)`` runs len(shifts) Adam steps on the pre-sigmoid inputs ``z``
    (any batch size), rolling the inputs by shifts[i] at step i, and returns the last z."""
    import keras
    import tensorflow as tf

    lo_t, span = tf.constant(lo), tf.constant(hi - lo)
    bns = _bn_layers(model)
    probe = keras.Model(model.inputs[0], [*(b.input for b in bns), model.outputs[0]])
    stats = []
    for b in bns:
        w = dict(zip([x.path.split("/")[-1] for x in b.weights], b.get_weights(), strict=True))
        stats.append((tf.constant(w["moving_mean"]), tf.constant(np.sqrt(w["moving_variance"]))))
    classes = int(model.outputs[0].shape[-1])
    probs = outputs_probabilities(model)
    b1, b2, eps = ADAM

    def loss_of(z: Any, shift: Any, target: Any) -> Any:
        x = lo_t + span * tf.sigmoid(z)
        seen = tf.roll(x, shift=shift, axis=[1, 2]) if image else x
        outs = probe(seen, training=False)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        loss = 0.0
        for (mean, std), h in zip(stats, outs[:-1], strict=True):
            axes = list(range(len(h.shape) - 1))
            m, var = tf.nn.moments(h, axes)
            scale = tf.reduce_mean(std) + 1e-6
            loss += tf.reduce_mean(((m - mean) / scale) ** 2)
            loss += tf.reduce_mean(((tf.sqrt(var + 1e-8) - std) / scale) ** 2)
        y = outs[-1]
        if probs:
            ce = -tf.math.log(tf.gather(y, target, batch_dims=1) + 1e-8)
        else:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(target, y)
        loss += 0.1 * tf.reduce_mean(ce)
        if image and tv > 0:
            loss += tv * (tf.reduce_mean(tf.abs(x[:, 1:] - x[:, :-1]))
                          + tf.reduce_mean(tf.abs(x[:, :, 1:] - x[:, :, :-1])))
        return loss

    spec = tf.TensorSpec((None, *lo.shape), tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec((None, 2), tf.int32),
                                  tf.TensorSpec((), tf.float32)], autograph=False)
    def optimise(z: Any, shifts: Any, lr: Any) -> Any:
        target = tf.range(tf.shape(z)[0]) % classes

        def step(i: Any, z: Any, m: Any, v: Any) -> tuple[Any, Any, Any, Any]:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(z)
                loss = loss_of(z, shifts[i], target)
            g = tape.gradient(loss, z)
            t = tf.cast(i + 1, tf.float32)
            m = m + (g - m) * (1 - b1)
            v = v + (g * g - v) * (1 - b2)
            alpha = lr * tf.sqrt(1 - b2**t) / (1 - b1**t)
            return i + 1, z - m * alpha / (tf.sqrt(v) + eps), m, v

        zero = tf.zeros_like(z)
        _, z, _, _ = tf.while_loop(lambda i, *_: i < tf.shape(shifts)[0], step,
                                   (tf.constant(0), z, zero, zero))
        return z

    return optimise


def synthesize(
    model: Any,
    box: Any,
    n: int = 128,
    steps: int = 150,
    seed: int = 0,
    lr: float = 0.1,
    tv: float = 1.5,
    jitter: int = 2,
) -> np.ndarray:
    """``n`` float32 inputs in the box, shaped like the model's input (see the module doc)."""
    import tensorflow as tf

    if n < 1 or steps < 0:
        raise ConfigError(f"synthesis needs n >= 1 and steps >= 0, got {n} and {steps}")
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    lo = np.ascontiguousarray(np.broadcast_to(np.asarray(box.lo, np.float32), shape))
    hi = np.ascontiguousarray(np.broadcast_to(np.asarray(box.hi, np.float32), shape))
    digest = model_digest(model)
    key = (digest, lo.tobytes(), hi.tobytes(), n, steps, seed, lr, tv, jitter)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key].copy()
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (n, *shape)).astype(np.float32)
    image = len(shape) == 3
    shifts = rng.integers(-jitter, jitter + 1, size=(steps, 2)) if jitter else np.zeros((steps, 2))
    fkey = (digest, lo.tobytes(), hi.tobytes(), tv, image)
    if fkey not in _compiled:
        _compiled[fkey] = _optimiser(model, lo, hi, tv, image)
        while len(_compiled) > CACHE_SIZE:
            _compiled.popitem(last=False)
    _compiled.move_to_end(fkey)
    z = _compiled[fkey](tf.constant(z), tf.constant(shifts.astype(np.int32)),
                        tf.constant(lr, tf.float32))
    x = np.asarray(lo + (hi - lo) * tf.sigmoid(z).numpy(), np.float32)
    _cache[key] = x
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return x.copy()
