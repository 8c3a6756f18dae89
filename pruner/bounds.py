"""Input boxes and sound interval bounds, node by node through the model's graph.

Two walks over ``graph.nodes``:

* values (``interval_bounds``): bounds [lo, hi] of every node's output for all
  inputs in the box (affine maps in centre-radius form, W c + b -/+ |W| r, which
  equals the W+ / W- split; sums at Add, interval products at Multiply; monotone
  and dipping activations exactly);
* deviations (``deviation``): bounds of the change of the logits when one
  group's channel is removed or merged (no biases; a monotone activation with
  Lipschitz constant L maps [d_lo, d_hi] into L*[min(0, d_lo), max(0, d_hi)]).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import ConfigError


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


def _call(layer: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(layer(x.astype(np.float32), training=False), dtype=x.dtype)


def _min_pool(layer: Any, x: np.ndarray) -> np.ndarray:
    return -_call(layer, -x)


# --- values, node by node ---------------------------------------------------------


def _linear_map(
    layer: Any, params: str, x: np.ndarray, absolute: bool, weights: list | None = None
) -> np.ndarray:
    """The linear part of a producer or depthwise layer applied to x (|weights| if
    ``absolute``), without bias; ``weights``: its arrays (default: the layer's own)."""
    import tensorflow as tf

    count = 2 if params == "separable" else 1  # the kernels; a bias is not read here
    w = [np.abs(a) if absolute else a for a in (weights or layer.get_weights())[:count]]
    if params == "dense":
        return x @ w[0].astype(x.dtype, copy=False)
    x32 = tf.constant(x.astype(np.float32))
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
    from pruner.graph.handlers import DIPPING, MONOTONE

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
    """Sound bounds of one node's output from its inputs' bounds (batched);
    ``store`` maps a layer to its weights (default: the layer's own)."""
    from pruner.graph.handlers import activation_of

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
        from pruner.graph.handlers import bn_affine

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


def interval_bounds(graph: Any, box: InputBox) -> list[tuple[np.ndarray, np.ndarray]]:
    """bounds[i] = (lo, hi) of the output of graph.nodes[i] (one sample, no batch axis),
    sound for every input inside ``box``: affine maps in centre-radius form, sums at
    Add, interval products at Multiply, monotone and dipping activations exactly. The
    weights are the graph's (``graph.store``: arrays after ``surgery.advance``)."""
    lo, hi = box.arrays(graph.input_shape)
    out: list[tuple[np.ndarray, np.ndarray]] = [(lo[None], hi[None])]
    store = graph.store
    for node in graph.nodes[1:]:
        out.append(node_bounds(node, [out[p] for p in node.parents], store))
    return [(lo[0], hi[0]) for lo, hi in out]


# --- deviations, node by node ------------------------------------------------------

# Lipschitz constants of the activations that dip (max |f'|): bounds |f(x+d) - f(x)| <= L|d|
_DIPPING_LIPSCHITZ = {"silu": 1.1, "swish": 1.1, "hard_silu": 1.5, "hard_swish": 1.5,
                      "gelu": 1.13, "mish": 1.09}


def _activation_deviation(
    name: str | None, lo: np.ndarray, hi: np.ndarray, fn: Any = None, value: Any = None
) -> tuple:
    """Sound bounds of f(x + d) - f(x) for d in [lo, hi]: a monotone f with Lipschitz
    constant L gives L*[min(0, lo), max(0, hi)], one that dips L*[-|d|, |d|]. Given f
    (``fn``) and x's bounds (``value``), a monotone f's change also lies in
    [f(x_lo + min(0, lo)) - f(x_hi), f(x_hi + max(0, hi)) - f(x_lo)] (zero where a
    ReLU stays off)."""
    from pruner.graph.handlers import LIPSCHITZ, MONOTONE

    if name in (None, "linear"):
        return lo, hi
    if name == "softmax":  # outputs in [0, 1]
        return np.full_like(lo, -1.0), np.full_like(hi, 1.0)
    if name in _DIPPING_LIPSCHITZ:
        mag = _DIPPING_LIPSCHITZ[name] * np.maximum(np.abs(lo), np.abs(hi))
        return -mag, mag
    if name not in MONOTONE:
        raise ConfigError(f"activation {name!r} has no deviation bounds")
    lip = LIPSCHITZ.get(name, 1.0)
    d_lo, d_hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    out_lo, out_hi = lip * d_lo, lip * d_hi
    if fn is not None and value is not None:
        x_lo, x_hi = value[0][None], value[1][None]  # one sample: broadcast over the batch
        out_lo = np.maximum(out_lo, fn(x_lo + d_lo) - fn(x_hi))
        out_hi = np.minimum(out_hi, fn(x_hi + d_hi) - fn(x_lo))
    return out_lo, out_hi


def _product(alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray) -> tuple:
    p = np.stack(np.broadcast_arrays(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
    return p.min(axis=0), p.max(axis=0)


def node_deviation(
    node: Any, devs: list[tuple[np.ndarray, np.ndarray]], values: list[tuple], store: Any,
    output: bool = False, slot: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of the change of one node's output (batched on the first axis) when
    its inputs change by ``devs``; ``values``: its inputs' value bounds (one sample).
    Linear maps take W c -/+ |W| r without bias, Add sums, Multiply expands
    (x + dx)(y + dy) - xy over the value bounds, max and min pooling take the ends,
    activations their Lipschitz bound; ``output``: the logits, no softmax. ``slot``: a
    Dense whose input changes in column slot[i] of row i alone (the same sums, exactly)."""
    from pruner.graph.handlers import activation_of, bn_affine

    kind, params, op = node.handler.kind, node.handler.params, node.op
    if kind == "producer" or params == "depthwise":
        (lo, hi), weights = devs[0], store(op)
        if slot is not None:  # one nonzero input per row: its kernel row, not a product
            w = weights[0][slot].astype(lo.dtype)
            lo, hi = lo[np.arange(len(slot)), slot][:, None], hi[np.arange(len(slot)), slot][:, None]
            c, r = (lo + hi) / 2 * w, (hi - lo) / 2 * np.abs(w)
        else:
            c = _linear_map(op, params, (lo + hi) / 2, False, weights)
            r = _linear_map(op, params, (hi - lo) / 2, True, weights)
        act = activation_of(op)
        if output and act == "softmax":
            act = None
        return _activation_deviation(act, c - r, c + r)
    if params == "bn":
        scale = bn_affine(op, store(op))[0]
        a, b = scale * devs[0][0], scale * devs[0][1]
        return np.minimum(a, b), np.maximum(a, b)
    key = node.key
    if kind == "merge" and len(devs) > 1:
        if key in ("Add", "op:add", "Average", "Subtract", "op:subtract"):
            lo, hi = devs[0]
            for lo2, hi2 in devs[1:]:
                if key in ("Subtract", "op:subtract"):
                    lo, hi = lo - hi2, hi - lo2
                else:
                    lo, hi = lo + lo2, hi + hi2
            if key == "Average":
                lo, hi = lo / len(devs), hi / len(devs)
            return lo, hi
        if key in ("Multiply", "op:multiply"):
            (dxl, dxh), (xl, xh) = devs[0], values[0]
            for (dyl, dyh), (yl, yh) in zip(devs[1:], values[1:], strict=True):
                terms = [_product(xl, xh, dyl, dyh), _product(yl, yh, dxl, dxh),
                         _product(dxl, dxh, dyl, dyh)]
                dxl = sum(t[0] for t in terms)
                dxh = sum(t[1] for t in terms)
                xl, xh = _product(xl, xh, yl, yh)
            return dxl, dxh
        if key in ("Maximum", "Minimum"):  # 1-Lipschitz and monotone in every input
            return (np.minimum.reduce([d[0] for d in devs]),
                    np.maximum.reduce([d[1] for d in devs]))
        raise ConfigError(f"{key} of two tensors has no deviation bounds")
    act = activation_of(op)
    if act is not None and kind == "same":
        name = None if output and act == "softmax" else act
        return _activation_deviation(name, *devs[0], lambda v: _call_node(node, [v]), values[0])
    if "MaxPooling" in key:
        return _min_pool(op, devs[0][0]), _call(op, devs[0][1])
    keeps_channels = key == "Reshape" and -1 not in tuple(op.target_shape)[:-1]
    if keeps_channels and int(op.output.shape[-1]) == int(op.input.shape[-1]):
        target = (len(devs[0][0]), *op.target_shape[:-1], -1)
        return devs[0][0].reshape(target), devs[0][1].reshape(target)
    # positive (or sign-consistent) affine maps and concatenation: f(d) - f(0) at both ends
    zero = _call_node(node, [np.zeros_like(d[0]) for d in devs])
    a = _call_node(node, [d[0] for d in devs]) - zero
    b = _call_node(node, [d[1] for d in devs]) - zero
    return np.minimum(a, b), np.maximum(a, b)


def pair_difference(
    graph: Any, bounds: list[tuple[np.ndarray, np.ndarray]], group: Any, reader: Any,
    a: np.ndarray, b: np.ndarray, gamma: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Sound bounds of y_b - (k*y_a + c) at ``reader``'s input, [m, positions] each, that
    follow the pair's own weights: the pre-activation difference z_b - gamma*z_a =
    (w_b - gamma*w_a).[x, 1] over the producer's input bounds, then the monotone
    activation (L*[min(0, d), max(0, d)]; gamma*f(z) = f(gamma*z) needs a positively
    homogeneous f, or gamma = 1), the scale s_b of a BatchNormalization after it, and
    pooling, dropout or Flatten on the way. None where the path is anything else."""
    from pruner.graph.handlers import activation_of, bn_affine

    (prod,) = group.producers
    if prod.params not in ("dense", "conv") or not (group.homogeneous or np.all(gamma == 1)):
        return None
    index = {id(n.op): i for i, n in enumerate(graph.nodes)}
    start = index[id(prod.layer)]
    path, i = [], graph.nodes[index[id(reader.layer)]].parents[0]
    while i != start:
        node = graph.nodes[i]
        if len(node.parents) != 1 or node.handler.kind not in ("same", "flatten"):
            return None
        path.append(node)
        i = node.parents[0]
    w = group.incoming()  # a BatchNormalization before the activation is folded in
    diff = w[b] - np.asarray(gamma, np.float64)[:, None] * w[a]
    kernel = group.store(prod.layer)[0]
    kd = diff[:, :-1].T.reshape(*kernel.shape[:-1], len(b)).astype(np.float32)
    lo_x, hi_x = bounds[graph.nodes[start].parents[0]]
    center = _linear_map(prod.layer, prod.params, ((lo_x + hi_x) / 2)[None], False, [kd])
    radius = _linear_map(prod.layer, prod.params, ((hi_x - lo_x) / 2)[None], True, [kd])
    center = center + diff[:, -1]
    lo = np.moveaxis((center - radius)[0], -1, 0)[..., None]  # [m, ..., 1]: one channel each
    hi = np.moveaxis((center + radius)[0], -1, 0)[..., None]
    lo, hi = _activation_deviation(activation_of(prod.layer), lo, hi)
    for node in reversed(path):
        if node.op is group.bn:
            continue  # folded into w
        if node.handler.params == "bn":
            if node.op is not group.post_bn:
                return None
            scale = bn_affine(node.op, group.store(node.op))[0]
            scale = scale[b].reshape(-1, *([1] * (lo.ndim - 1)))
            lo, hi = np.minimum(scale * lo, scale * hi), np.maximum(scale * lo, scale * hi)
            continue
        act = activation_of(node.op)
        if act is not None:
            lo, hi = _activation_deviation(act, lo, hi)
        else:
            lo, hi = node_deviation(node, [(lo, hi)], [None], group.store)
    return lo.reshape(len(b), -1), hi.reshape(len(b), -1)


def deviation(
    graph: Any, bounds: list[tuple[np.ndarray, np.ndarray]], group: Any, b: np.ndarray,
    a: np.ndarray | None = None, k: np.ndarray | None = None, c: np.ndarray | None = None,
    gamma: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of the logits' change, for every input in the box of ``bounds``
    (interval_bounds), when channel b[i] of ``group`` is removed (a[i] < 0) or merged
    into a[i] (its readers' input y_b becomes k*y_a + c). At every reader the channel's
    slot changes by -y_b (or k*y_a + c - y_b) over that reader's input bounds; the
    other channels carry what flows from upstream; the change is then propagated node
    by node to the output. Given the merges' ``gamma``, the slot's change is
    intersected with pair_difference's bound through the pair's own weights.
    Returns ([m, n_out], [m, n_out])."""
    m = len(b)
    a = np.full(m, -1) if a is None else np.asarray(a)
    k = np.zeros(m) if k is None else np.asarray(k, np.float64)
    c = np.zeros(m) if c is None else np.asarray(c, np.float64)
    index = {id(n.op): i for i, n in enumerate(graph.nodes)}
    inject: dict[int, list[Any]] = {}
    for mem in group.readers:
        inject.setdefault(index[id(mem.layer)], []).append(mem)
    store = graph.store
    rows = np.arange(m)
    last_use = {p: i for i, n in enumerate(graph.nodes) for p in n.parents}
    devs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(min(inject), graph.output + 1):
        node = graph.nodes[i]
        ins = [devs.get(p) for p in node.parents]
        for p in node.parents:  # keep only what a later node reads
            if last_use[p] <= i and p != graph.output:
                devs.pop(p, None)
        slot = None
        if i in inject:
            p = node.parents[0]
            vlo, vhi = bounds[p]
            fresh = ins[0] is None  # nothing changes upstream: only the slots below
            if fresh:
                ins[0] = (np.zeros((m, *vlo.shape)), np.zeros((m, *vhi.shape)))
            dlo, dhi = ins[0][0].copy(), ins[0][1].copy()
            for mem in inject[i]:
                total = mem.total
                dlo_r = dlo.reshape(m, -1, total)  # views: the writes land in dlo, dhi
                dhi_r = dhi.reshape(m, -1, total)
                lo_v = vlo.reshape(-1, total).T.astype(np.float64)  # [channels, positions]
                hi_v = vhi.reshape(-1, total).T.astype(np.float64)
                lb, hb = lo_v[mem.offset + b], hi_v[mem.offset + b]  # [m, positions]
                aa = mem.offset + np.maximum(a, 0)
                ka_lo = np.minimum(k[:, None] * lo_v[aa], k[:, None] * hi_v[aa])
                ka_hi = np.maximum(k[:, None] * lo_v[aa], k[:, None] * hi_v[aa])
                slot_lo, slot_hi = ka_lo + c[:, None] - hb, ka_hi + c[:, None] - lb
                tight = None
                if gamma is not None and group.mergeable and np.all(a >= 0):
                    tight = pair_difference(graph, bounds, group, mem, a, b, gamma)
                if tight is not None:
                    slot_lo = np.maximum(slot_lo, -tight[1])
                    slot_hi = np.minimum(slot_hi, -tight[0])
                dlo_r[rows, :, mem.offset + b] = slot_lo
                dhi_r[rows, :, mem.offset + b] = slot_hi
            one = len(inject[i]) == 1 and vlo.shape == (inject[i][0].total,)  # no Flatten
            if fresh and one and node.handler.params == "dense":
                slot = inject[i][0].offset + b
            ins[0] = (dlo.reshape(m, *vlo.shape), dhi.reshape(m, *vhi.shape))
        if all(d is None for d in ins):
            continue
        ins = [
            d if d is not None else (np.zeros((m, *bounds[p][0].shape)),) * 2
            for d, p in zip(ins, node.parents, strict=True)
        ]
        values = [bounds[p] for p in node.parents]
        devs[i] = node_deviation(node, ins, values, store, i == graph.output, slot)
    lo, hi = devs.get(graph.output, (np.zeros((m, 1)), np.zeros((m, 1))))
    return lo.reshape(m, -1), hi.reshape(m, -1)
