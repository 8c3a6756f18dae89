"""Reference architectures edge fleets run, for tests and benchmarks (untrained, seeded).

ds_cnn: the keyword-spotting DS-CNN (Zhang et al., "Hello Edge"): Conv2D, then
blocks of DepthwiseConv2D + BN + ReLU and pointwise Conv2D + BN + ReLU, global
average pooling, Dense. resnet: residual Add blocks with a projection
shortcut. mobilenet_v2 / mobilenet_v3_small: keras.applications with
``weights=None``. randomize_bn gives every BatchNormalization non-trivial
statistics, so tests exercise the folding.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def randomize_bn(model: Any, seed: int = 0) -> Any:
    """Give every BatchNormalization non-trivial inference statistics (in place)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            ws = layer.get_weights()
            n = ws[0].shape[0]
            draws = {
                "gamma": rng.uniform(0.5, 1.5, n),
                "beta": rng.uniform(-0.3, 0.3, n),
                "moving_mean": rng.uniform(-0.3, 0.3, n),
                "moving_variance": rng.uniform(0.5, 1.5, n),
            }
            names = [w.path.split("/")[-1] for w in layer.weights]
            layer.set_weights([draws[k].astype(np.float32) for k in names])
    return model


def ds_cnn(
    input_shape: tuple[int, int, int] = (49, 10, 1),
    classes: int = 12,
    filters: int = 64,
    blocks: int = 4,
    seed: int = 0,
) -> Any:
    """DS-CNN for keyword spotting on MFCC frames (49 x 10 by default)."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input(input_shape)
    x = L.Conv2D(filters, (10, 4), strides=(2, 2), padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    for i in range(blocks):
        x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        x = L.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
    x = L.Dropout(0.4)(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(classes)(x)
    return randomize_bn(keras.Model(inp, out, name="ds_cnn"), seed)


def resnet(
    input_shape: tuple[int, int, int] = (16, 16, 3),
    classes: int = 10,
    widths: tuple[int, ...] = (8, 16),
    seed: int = 0,
) -> Any:
    """A small ResNet: per stage, a block with a projection shortcut and an identity block."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input(input_shape)
    x = L.Conv2D(widths[0], 3, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    for stage, w in enumerate(widths):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = L.Conv2D(w, 3, strides=stride, padding="same", use_bias=False)(x)
            y = L.BatchNormalization()(y)
            y = L.ReLU()(y)
            y = L.Conv2D(w, 3, padding="same", use_bias=False)(y)
            y = L.BatchNormalization()(y)
            shortcut = x
            if stride != 1 or int(x.shape[-1]) != w:
                shortcut = L.Conv2D(w, 1, strides=stride, use_bias=False)(x)
                shortcut = L.BatchNormalization()(shortcut)
            x = L.ReLU()(L.Add()([y, shortcut]))
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(classes)(x)
    return randomize_bn(keras.Model(inp, out, name="resnet"), seed)


def mobilenet_v2(input_shape=(96, 96, 3), alpha: float = 0.35, classes: int = 10, seed: int = 0):
    """keras.applications MobileNetV2 without pretrained weights."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(
        input_shape=input_shape, alpha=alpha, weights=None, classes=classes,
        classifier_activation=None,
    )
    return randomize_bn(model, seed)


def mobilenet_v3_small(input_shape=(64, 64, 3), classes: int = 10, seed: int = 0, alpha=1.0):
    """keras.applications MobileNetV3Small without pretrained weights."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV3Small(
        input_shape=input_shape, alpha=alpha, weights=None, classes=classes,
        classifier_activation=None, include_preprocessing=True,
    )
    return randomize_bn(model, seed)
