"""The model as a DAG of nodes, and its groups of coupled channels.

Every tensor's channel (last) axis is a list of segments, each a slice of a
channel *space*. A producer (Dense, Conv1D, Conv2D, SeparableConv2D) makes a
new space; 'same' layers (BatchNormalization, DepthwiseConv2D, activations,
pooling, ...) pass it on; Add/Multiply and friends join their inputs' spaces
into one (union-find); Concatenate lays its inputs' segments side by side;
Flatten multiplies positions. A group is one joined space: every producer
whose filters make it, every per-channel layer that carries it and every
consumer whose kernel reads it must lose the same channels (the dependency
graph of Torch-Pruning). Spaces that reach the model's input or output, or a
layer that reorders channels, are frozen (never pruned).

The graph reads weights through a ``Weights`` store: the live layers for a
graph built from a model, arrays for a graph ``surgery.advance`` derived
from it (the steps of a run edit arrays; the Keras model is rebuilt once,
when someone asks for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError, UnsupportedLayerError
from pruner.graph.handlers import (
    HOMOGENEOUS,
    Handler,
    activation_of,
    bn_affine,
    handler,
    op_key,
)


@dataclass
class Segment:
    space: int
    size: int
    nonlinear: bool = False  # a nonlinearity acted on it since its producer
    post_bn: bool = False  # a BatchNormalization acted on it after the nonlinearity


@dataclass
class Layout:
    """A tensor's channel axis: segments side by side; Flatten sets ``positions``."""

    segments: list[Segment]
    positions: int = 1

    @property
    def channels(self) -> int:
        return sum(s.size for s in self.segments)

    def offsets(self) -> list[tuple[Segment, int]]:
        out, at = [], 0
        for seg in self.segments:
            out.append((seg, at))
            at += seg.size
        return out

    def copy(self, nonlinear: bool | None = None) -> Layout:
        segs = [
            Segment(s.space, s.size,
                    s.nonlinear if nonlinear is None else nonlinear or s.nonlinear, s.post_bn)
            for s in self.segments
        ]
        return Layout(segs, self.positions)


class Weights:
    """Layer weights by layer: read live from the layers, or held as arrays (``arrays``)."""

    def __init__(self, arrays: dict[str, list[np.ndarray]] | None = None) -> None:
        self.arrays = arrays

    def __call__(self, layer: Any) -> list[np.ndarray]:
        if self.arrays is None:
            return layer.get_weights()
        return self.arrays[layer.name]


LIVE = Weights()


@dataclass
class Member:
    """One layer's share of a group: ``out`` (its filters), ``chan`` (per-channel
    weights, e.g. BatchNormalization or DepthwiseConv2D) or ``in`` (kernel rows
    that read the channels). Channel u of the group is index ``offset + u`` of the
    layer's axis; an ``in`` member after Flatten reads rows p * total + offset + u."""

    layer: Any
    role: str
    params: str
    offset: int = 0
    total: int = 0
    positions: int = 1
    post: bool = False  # a chan member after a nonlinearity
    space: int = 0

    def rows(self, units: np.ndarray) -> np.ndarray:
        """Indices into the layer's axis for ``units`` (shape [len(units), positions])."""
        units = np.asarray(units, dtype=np.int64) + self.offset
        pos = np.arange(self.positions, dtype=np.int64)
        return pos[None, :] * self.total + units[:, None]


@dataclass
class ChannelGroup:
    """Channels that must go together; ``mergeable`` when one producer makes them and
    every reader is linear in each channel (Dense/Conv kernels), so a merge
    o_a += gamma * o_b is exact whenever h_b = gamma * h_a. A BatchNormalization
    after the nonlinearity (``post_bn``, y = s * h + t, no nonlinearity after it)
    keeps merges exact: o_a += k * o_b with k = gamma * s_b / s_a, and the readers'
    biases take the shift difference (``graph.merge_terms``); ``post_max``: max
    pooling follows it (merges need k >= 0)."""

    name: str
    width: int
    members: list[Member]
    homogeneous: bool = True
    mergeable: bool = False
    post_bn: Any = None
    post_max: bool = False
    bn: Any = None
    store: Weights = field(default=LIVE, repr=False)

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "out"]

    @property
    def readers(self) -> list[Member]:
        return [m for m in self.members if m.role == "in"]

    @property
    def producer(self) -> Any:
        return self.producers[0].layer

    @property
    def consumer(self) -> Any:
        readers = self.readers
        return readers[0].layer if readers else None

    @property
    def coupled(self) -> bool:
        return len(self.producers) > 1 or any(
            m.params == "depthwise" for m in self.members if m.role == "chan"
        )

    def layer_names(self) -> list[str]:
        return sorted({m.layer.name for m in self.members})

    def incoming(self) -> np.ndarray:
        """Each channel's incoming weights over all producers (pre-activation
        BatchNormalization folded), bias last. Shape [width, fan_in + 1]."""
        cols, bias = [], np.zeros(self.width)
        for m in self.producers:
            kernel, b = producer_kernel(m.layer, self.store(m.layer))
            cols.append(kernel.reshape(-1, kernel.shape[-1]).T.astype(np.float64))
            bias = bias + b
        w = np.concatenate(cols, axis=1)
        for m in self.members:
            if m.role == "chan" and m.params == "bn" and not m.post:
                scale, shift = bn_channels(m.layer, m.offset, self.width, self.store(m.layer))
                w, bias = w * scale[:, None], bias * scale + shift
        return np.concatenate([w, bias[:, None]], axis=1)

    def post_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) of the BatchNormalization after the nonlinearity (1 and 0 if none)."""
        post = [m for m in self.members if m.role == "chan" and m.params == "bn" and m.post]
        if self.post_bn is None or not post:
            return np.ones(self.width), np.zeros(self.width)
        m = post[0]
        return bn_channels(m.layer, m.offset, self.width, self.store(m.layer))

    def merge_terms(
        self, a: np.ndarray, b: np.ndarray, gamma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """What a reader's input for b becomes when h_b is replaced by gamma * h_a:
        y_b -> k * y_a + c, with k = gamma*s_b/s_a and c = t_b - k*t_a (k = gamma, c = 0
        without a BatchNormalization after the nonlinearity)."""
        gamma = np.asarray(gamma, np.float64)
        if self.post_bn is None:
            return gamma, np.zeros_like(gamma)
        scale, shift = self.post_affine()
        with np.errstate(divide="ignore", invalid="ignore"):
            k = gamma * scale[b] / scale[a]
        return k, shift[b] - k * shift[a]

    def outgoing(self) -> np.ndarray:
        """Each channel's outgoing weights over all readers. Shape [width, k]."""
        units = np.arange(self.width)
        parts = []
        for m in self.readers:
            w = self.store(m.layer)
            if m.params == "dense":
                parts.append(w[0][m.rows(units)].reshape(self.width, -1))
            elif m.params == "conv":
                parts.append(np.moveaxis(w[0], -2, 0)[m.offset + units].reshape(self.width, -1))
            else:  # separable: pointwise rows, scaled by the depthwise filter's norm
                dw = np.moveaxis(w[0], 2, 0)[m.offset + units].reshape(self.width, -1)
                pw = w[1][0, 0][m.offset + units]
                parts.append(pw * np.linalg.norm(dw, axis=1, keepdims=True))
        if not parts:
            return np.zeros((self.width, 1))
        return np.concatenate(parts, axis=1).astype(np.float64)


@dataclass
class Node:
    """One layer or Keras op of the model, with the nodes it reads."""

    op: Any
    key: str
    handler: Handler
    parents: list[int]
    call: Any = None  # keras Node (for ops called with constants)
    layout: Layout | None = None


@dataclass
class Graph:
    """The model's nodes in topological order and its prunable channel groups: one
    form for every model (a Sequential chain is a DAG with one path)."""

    model: Any
    nodes: list[Node]
    groups: list[ChannelGroup] = field(default_factory=list)
    output: int = 0
    store: Weights = field(default=LIVE, repr=False)
    built: Any = field(default=None, repr=False)  # the Keras model of ``store``, once built
    # what a run's steps share (graphs derived by a cut hold the same dict): values of the
    # original model that no step changes (compensate.refit: its readers' inputs)
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.inputs[0].shape[1:])

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def layers(self) -> list[Any]:
        import keras

        return [n.op for n in self.nodes if isinstance(n.op, keras.layers.Layer)]

    def sole_bn_after(self, layer: Any) -> Any:
        """The BatchNormalization that is ``layer``'s only consumer, or None (where a
        bias-free reader's intercept goes: that BN's moving mean)."""
        at = next(i for i, n in enumerate(self.nodes) if n.op is layer)
        kids = [i for i, n in enumerate(self.nodes) if at in n.parents]
        if len(kids) == 1 and self.nodes[kids[0]].key == "BatchNormalization":
            return self.nodes[kids[0]].op
        return None

    def params(self) -> int:
        """count_params of the model this graph describes, without building it."""
        if self.store.arrays is None:
            from pruner.metrics import count_params

            return count_params(self.model)
        return int(sum(w.size for ws in self.store.arrays.values() for w in ws))

    def macs(self) -> int:
        """count_macs of the model this graph describes, without building it: per layer,
        output positions (pruning keeps them) times the kernels' sizes."""
        if self.store.arrays is None:
            from pruner.metrics import count_macs

            return count_macs(self.model)
        total = 0
        for layer in self.layers:
            kernels = _MAC_KERNELS.get(type(layer).__name__)
            if kernels is None:
                continue
            w = self.store(layer)
            positions = int(np.prod([int(d) for d in layer.output.shape[1:-1]]))
            total += positions * sum(int(w[k].size) for k in kernels)
        return total


# weights whose every entry is one multiply-accumulate per output position
_MAC_KERNELS = {
    "Dense": (0,), "Conv1D": (0,), "Conv2D": (0,), "DepthwiseConv2D": (0,),
    "SeparableConv2D": (0, 1),
}



# --- weights as groups read them ------------------------------------------------------


def producer_kernel(layer: Any, w: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A producer's effective kernel [..., fan_in, out] and bias (zeros when none);
    a SeparableConv2D's pointwise kernel stands for its filters. ``w``: its weights
    (default: the layer's own)."""
    w = layer.get_weights() if w is None else w
    kernel = w[1] if type(layer).__name__ == "SeparableConv2D" else w[0]
    has_bias = getattr(layer, "use_bias", False)
    bias = w[-1] if has_bias else np.zeros(kernel.shape[-1], kernel.dtype)
    return kernel, bias.astype(np.float64)


def bn_channels(
    bn: Any, offset: int, width: int, w: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    scale, shift = bn_affine(bn, w)
    return scale[offset : offset + width], shift[offset : offset + width]


# --- building ------------------------------------------------------------------------


class _Spaces:
    """Union-find over channel spaces, with per-space size, frozen and homogeneous flags."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: list[bool] = []
        self.homogeneous: list[bool] = []
        self.post_exact: list[bool] = []  # nothing but linear maps after a post BN
        self.post_max: list[bool] = []  # max pooling after a post BN

    def new(self, size: int, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.frozen.append(frozen)
        self.homogeneous.append(True)
        self.post_exact.append(True)
        self.post_max.append(False)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[b] = a
            self.frozen[a] = self.frozen[a] or self.frozen[b]
            self.homogeneous[a] = self.homogeneous[a] and self.homogeneous[b]
            self.post_exact[a] = self.post_exact[a] and self.post_exact[b]
            self.post_max[a] = self.post_max[a] or self.post_max[b]

    def freeze(self, layout: Layout) -> None:
        for seg in layout.segments:
            self.frozen[self.find(seg.space)] = True

    def taint(self, layout: Layout) -> None:
        for seg in layout.segments:
            self.homogeneous[self.find(seg.space)] = False

    def after_post_bn(self, layout: Layout, key: str) -> None:
        """A layer other than a positive linear map acts on channels after a post BN:
        max pooling keeps merges exact for k >= 0; anything else makes them inexact."""
        for seg in layout.segments:
            if seg.post_bn:
                if key in ("MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling1D",
                           "GlobalMaxPooling2D"):
                    self.post_max[self.find(seg.space)] = True
                else:
                    self.post_exact[self.find(seg.space)] = False


def _check_model(model: Any) -> None:
    if type(model).__name__ not in ("Sequential", "Functional", "Model"):
        raise UnsupportedLayerError(
            f"model {model.name!r} ({type(model).__name__}) is not supported: "
            "only Sequential and Functional models can be pruned"
        )
    if not getattr(model, "inputs", None):
        raise ConfigError(
            f"model {model.name!r} is not built: give it an Input or call it on data first"
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedLayerError(
            f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs: only single-input, single-output models are supported"
        )
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ConfigError(
            f"model {model.name!r} has input shape {shape}: every dimension but the batch "
            "must be known"
        )


def _nodes(model: Any) -> list[Node]:
    """The model's operations in topological order with their parents (index 0: the input)."""
    sequential = type(model).__name__ == "Sequential"
    ops = list(model.layers) if sequential else list(model.operations)
    nodes: list[Node] = []
    index: dict[int, int] = {}
    input_op = model.inputs[0]._keras_history.operation
    nodes.append(Node(input_op, "InputLayer", Handler("input"), []))
    index[id(input_op)] = 0
    for op in ops:
        if type(op).__name__ == "InputLayer":
            index[id(op)] = 0
            continue
        h = handler(op)  # refuses unknown layers first, naming them
        if sequential:
            parents, call = [len(nodes) - 1], None
        else:
            if len(op._inbound_nodes) != 1:
                raise UnsupportedLayerError(
                    f"layer {op.name!r} ({type(op).__name__}) is not supported: "
                    "a layer called more than once cannot be pruned"
                )
            call = op._inbound_nodes[0]
            parents = [index[id(t._keras_history.operation)] for t in call.arguments.keras_tensors]
        index[id(op)] = len(nodes)
        nodes.append(Node(op, op_key(op), h, parents, call))
    return nodes


def _last_dim(tensor: Any) -> int:
    return int(tensor.shape[-1]) if len(tensor.shape) > 1 else 1


def build_graph(model: Any) -> Graph:
    """The nodes and channel groups of ``model``; UnsupportedLayerError names any layer
    no handler covers."""
    _check_model(model)
    nodes = _nodes(model)
    spaces = _Spaces()
    members: list[Member] = []
    inp = model.inputs[0]
    nodes[0].layout = Layout([Segment(spaces.new(_last_dim(inp), frozen=True), _last_dim(inp))])
    for node in nodes[1:]:
        node.layout = _visit(node, [nodes[p].layout for p in node.parents], spaces, members)
    out_op = model.outputs[0]._keras_history.operation
    output = next(i for i, n in enumerate(nodes) if n.op is out_op)
    spaces.freeze(nodes[output].layout)
    graph = Graph(model=model, nodes=nodes, output=output)
    graph.groups = _groups(spaces, members)
    if not any(n.handler.kind == "producer" for n in nodes):
        raise UnsupportedLayerError(f"model {model.name!r} has no Dense or convolution to prune")
    return graph


def _visit(node: Node, inputs: list[Layout], spaces: _Spaces, members: list[Member]) -> Layout:
    op, kind, params = node.op, node.handler.kind, node.handler.params
    out_channels = _last_dim(op.output) if hasattr(op, "output") else None
    if kind == "producer":
        (lay,) = inputs
        _check_producer(op, lay)
        mult = int(getattr(op, "depth_multiplier", 1))
        if mult != 1:
            spaces.freeze(lay)
        for seg, off in lay.offsets():
            members.append(
                Member(op, "in", params, off, lay.channels, lay.positions, space=seg.space)
            )
        n = int(op.units if params == "dense" else op.filters)
        space = spaces.new(n)
        members.append(Member(op, "out", params, 0, n, space=space))
        act = activation_of(op)
        out = Layout([Segment(space, n, act not in ("linear", None))])
        if act not in HOMOGENEOUS:
            spaces.taint(out)
        return out
    if kind == "input":  # pragma: no cover - only node 0
        raise AssertionError
    if kind == "freeze":
        for lay in inputs:
            spaces.freeze(lay)
        return inputs[0].copy()
    if kind == "same" or (kind == "merge" and len(inputs) == 1):
        (lay,) = inputs
        if params in ("bn", "depthwise"):
            if lay.positions != 1 or (params == "bn" and not _last_axis_bn(op)):
                spaces.freeze(lay)
            if params == "depthwise" and (
                int(op.depth_multiplier) != 1 or op.data_format != "channels_last"
            ):
                spaces.freeze(lay)
                return Layout([Segment(spaces.new(out_channels, True), out_channels)])
            for seg, off in lay.offsets():
                members.append(
                    Member(op, "chan", params, off, lay.channels, post=seg.nonlinear,
                           space=seg.space)
                )
        if node.key == "Rescaling" and (np.ndim(op.scale) or np.ndim(op.offset)):
            spaces.freeze(lay)
        act = activation_of(op) if params != "bn" else None
        if kind == "merge" or node.key == "Rescaling":
            act = "affine"  # x + c, x * c: affine, not homogeneous
        if params in ("bn", "depthwise") or act not in (None, "linear") or "Max" in node.key:
            spaces.after_post_bn(lay, node.key)
        if params == "bn":  # after a nonlinearity: an affine map on the channels' outputs
            out = lay.copy()
            for seg in out.segments:
                seg.post_bn = seg.post_bn or seg.nonlinear
            return out
        if act is None or act == "linear":
            return lay.copy()
        if act not in HOMOGENEOUS:
            spaces.taint(lay)
        return lay.copy(nonlinear=act != "affine")
    if kind == "merge":
        full = [lay for lay in inputs if out_channels is None or lay.channels == out_channels]
        for lay in inputs:
            if all(lay is not f for f in full):  # broadcast along channels: kept whole
                spaces.freeze(lay)
        first = full[0]
        shape = [s.size for s in first.segments]
        for lay in full[1:]:
            if [s.size for s in lay.segments] != shape or lay.positions != first.positions:
                for other in full:
                    spaces.freeze(other)
                break
            for a, b in zip(first.segments, lay.segments, strict=True):
                spaces.union(a.space, b.space)
        product = node.key in ("Multiply", "op:multiply", "op:divide", "Maximum", "Minimum")
        if product:
            spaces.taint(first)
        nonlinear = product or any(s.nonlinear for lay in full for s in lay.segments)
        return first.copy(nonlinear=nonlinear)
    if kind == "concat":
        axis = op.axis if op.axis >= 0 else len(op.output.shape) + op.axis
        if axis != len(op.output.shape) - 1 or any(lay.positions != 1 for lay in inputs):
            return _visit(Node(op, "Add", Handler("merge"), node.parents), inputs, spaces, members)
        return Layout([Segment(s.space, s.size, s.nonlinear) for lay in inputs for s in lay.segments])
    if kind == "flatten":
        (lay,) = inputs
        if lay.positions != 1:
            spaces.freeze(lay)
        shape = op.input.shape[1:]
        positions = int(np.prod([int(d) for d in shape[:-1]])) if len(shape) > 1 else 1
        return Layout(lay.copy().segments, lay.positions * positions)
    if kind == "reshape":
        (lay,) = inputs
        keeps = (
            node.key == "Reshape"
            and lay.positions == 1
            and _last_dim(op.input) == out_channels
        )
        if keeps:
            return lay.copy()
        spaces.freeze(lay)
        return Layout([Segment(spaces.new(out_channels, True), out_channels)])
    raise UnsupportedLayerError(  # pragma: no cover - every kind is handled above
        f"layer {op.name!r} ({type(op).__name__}) is not supported: unknown kind {kind}"
    )


def _last_axis_bn(bn: Any) -> bool:
    axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
    return axis in (-1, len(bn.input.shape) - 1)


def _check_producer(op: Any, lay: Layout) -> None:
    cls = type(op).__name__
    if cls != "Dense":
        if op.data_format != "channels_last":
            raise UnsupportedLayerError(
                f"layer {op.name!r} ({cls}) is not supported: only channels_last convolutions"
            )
        if int(getattr(op, "groups", 1)) != 1:
            raise UnsupportedLayerError(
                f"layer {op.name!r} ({cls}) is not supported: grouped convolutions"
            )
        if lay.positions != 1:  # pragma: no cover - a conv cannot read a flat vector
            raise UnsupportedLayerError(f"layer {op.name!r} ({cls}) reads a flattened tensor")


def _groups(spaces: _Spaces, members: list[Member]) -> list[ChannelGroup]:
    by_root: dict[int, list[Member]] = {}
    for m in members:
        by_root.setdefault(spaces.find(m.space), []).append(m)
    groups = []
    for root, ms in by_root.items():
        if spaces.frozen[root] or not any(m.role == "out" for m in ms):
            continue
        width = spaces.size[root]
        producers = [m for m in ms if m.role == "out"]
        group = ChannelGroup(
            name=producers[0].layer.name,
            width=width,
            members=ms,
            homogeneous=spaces.homogeneous[root],
        )
        chans = [m for m in ms if m.role == "chan"]
        post_bn = [m for m in chans if m.params == "bn" and m.post]
        group.mergeable = (
            len(producers) == 1
            and all(m.params == "bn" for m in chans)
            and len(post_bn) <= 1
            and spaces.post_exact[root]
            and all(m.params in ("dense", "conv") for m in group.readers)
            and len({m.space for m in ms}) == 1
        )
        pre_bn = [m for m in chans if m.params == "bn" and not m.post]
        group.bn = pre_bn[0].layer if pre_bn else None
        group.post_bn = post_bn[0].layer if post_bn else None
        group.post_max = spaces.post_max[root]
        groups.append(group)
    return groups
