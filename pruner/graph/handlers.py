"""The handler table: how each layer type couples channels and how its weights slice.

Keyed by layer class name (Keras ops such as ``x + 3.0`` are keyed
``op:<name>``). A handler's ``kind`` says what the layer does to the channel
(last) axis:

producer   makes new channels (Dense, Conv1D, Conv2D, SeparableConv2D): its
           output channels are a prunable space, its input channels are read
           through the kernel (``in`` rows)
same       output channel c is input channel c (BatchNormalization,
           DepthwiseConv2D, activations, pooling, padding, dropout, ...)
merge      elementwise over several tensors (Add, Multiply, ...): the inputs'
           channels are coupled into one space
concat     Concatenate: the output's channels are the inputs' channels in turn
flatten    Flatten: channel c of position p lands at p * C + c
reshape    Reshape: kept when the channel axis survives, else its channels freeze
freeze     per-channel state the pruner does not slice (Normalization): the
           channels it touches are never pruned

``params`` names how the layer's own weights slice (see surgery).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import UnsupportedLayerError


@dataclass(frozen=True)
class Handler:
    kind: str
    params: str = ""  # "", "dense", "conv", "separable", "depthwise", "bn"


_SAME = (
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softmax",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "Cropping1D",
    "Cropping2D",
    "UpSampling1D",
    "UpSampling2D",
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "Rescaling",
)
_MERGE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

HANDLERS: dict[str, Handler] = {
    "Dense": Handler("producer", "dense"),
    "Conv1D": Handler("producer", "conv"),
    "Conv2D": Handler("producer", "conv"),
    "SeparableConv2D": Handler("producer", "separable"),
    "DepthwiseConv2D": Handler("same", "depthwise"),
    "BatchNormalization": Handler("same", "bn"),
    "Concatenate": Handler("concat"),
    "Flatten": Handler("flatten"),
    "Reshape": Handler("reshape"),
    "Permute": Handler("reshape"),
    "Normalization": Handler("freeze"),
    **{name: Handler("same") for name in _SAME},
    **{name: Handler("merge") for name in _MERGE},
    # Keras ops on tensors (e.g. ``x + 3.0`` in MobileNetV3's hard sigmoid)
    **{f"op:{n}": Handler("merge") for n in ("add", "subtract", "multiply", "divide")},
    **{f"op:{n}": Handler("same") for n in ("relu", "relu6", "sigmoid", "hard_sigmoid")},
}

# activation name -> None for monotone non-decreasing, or the argmin of a function that
# falls then rises (bounds need the minimum when the interval straddles it).
MONOTONE = (
    "linear",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "sigmoid",
    "hard_sigmoid",
    "tanh",
    "hard_tanh",
    "softplus",
    "softsign",
)
DIPPING = {"silu": -1.2784645, "swish": -1.2784645, "hard_silu": -1.5, "hard_swish": -1.5,
           "gelu": -0.7517916, "mish": -1.1923}
HOMOGENEOUS = ("linear", "relu", "leaky_relu")
# Lipschitz constants of the monotone activations that exceed 1 or fall under it (others: 1)
LIPSCHITZ = {"selu": 1.7581, "sigmoid": 0.25}


def op_key(op: Any) -> str:
    """The handler-table key of a layer or Keras operation."""
    import keras

    if isinstance(op, keras.layers.Layer):
        return type(op).__name__
    return "op:" + getattr(op, "name", type(op).__name__).rstrip("_0123456789")


def handler(op: Any) -> Handler:
    """The handler of ``op``; UnsupportedLayerError names a layer no handler covers."""
    key = op_key(op)
    found = HANDLERS.get(key)
    if found is None:
        if hasattr(op, "layers"):
            why = "nested models cannot be pruned; flatten the model first"
        else:
            why = "the pruner cannot remove channels through this layer"
        raise UnsupportedLayerError(
            f"layer {op.name!r} ({type(op).__name__}) is not supported: {why}"
        )
    return found


def activation_of(op: Any) -> str | None:
    """The elementwise function a 'same' layer applies, by name (None: not an activation)."""
    cls = type(op).__name__
    if cls == "ReLU":
        if float(op.negative_slope) != 0.0:
            return "leaky_relu"
        if op.max_value is not None or float(op.threshold) != 0.0:
            return "relu6"  # bounded / shifted relu: monotone, not homogeneous
        return "relu"
    if cls == "LeakyReLU":
        return "leaky_relu"
    if cls == "ELU":
        return "elu"
    if cls == "Softmax":
        return "softmax"
    if cls in ("Activation", "Dense", "Conv1D", "Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
        fn = op.activation
        name = getattr(fn, "__name__", None) or type(fn).__name__
        return {"leakyrelu": "leaky_relu", "swish": "silu", "hard_swish": "hard_silu"}.get(
            name, name
        )
    if op_key(op).startswith("op:") and handler(op).kind == "same":
        return op_key(op)[3:]
    return None


def bn_affine(bn: Any, weights: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode BatchNormalization as y = scale * x + shift (per channel);
    ``weights``: its weight arrays (default: the layer's own)."""
    names = [w.path.split("/")[-1] for w in bn.weights]
    values = dict(zip(names, bn.get_weights() if weights is None else weights, strict=True))
    n = values["moving_mean"].shape[0]
    gamma = values.get("gamma", np.ones(n, np.float32))
    beta = values.get("beta", np.zeros(n, np.float32))
    scale = gamma / np.sqrt(values["moving_variance"] + bn.epsilon)
    shift = beta - values["moving_mean"] * scale
    return scale.astype(np.float64), shift.astype(np.float64)
