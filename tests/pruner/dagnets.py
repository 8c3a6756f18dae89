"""Small DAG models, one per coupled-channel pattern, for pruner tests."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from pruner import zoo  # noqa: E402

L = keras.layers


def _bn_relu(x):
    return L.ReLU()(L.BatchNormalization()(x))


def add_net():
    """Two residual Adds (identity and projection) and a post-Add BatchNormalization."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 3))
    x = _bn_relu(L.Conv2D(6, 3, padding="same")(inp))
    y = L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(x))
    x = L.ReLU()(L.Add()([x, y]))
    y = L.Conv2D(5, 3, strides=2, padding="same")(x)
    s = L.Conv2D(5, 1, strides=2)(x)
    x = L.BatchNormalization()(L.Add()([y, s]))
    x = L.GlobalAveragePooling2D()(L.ReLU()(x))
    return zoo.randomize_bn(keras.Model(inp, L.Dense(3)(x)), 1)


def concat_net():
    """Two branches concatenated, then BatchNormalization, Conv2D, Flatten, Dense."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 2))
    a = _bn_relu(L.Conv2D(4, 3, padding="same")(inp))
    b = L.Conv2D(5, 1, activation="relu")(inp)
    x = L.BatchNormalization()(L.Concatenate()([a, b]))
    x = L.Conv2D(6, 3, activation="relu")(x)
    c = L.Concatenate()([L.MaxPooling2D()(x), L.AveragePooling2D(2)(x)])
    return zoo.randomize_bn(keras.Model(inp, L.Dense(3)(L.Flatten()(c))), 2)


def se_net():
    """Squeeze-and-excitation: Multiply couples the gate's filters with the feature map."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    x = _bn_relu(L.Conv2D(8, 3, padding="same")(inp))
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu")(s)
    s = L.Conv2D(8, 1, activation="hard_sigmoid")(s)
    x = L.Multiply()([x, s])
    x = L.Activation("hard_swish")(L.Conv2D(6, 1)(x))
    r = L.Reshape((1, 1, 6))(L.GlobalAveragePooling2D()(x))
    g = L.Dense(6, activation="sigmoid")(L.Flatten()(r))
    x = L.Multiply()([L.GlobalAveragePooling2D()(x), g])
    return zoo.randomize_bn(keras.Model(inp, L.Dense(3)(x)), 3)


def depthwise_net():
    """ZeroPadding + DepthwiseConv2D (same channels in and out) between pointwise convs."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 2))
    x = L.Rescaling(1 / 255.0)(inp)
    x = _bn_relu(L.Conv2D(6, 1)(x))
    x = L.DepthwiseConv2D(3, strides=2)(L.ZeroPadding2D()(x))
    x = L.ReLU(6.0)(L.BatchNormalization()(x))
    x = _bn_relu(L.Conv2D(7, 1, use_bias=False)(x))
    x = L.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = L.Dropout(0.3)(L.GlobalMaxPooling2D()(x))
    return zoo.randomize_bn(keras.Model(inp, L.Dense(3)(x)), 4)


def separable_net():
    """SeparableConv2D reading and producing channels; a Conv1D branch on a reshape."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 2))
    x = _bn_relu(L.SeparableConv2D(6, 3, padding="same")(inp))
    x = L.SeparableConv2D(5, 3, activation="relu")(x)
    x = L.Reshape((36, 5))(x)
    x = L.Conv1D(4, 3, activation="elu")(x)
    x = L.Flatten()(L.MaxPooling1D()(L.ZeroPadding1D(1)(x)))
    return zoo.randomize_bn(keras.Model(inp, L.Dense(3)(x)), 5)


def sequential_net():
    """A Sequential model with BatchNormalization after the activation and a depthwise."""
    keras.utils.set_random_seed(6)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(6, 3, activation="relu"),
        L.BatchNormalization(),
        L.DepthwiseConv2D(3),
        L.Activation("swish"),
        L.Conv2D(5, 1),
        L.BatchNormalization(),
        L.ReLU(),
        L.GlobalAveragePooling2D(),
        L.Dense(3),
    ])
    return zoo.randomize_bn(model, 6)


PATTERNS = {
    "add": add_net,
    "concatenate": concat_net,
    "multiply_se": se_net,
    "depthwise": depthwise_net,
    "separable": separable_net,
    "sequential": sequential_net,
}
