"""Input boxes and sound interval bound propagation (IBP) through a PruneGraph's ops.

Two modes share one walk over the ops:

* values: bounds [lo, hi] of every activation for all inputs in the box
  (affine maps in centre-radius form, W c + b -/+ |W| r, which equals the
  W+ / W- split: lo' = W+ lo + W- hi + b; monotone maps apply to both ends);
* deviations: bounds of the change of every activation when a consumer's
  pre-activation changes by an interval (no biases; a monotone activation
  with Lipschitz constant L maps [d_lo, d_hi] into L*[min(0, d_lo), max(0, d_hi)]).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import ConfigError
from pruner.graph import Op, PruneGraph


class InputBox:
    """Per-feature input range [lo, hi]; scalars or arrays that broadcast to one input."""

    def __init__(self, lo: Any = 0.0, hi: Any = 1.0) -> None:
        lo_a = np.asarray(lo, dtype=np.float64)
        hi_a = np.asarray(hi, dtype=np.float64)
        try:
            np.broadcast_shapes(lo_a.shape, hi_a.shape)
        except ValueError as exc:
            raise ConfigError(
                f"input box lo {lo_a.shape} and hi {hi_a.shape} must broadcast"
            ) from exc
        if not (np.all(np.isfinite(lo_a)) and np.all(np.isfinite(hi_a))):
            raise ConfigError("input box bounds must be finite")
        if np.any(lo_a > hi_a):
            raise ConfigError("input box needs lo <= hi for every feature")
        self.lo: float | np.ndarray = float(lo_a) if lo_a.ndim == 0 else lo_a
        self.hi: float | np.ndarray = float(hi_a) if hi_a.ndim == 0 else hi_a

    def arrays(self, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) broadcast to one input of ``input_shape``."""
        try:
            lo = np.broadcast_to(np.asarray(self.lo, np.float64), input_shape)
            hi = np.broadcast_to(np.asarray(self.hi, np.float64), input_shape)
        except ValueError as exc:
            raise ConfigError(f"input box does not fit the input shape {input_shape}") from exc
        return lo.copy(), hi.copy()

    def get_config(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            return np.asarray(v).tolist() if np.ndim(v) else float(v)

        return {"lo": plain(self.lo), "hi": plain(self.hi)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InputBox:
        return cls(**config)

    def __repr__(self) -> str:
        return f"InputBox(lo={self.get_config()['lo']!r}, hi={self.get_config()['hi']!r})"


# --- one op, both modes ---------------------------------------------------------------


def _call(layer: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(layer(x.astype(np.float32), training=False), dtype=x.dtype)


def conv2d(layer: Any, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``layer``'s convolution (strides, padding, dilation) of x [N, H, W, C] with kernel."""
    import tensorflow as tf

    y = tf.nn.conv2d(
        x.astype(np.float32),
        kernel.astype(np.float32),
        strides=(1, *layer.strides, 1),
        padding=layer.padding.upper(),
        dilations=(1, *layer.dilation_rate, 1),
    )
    return y.numpy().astype(x.dtype)


def _affine(op: Op, center: np.ndarray, radius: np.ndarray, bias: bool) -> tuple:
    """W center (+ b) and |W| radius: the interval image of center +- radius."""
    arrays = op.arrays()
    layer = op.layer
    wide = center.dtype == np.float64
    kernel = arrays["kernel"] if wide else arrays["kernel32"]
    abs_kernel = arrays["abs_kernel"] if wide else arrays["abs_kernel32"]
    if type(layer).__name__ == "Dense":
        c = center @ kernel
        r = radius @ abs_kernel
    else:
        c = conv2d(layer, center, kernel)
        r = conv2d(layer, radius, abs_kernel)
    if bias:
        c = c + arrays["bias"]
    return c, np.maximum(r, 0.0)


def step_values(op: Op, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of op(x) for x in [lo, hi] (batched on the first axis)."""
    if op.kind == "affine":
        c, r = _affine(op, (lo + hi) / 2, (hi - lo) / 2, bias=True)
        return c - r, c + r
    if op.kind == "bn":
        scale, shift = op.arrays()["scale"], op.arrays()["shift"]
        a, b = scale * lo + shift, scale * hi + shift
        return np.minimum(a, b), np.maximum(a, b)
    if (
        op.kind == "act"
        and op.layer is not None
        and type(op.layer).__name__
        in (
            "Dense",
            "Conv2D",
        )
    ):
        fn = op.layer.activation
        return (
            np.asarray(fn(lo.astype(np.float32)), lo.dtype),
            np.asarray(fn(hi.astype(np.float32)), hi.dtype),
        )
    if op.kind in ("act", "linear", "max"):
        return _call(op.layer, lo), _call(op.layer, hi)
    if op.kind == "pre":  # elementwise monotone in either direction, or a reshape
        a, b = _call(op.layer, lo), _call(op.layer, hi)
        return np.minimum(a, b), np.maximum(a, b)
    return lo, hi  # output_act: not propagated


def _min_pool(layer: Any, x: np.ndarray) -> np.ndarray:
    return -_call(layer, -x)


def step_deviation(op: Op, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of the change of op's output when its input changes by [lo, hi]."""
    if op.kind == "affine":
        c, r = _affine(op, (lo + hi) / 2, (hi - lo) / 2, bias=False)
        return c - r, c + r
    if op.kind == "bn":
        scale = op.arrays()["scale"].astype(lo.dtype)
        a, b = scale * lo, scale * hi
        return np.minimum(a, b), np.maximum(a, b)
    if op.kind == "act":
        if op.activation == "linear":
            return lo, hi
        return op.lipschitz * np.minimum(lo, 0.0), op.lipschitz * np.maximum(hi, 0.0)
    if op.kind == "linear":
        return _call(op.layer, lo), _call(op.layer, hi)
    if op.kind == "max":
        return _min_pool(op.layer, lo), _call(op.layer, hi)
    return lo, hi


# --- whole network ---------------------------------------------------------------------


def interval_bounds(graph: PruneGraph, box: InputBox) -> list[tuple[np.ndarray, np.ndarray]]:
    """bounds[i] = (lo, hi) of the INPUT of ops[i] (one sample, no batch axis); the last
    entry is the output of the final op. Sound for every input inside ``box``."""
    lo, hi = box.arrays(graph.input_shape)
    lo, hi = lo[None], hi[None]
    out = [(lo[0], hi[0])]
    for op in graph.ops:
        lo, hi = step_values(op, lo, hi)
        out.append((lo[0], hi[0]))
    return out


def propagate_deviation(
    graph: PruneGraph, start: int, lo: np.ndarray, hi: np.ndarray, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Carry a batch of deviation intervals at the input of ops[start] to the output
    layer's pre-activation (the logits). Returns ([m, n_out], [m, n_out])."""
    outs_lo, outs_hi = [], []
    for i in range(0, len(lo), batch):
        dlo, dhi = lo[i : i + batch], hi[i : i + batch]
        for op in graph.ops[start : graph.output_op + 1]:
            dlo, dhi = step_deviation(op, dlo, dhi)
        outs_lo.append(dlo.reshape(len(dlo), -1))
        outs_hi.append(dhi.reshape(len(dhi), -1))
    return np.concatenate(outs_lo), np.concatenate(outs_hi)


# --- bounds on a DAG ----------------------------------------------------------------


def _linear_map(
    layer: Any, params: str, x: np.ndarray, absolute: bool, weights: list | None = None
) -> np.ndarray:
    """The linear part of a producer or depthwise layer applied to x (|weights| if
    ``absolute``), without bias; ``weights``: its arrays (default: the layer's own)."""
    import tensorflow as tf

    w = [np.abs(a) if absolute else a for a in (weights or layer.get_weights())]
    x32 = tf.constant(x.astype(np.float32))
    if params == "dense":
        return x @ w[0].astype(x.dtype)
    rank = len(layer.kernel_size)
    strides = tuple(layer.strides)
    dilations = tuple(layer.dilation_rate)
    padding = layer.padding.upper()
    if padding == "CAUSAL":
        raise ConfigError(f"layer {layer.name!r}: causal padding has no interval bounds")
    if params == "conv":
        y = tf.nn.convolution(x32, w[0], strides=strides, padding=padding, dilations=dilations)
        return y.numpy().astype(x.dtype)
    depth = w[0] if rank == 2 else None
    y = tf.nn.depthwise_conv2d(
        x32, depth, strides=(1, *strides, 1), padding=padding, dilations=dilations
    )
    if params == "separable":
        y = tf.nn.conv2d(y, w[1], strides=1, padding="VALID")
    return y.numpy().astype(x.dtype)


def activation_bounds(name: str | None, fn: Any, lo: np.ndarray, hi: np.ndarray) -> tuple:
    """Sound bounds of fn(x) for x in [lo, hi] (monotone, dipping or softmax)."""
    from pruner.handlers import DIPPING, MONOTONE

    if name in (None, "linear"):
        return lo, hi
    if name == "softmax":
        return np.zeros_like(lo), np.ones_like(hi)
    if name not in MONOTONE and name not in DIPPING:
        raise ConfigError(f"activation {name!r} has no interval bounds")

    def f(v: np.ndarray) -> np.ndarray:
        return np.asarray(fn(v.astype(np.float32)), np.float64).astype(v.dtype)

    a, b = f(lo), f(hi)
    if name in MONOTONE:
        return a, b
    x_min = DIPPING[name]
    f_min = f(np.full((1,), x_min, lo.dtype))[0]
    straddle = (lo < x_min) & (hi > x_min)
    return np.where(straddle, f_min, np.minimum(a, b)), np.maximum(a, b)


def _merge_bounds(key: str, ins: list[tuple[np.ndarray, np.ndarray]]) -> tuple:
    lo, hi = ins[0]
    for lo2, hi2 in ins[1:]:
        if key in ("Add", "op:add", "Average"):
            lo, hi = lo + lo2, hi + hi2
        elif key in ("Subtract", "op:subtract"):
            lo, hi = lo - hi2, hi - lo2
        elif key in ("Multiply", "op:multiply"):  # the product of two intervals
            p = np.stack(np.broadcast_arrays(lo * lo2, lo * hi2, hi * lo2, hi * hi2))
            lo, hi = p.min(axis=0), p.max(axis=0)
        elif key == "Maximum":
            lo, hi = np.maximum(lo, lo2), np.maximum(hi, hi2)
        elif key == "Minimum":
            lo, hi = np.minimum(lo, lo2), np.minimum(hi, hi2)
        else:
            raise ConfigError(f"{key} of two tensors has no interval bounds")
    if key == "Average":
        lo, hi = lo / len(ins), hi / len(ins)
    return lo, hi


def _call_node(node: Any, values: list[np.ndarray]) -> np.ndarray:
    """Run a node's op on concrete inputs (constants such as ``x + 3.0`` kept)."""
    if node.call is None or len(node.call.arguments.keras_tensors) != len(values):
        arg = values[0] if len(values) == 1 else [v.astype(np.float32) for v in values]
        if len(values) == 1:
            arg = arg.astype(np.float32)
        out = node.op(arg, training=False) if _takes_training(node.op) else node.op(arg)
        return np.asarray(out, np.float64)
    tensors = {
        id(t): v.astype(np.float32)
        for t, v in zip(node.call.arguments.keras_tensors, values, strict=True)
    }
    args, kwargs = node.call.arguments.fill_in(tensors)
    return np.asarray(node.op(*args, **kwargs), np.float64)


def _takes_training(op: Any) -> bool:
    import keras

    return isinstance(op, keras.layers.Layer)


def node_bounds(
    node: Any, ins: list[tuple[np.ndarray, np.ndarray]], store: Any = None
) -> tuple:
    """Sound bounds of one DAG node's output from its inputs' bounds (batched);
    ``store`` maps a layer to its weights (default: the layer's own)."""
    from pruner.handlers import activation_of

    kind, params, op = node.handler.kind, node.handler.params, node.op
    weights = store(op) if store is not None and params else None
    if kind == "producer" or params == "depthwise":
        lo, hi = ins[0]
        c = _linear_map(op, params, (lo + hi) / 2, False, weights)
        r = _linear_map(op, params, (hi - lo) / 2, True, weights)
        if getattr(op, "use_bias", False):
            c = c + (weights or op.get_weights())[-1]
        return activation_bounds(activation_of(op), op.activation, c - r, c + r)
    if params == "bn":
        from pruner.handlers import bn_affine

        scale, shift = bn_affine(op, weights)
        a, b = scale * ins[0][0] + shift, scale * ins[0][1] + shift
        return np.minimum(a, b), np.maximum(a, b)
    if kind == "merge" and len(ins) > 1:
        return _merge_bounds(node.key, ins)
    act = activation_of(op)
    if act is not None and kind == "same":
        fn = op.activation if hasattr(op, "activation") else (lambda v: _call_node(node, [v]))
        if type(op).__name__ in ("ReLU", "LeakyReLU", "ELU", "Softmax") or act.startswith("op:"):
            fn = lambda v: _call_node(node, [v])  # noqa: E731
        return activation_bounds(act, fn, *ins[0])
    keeps_channels = node.key == "Reshape" and -1 not in tuple(op.target_shape)[:-1]
    if keeps_channels and int(op.output.shape[-1]) == int(op.input.shape[-1]):
        target = (len(ins[0][0]), *op.target_shape[:-1], -1)  # channels may be pruned
        return ins[0][0].reshape(target), ins[0][1].reshape(target)
    # positive linear maps, max pooling, reshapes, concatenation and x + c, x * c: monotone
    # in each input, increasing or decreasing
    a = _call_node(node, [lo for lo, _ in ins])
    b = _call_node(node, [hi for _, hi in ins])
    return np.minimum(a, b), np.maximum(a, b)


def dag_interval_bounds(graph: Any, box: InputBox) -> list[tuple[np.ndarray, np.ndarray]]:
    """bounds[i] = (lo, hi) of the output of graph.nodes[i] (one sample, no batch axis),
    sound for every input inside ``box``: affine maps in centre-radius form, sums at
    Add, interval products at Multiply, monotone and dipping activations exactly. The
    weights are the graph's (``graph.store``: arrays after ``surgery.advance``)."""
    lo, hi = box.arrays(graph.input_shape)
    out: list[tuple[np.ndarray, np.ndarray]] = [(lo[None], hi[None])]
    store = getattr(graph, "store", None)
    for node in graph.nodes[1:]:
        out.append(node_bounds(node, [out[p] for p in node.parents], store))
    return [(lo[0], hi[0]) for lo, hi in out]
