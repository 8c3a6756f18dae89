"""Tiny Keras models for pruner tests (import as ``from prunehelp import mlp``)."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _randomize_bn(model, seed: int) -> None:
    """Give every BatchNormalization non-trivial inference statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.get_weights()[0].shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n).astype(np.float32),
                    rng.uniform(-0.3, 0.3, n).astype(np.float32),
                    rng.uniform(-0.3, 0.3, n).astype(np.float32),
                    rng.uniform(0.5, 1.5, n).astype(np.float32),
                ]
            )


def mlp(
    widths: tuple[int, ...] = (12, 10, 8),
    inputs: int = 6,
    classes: int = 3,
    activation: str = "relu",
    seed: int = 0,
    functional: bool = False,
):
    """Dense stack inputs -> widths... -> classes (linear logits)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((inputs,))
    layers = [keras.layers.Dense(w, activation=activation) for w in widths]
    layers.append(keras.layers.Dense(classes))
    if not functional:
        return keras.Sequential([inp, *layers])
    x = inp
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


def convnet(seed: int = 0, functional: bool = False, size: int = 8, channels: int = 1):
    """Conv2D+BN+ReLU+MaxPool, Conv2D+BN+ReLU, Flatten, Dense(relu), Dense logits."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    layers = [
        L.Conv2D(6, 3, padding="same"),
        L.BatchNormalization(),
        L.ReLU(),
        L.MaxPooling2D(),
        L.Conv2D(5, 3, padding="valid", activation=None),
        L.BatchNormalization(),
        L.Activation("relu"),
        L.Dropout(0.2),
        L.Flatten(),
        L.Dense(7, activation="relu"),
        L.Dense(3),
    ]
    inp = keras.Input((size, size, channels))
    if functional:
        x = inp
        for layer in layers:
            x = layer(x)
        model = keras.Model(inp, x)
    else:
        model = keras.Sequential([inp, *layers])
    _randomize_bn(model, seed)
    return model


def gapnet(seed: int = 0, size: int = 8):
    """Conv2D(relu), AveragePooling2D, Conv2D+BN(relu), GlobalAveragePooling2D, Dense."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((size, size, 2)),
            L.Conv2D(6, 3, padding="same", activation="relu"),
            L.AveragePooling2D(2),
            L.Conv2D(5, 3, padding="same"),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(4),
        ]
    )
    _randomize_bn(model, seed)
    return model


def postbn_net(seed: int = 0, size: int = 8):
    """BatchNormalization after the nonlinearity: Conv2D(relu)+BN+MaxPool, Conv2D(relu,
    valid)+BN, Flatten, Dense(relu)+BN, Dense logits."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((size, size, 1)),
            L.Conv2D(5, 3, padding="same", activation="relu"),
            L.BatchNormalization(),
            L.MaxPooling2D(),
            L.Conv2D(4, 3, padding="valid", activation="relu"),
            L.BatchNormalization(),
            L.Flatten(),
            L.Dense(6, activation="relu"),
            L.BatchNormalization(),
            L.Dense(3),
        ]
    )
    _randomize_bn(model, seed)
    return model
