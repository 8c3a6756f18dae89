"""Model size and cost: parameters and multiply-accumulates per inference."""

from __future__ import annotations

from typing import Any

import numpy as np


def count_params(model: Any) -> int:
    """All weights of the model (trainable and not)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def _layer_macs(layer: Any) -> int:
    cls = type(layer).__name__
    if cls == "Dense":
        in_shape = layer.input.shape
        positions = int(np.prod([int(d) for d in in_shape[1:-1]])) if len(in_shape) > 2 else 1
        return positions * int(in_shape[-1]) * int(layer.units)
    if cls == "Conv2D":
        out = layer.output.shape
        kh, kw = layer.kernel_size
        cin = int(layer.input.shape[-1]) // max(1, getattr(layer, "groups", 1))
        return int(out[1]) * int(out[2]) * kh * kw * cin * int(out[3])
    if cls == "DepthwiseConv2D":
        out = layer.output.shape
        kh, kw = layer.kernel_size
        return int(out[1]) * int(out[2]) * kh * kw * int(out[3])
    if cls == "Conv1D":
        out = layer.output.shape
        cin = int(layer.input.shape[-1]) // max(1, getattr(layer, "groups", 1))
        return int(out[1]) * int(layer.kernel_size[0]) * cin * int(out[2])
    if cls == "SeparableConv2D":  # depthwise at the output resolution, then pointwise
        out = layer.output.shape
        kh, kw = layer.kernel_size
        mid = int(layer.input.shape[-1]) * int(layer.depth_multiplier)
        return int(out[1]) * int(out[2]) * mid * (kh * kw + int(out[3]))
    if hasattr(layer, "layers"):
        return count_macs(layer)
    return 0


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one inference in Dense and convolution layers.

    Element-wise layers (BatchNormalization, activations, pooling) are not counted.
    """
    return int(sum(_layer_macs(layer) for layer in model.layers))


# MACs per input at which the default input counts (synthesis, random inputs) were measured:
# the digits CNNs and a 32x32 MobileNetV2-0.35 (1.2 M); a costlier model's inputs carry more
# positions each, so fewer of them give its statistics
REFERENCE_MACS = 1.5e6


def scaled_count(n: int, macs: int, floor: int) -> int:
    """``n`` inputs for a model of ``macs`` per input: n up to REFERENCE_MACS, scaled down by
    REFERENCE_MACS / macs beyond (never under ``floor``, never over n), so the time spent on
    them stops growing with the model's cost."""
    if macs <= REFERENCE_MACS:
        return n
    return min(n, max(floor, round(n * REFERENCE_MACS / macs)))
