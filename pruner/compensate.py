"""Data-free compensation after removal: consumer bias correction on synthesised inputs.

Removing a unit takes away its whole output, mean included. A ReLU unit's
mean is positive, and behind a BatchNormalization after the activation it is
the BN's beta: removing such units shifts every consumer's pre-activation by
a constant, which is what made plain removal (and merges that only match the
weights) collapse CNNs. Correcting each consumer's bias by the mean change of
its pre-activation, measured against the original model on synthesised
inputs, removes that shift (the bias correction of Nagel et al. 2019, here
for pruning). Consumers are corrected front to back, so each correction sees
the earlier ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruner.bounds import conv2d

BATCH = 256


def layer_inputs(model: Any, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The input tensor of each named layer on x (its shape kept)."""
    import keras

    layers = [model.get_layer(n) for n in names]
    probe = keras.Model(model.inputs[0], [lay.input for lay in layers])
    outs = [probe(x[i : i + BATCH], training=False) for i in range(0, len(x), BATCH)]
    if len(layers) == 1:
        outs = [[o] for o in outs]
    return {
        n: np.concatenate([np.asarray(o[j]) for o in outs]) for j, n in enumerate(names)
    }


def consumer_inputs(model: Any, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each named layer's input on x as [rows, channels] (positions become rows)."""
    return {n: v.reshape(-1, v.shape[-1]) for n, v in layer_inputs(model, names, x).items()}


def preactivation(layer: Any, inp: np.ndarray) -> np.ndarray:
    """A Dense or Conv2D layer's output before its activation."""
    weights = layer.get_weights()
    kernel = weights[0]
    out = inp @ kernel if type(layer).__name__ == "Dense" else conv2d(layer, inp, kernel)
    return out + weights[1] if layer.use_bias else out


def _target(original: Any, name: str, ref: dict, kept: dict) -> np.ndarray:
    """The original layer's pre-activation, on the output channels the pruned one kept."""
    target = preactivation(original.get_layer(name), ref[name])
    return target[..., kept[name]] if name in kept else target


def correct_biases(
    original: Any,
    pruned: Any,
    x: np.ndarray,
    names: list[str],
    kept: dict[str, np.ndarray] | None = None,
) -> Any:
    """Shift the bias of each named consumer of ``pruned`` (in place, front to back) so its
    mean pre-activation on x equals the original model's; returns ``pruned``.

    ``kept[name]`` lists the original output channels a pruned layer still has
    (a consumer is often the producer of the next group).
    """
    kept = kept or {}
    names = [n for n in names if pruned.get_layer(n).use_bias]
    if not names:
        return pruned
    ref = layer_inputs(original, names, x)
    for name in names:
        layer = pruned.get_layer(name)
        target = _target(original, name, ref, kept)
        now = preactivation(layer, layer_inputs(pruned, [name], x)[name])
        delta = (target - now).reshape(-1, target.shape[-1]).mean(axis=0)
        kernel, bias = layer.get_weights()[:2]
        layer.set_weights([kernel, (bias + delta).astype(bias.dtype)])
    return pruned


def patches(layer: Any, inp: np.ndarray) -> np.ndarray:
    """The rows a layer's kernel multiplies: inputs (Dense) or im2col patches (Conv2D),
    shape [rows, fan_in] in the order of ``kernel.reshape(fan_in, -1)``."""
    if type(layer).__name__ == "Dense":
        return inp.reshape(-1, inp.shape[-1])
    import tensorflow as tf

    kh, kw = layer.kernel_size
    out = tf.image.extract_patches(
        inp.astype(np.float32),
        sizes=(1, kh, kw, 1),
        strides=(1, *layer.strides, 1),
        rates=(1, *layer.dilation_rate, 1),
        padding=layer.padding.upper(),
    ).numpy()
    return out.reshape(-1, out.shape[-1])


def ridge_fit(a: np.ndarray, z: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    """argmin_w |a w - z|^2 / rows + lam |w - w0|^2, lam = ridge x the mean diagonal of
    a's Gram matrix: a least-squares refit pulled towards the current weights w0."""
    gram = (a.T @ a).astype(np.float64) / len(a)  # products in a's dtype, the solve in float64
    rhs = (a.T @ z.astype(a.dtype)).astype(np.float64) / len(a)
    lam = ridge * float(np.trace(gram)) / gram.shape[0]
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), rhs + lam * w0)


def reconstruct(
    original: Any,
    pruned: Any,
    x: np.ndarray,
    names: list[str],
    kept: dict[str, np.ndarray] | None = None,
    ridge: float = 1e-2,
) -> Any:
    """Refit each named consumer of ``pruned`` (in place, front to back) by ridge least
    squares so its pre-activation on x matches the original's; returns ``pruned``.

    The ridge pulls towards the consumer's current (merged) weights, scaled by
    the mean squared input, so few inputs cannot move the weights far.
    """
    kept = kept or {}
    ref = layer_inputs(original, names, x)
    for name in names:
        layer = pruned.get_layer(name)
        target = _target(original, name, ref, kept)
        weights = layer.get_weights()
        kernel = weights[0]
        fan_in, k = int(np.prod(kernel.shape[:-1])), kernel.shape[-1]
        a = patches(layer, layer_inputs(pruned, [name], x)[name]).astype(np.float64)
        z = target.reshape(-1, k).astype(np.float64)
        w0 = kernel.reshape(fan_in, k).astype(np.float64)
        if layer.use_bias:
            a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
            w0 = np.concatenate([w0, weights[1][None, :].astype(np.float64)], axis=0)
        w = ridge_fit(a, z, w0, ridge)
        new = [w[:fan_in].reshape(kernel.shape).astype(kernel.dtype)]
        if layer.use_bias:
            new.append(w[fan_in].astype(weights[1].dtype))
        layer.set_weights(new + weights[len(new) :])
    return pruned
