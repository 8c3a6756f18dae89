"""The prunable structure of a Keras model: an ordered chain of ops and its groups.

A group is one producer (a hidden Dense or Conv2D), its optional
BatchNormalization, the pass-through layers after it and the one consumer
that reads its units. The graph reads weights; it never edits them
(``surgery`` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError, UnsupportedLayerError
from pruner.dag import GroupedGraph, build_dag
from pruner.handlers import bn_affine

# activation name -> (positively homogeneous, Lipschitz constant); all monotone.
ACTIVATIONS: dict[str, tuple[bool, float]] = {
    "linear": (True, 1.0),
    "relu": (True, 1.0),
    "leaky_relu": (True, 1.0),
    "relu6": (False, 1.0),
    "elu": (False, 1.0),
    "selu": (False, 1.7581),
    "sigmoid": (False, 0.25),
    "hard_sigmoid": (False, 1.0),
    "tanh": (False, 1.0),
    "hard_tanh": (False, 1.0),
    "softplus": (False, 1.0),
}

PRODUCERS = ("Dense", "Conv2D")
LINEAR_PASS = (  # positive linear maps: bounds go through the layer as they are
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "AveragePooling2D",
    "Flatten",
    "GlobalAveragePooling2D",
    "ZeroPadding2D",
    "Cropping2D",
    "UpSampling2D",
)
# Layers that may only come before the first Dense/Conv2D (input preprocessing).
PRE_ONLY = ("Rescaling", "Reshape", "Normalization", "Permute")
MAX_PASS = ("MaxPooling2D", "GlobalMaxPooling2D")
ACT_LAYERS = ("Activation", "ReLU", "LeakyReLU", "ELU")
OUTPUT_ONLY = ("Softmax",)
IDENTITY_AT_INFERENCE = LINEAR_PASS[:6]


@dataclass
class Op:
    """One step of the forward pass, as bound propagation sees it.

    kind: ``affine`` (Dense/Conv2D without activation), ``act`` (monotone
    elementwise), ``bn`` (per-channel affine), ``linear`` (positive linear
    pass-through), ``max`` (max pooling), ``pre`` (elementwise-monotone input
    preprocessing before the first affine op), ``output_act`` (after the last
    affine op: not propagated).
    """

    kind: str
    layer: Any
    activation: str = "linear"
    homogeneous: bool = True
    lipschitz: float = 1.0
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def arrays(self) -> dict[str, Any]:
        """The op's weights as numpy arrays, read once (a graph lives for one step)."""
        if not self.cache:
            if self.kind == "affine":
                kernel, bias = kernel_bias(self.layer)
                self.cache["kernel"] = kernel.astype(np.float64)
                self.cache["abs_kernel"] = np.abs(self.cache["kernel"])
                self.cache["kernel32"] = kernel.astype(np.float32)
                self.cache["abs_kernel32"] = np.abs(self.cache["kernel32"])
                self.cache["bias"] = bias.astype(np.float64)
            elif self.kind == "bn":
                self.cache["scale"], self.cache["shift"] = bn_affine(self.layer)
        return self.cache


@dataclass
class Group:
    """A producer's units and where its consumer reads them.

    A BatchNormalization right after the producer (before any nonlinearity) is
    ``bn`` and is folded into the units' incoming weights; one after the
    nonlinearity is ``post_bn``, an affine map y = s*h + t on each unit's output.
    Merges through ``post_bn`` move the shift difference into the consumer's
    bias: exact for a Dense consumer and a 'valid' Conv2D; for a 'same'-padded
    Conv2D (or a consumer without bias) it is exact away from the borders only.
    """

    producer: Any
    consumer: Any
    bn: Any = None
    producer_op: int = 0  # index of the producer's affine op in PruneGraph.ops
    consumer_op: int = 0  # index of the consumer's affine op
    homogeneous: bool = True
    flatten_positions: int = 0  # >0: a Flatten sits between, with this many positions
    post_bn: Any = None  # a BatchNormalization after the nonlinearity: y = s * h + t
    post_max: bool = False  # max pooling after post_bn (merges need s_b / s_a >= 0)

    @property
    def name(self) -> str:
        return self.producer.name

    @property
    def width(self) -> int:
        return int(self.producer.get_weights()[0].shape[-1])

    def consumer_rows(self, units: np.ndarray) -> np.ndarray:
        """Consumer kernel input indices read by ``units``: shape [len(units), positions].

        Channels-last Flatten: flattened index = position * C + channel.
        """
        units = np.asarray(units, dtype=np.int64)
        if self.flatten_positions:
            pos = np.arange(self.flatten_positions, dtype=np.int64)
            return pos[None, :] * self.width + units[:, None]
        return units[:, None]


@dataclass
class PruneGraph(GroupedGraph):
    """The model's layers in order, its ops and its prunable groups."""

    model: Any
    layers: list[Any]
    ops: list[Op]
    groups: list[Group] = field(default_factory=list)
    output_op: int = 0  # index of the output layer's affine op
    coupled: bool = False  # a chain: no channel is shared between groups


def _unsupported(layer: Any, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"layer {layer.name!r} ({type(layer).__name__}) is not supported: {why}"
    )


def _chain(model: Any) -> list[Any]:
    """The model's layers (no InputLayer) if they form a single chain."""
    if type(model).__name__ not in ("Sequential", "Functional", "Model"):
        raise UnsupportedLayerError(
            f"model {model.name!r} ({type(model).__name__}) is not supported: "
            "only Sequential and Functional models can be pruned"
        )
    if not getattr(model, "inputs", None):
        raise ConfigError(
            f"model {model.name!r} is not built: give it an Input or call it on data first"
        )
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ConfigError(
            f"model {model.name!r} has input shape {shape}: every dimension but the batch "
            "must be known for interval bounds"
        )
    layers = [lay for lay in model.layers if type(lay).__name__ != "InputLayer"]
    for layer in layers:  # the layer kinds first, so the error names the odd layer
        cls = type(layer).__name__
        if hasattr(layer, "layers"):
            raise _unsupported(layer, "nested models cannot be pruned; flatten the model first")
        known = PRODUCERS + LINEAR_PASS + MAX_PASS + ACT_LAYERS + OUTPUT_ONLY + PRE_ONLY
        if cls not in known and cls != "BatchNormalization":
            raise _unsupported(layer, "the pruner cannot remove units through this layer")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedLayerError(
            f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs: only single-input, single-output chains are supported"
        )
    if type(model).__name__ == "Sequential":
        return layers  # a chain by construction
    nodes = [node for depth in model._nodes_by_depth.values() for node in depth]
    parents_of: dict[int, list[Any]] = {}
    for node in nodes:
        if type(node.operation).__name__ == "InputLayer":
            continue
        if id(node.operation) in parents_of:
            raise _unsupported(node.operation, "a layer called more than once cannot be pruned")
        parents_of[id(node.operation)] = [p.operation for p in node.parent_nodes]
    previous = None
    for layer in layers:
        parents = parents_of.get(id(layer), [])
        if len(parents) != 1:
            raise _unsupported(layer, f"it reads {len(parents)} tensors")
        if previous is not None and parents[0] is not previous:
            raise _unsupported(layer, "the model is not a single chain of layers (it branches)")
        previous = layer
    return layers


def _activation_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return {"leakyrelu": "leaky_relu", "silu": "silu", "swish": "silu"}.get(name, name)


def _act_op(layer: Any, name: str) -> Op:
    if name not in ACTIVATIONS:
        raise _unsupported(
            layer, f"activation {name!r} inside the network (supported: {', '.join(ACTIVATIONS)})"
        )
    homogeneous, lipschitz = ACTIVATIONS[name]
    return Op("act", layer, name, homogeneous, lipschitz)


def _layer_ops(layer: Any) -> list[Op]:
    cls = type(layer).__name__
    if cls in PRODUCERS:
        if cls == "Conv2D":
            if layer.data_format != "channels_last":
                raise _unsupported(layer, "only channels_last convolutions are supported")
            if getattr(layer, "groups", 1) != 1:
                raise _unsupported(layer, "grouped convolutions couple channels")
        ops = [Op("affine", layer)]
        name = _activation_name(layer.activation)
        if name != "linear":
            ops.append(_act_op(layer, name) if name in ACTIVATIONS else Op("raw", layer, name))
        return ops
    if cls == "BatchNormalization":
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        if axis not in (-1, len(layer.input.shape) - 1):
            raise _unsupported(layer, "only last-axis (channels_last) normalization is supported")
        return [Op("bn", layer)]
    if cls in LINEAR_PASS:
        return [Op("linear", layer)]
    if cls in MAX_PASS:
        return [Op("max", layer)]
    if cls in OUTPUT_ONLY:
        return [Op("raw", layer, "softmax", False)]
    if cls in PRE_ONLY:
        return [Op("pre", layer)]
    if cls == "Activation":
        name = _activation_name(layer.activation)
        return [_act_op(layer, name) if name in ACTIVATIONS else Op("raw", layer, name)]
    if cls == "ReLU":
        homogeneous = layer.max_value is None and float(layer.threshold) == 0.0
        slope = float(layer.negative_slope)
        if slope < 0:
            raise _unsupported(layer, "a negative slope makes the activation non-monotone")
        return [Op("act", layer, "relu", homogeneous, max(1.0, slope))]
    if cls == "LeakyReLU":
        slope = float(getattr(layer, "negative_slope", getattr(layer, "alpha", 0.3)))
        if slope < 0:
            raise _unsupported(layer, "a negative slope makes the activation non-monotone")
        return [Op("act", layer, "leaky_relu", True, max(1.0, slope))]
    if cls == "ELU":
        if float(layer.alpha) < 0:
            raise _unsupported(layer, "a negative alpha makes the activation non-monotone")
        return [Op("act", layer, "elu", False, max(1.0, float(layer.alpha)))]
    raise _unsupported(layer, "unknown layer type")  # pragma: no cover - _chain refuses it


def build_graph(model: Any) -> Any:
    """The prunable groups of ``model``; UnsupportedLayerError names any layer it cannot handle.

    A chain of Dense/Conv2D layers gives a PruneGraph (ops in order, one producer
    and one consumer per group: the bounds-driven criteria walk it); any other
    model gives a ``dag.DagGraph`` of coupled channel groups.
    """
    try:
        return build_chain(model)
    except UnsupportedLayerError:
        return build_dag(model)


def build_chain(model: Any) -> PruneGraph:
    """The chain form of ``model``; UnsupportedLayerError when it is not a supported chain."""
    layers = _chain(model)
    ops: list[Op] = []
    for layer in layers:
        ops.extend(_layer_ops(layer))
    affine = [i for i, op in enumerate(ops) if op.kind == "affine"]
    if not affine:
        raise UnsupportedLayerError(f"model {model.name!r} has no Dense or Conv2D layer to prune")
    output_op = affine[-1]
    late = [op for op in ops[affine[0] :] if op.kind == "pre"]
    if late:
        raise _unsupported(late[0].layer, "it may only come before the first Dense or Conv2D")
    for op in ops[output_op + 1 :]:  # after the output layer anything goes: it is not propagated
        if op.kind in ("act", "raw"):
            op.kind = "output_act"
    raw = [op for op in ops[:output_op] if op.kind == "raw"]
    if raw:
        raise _unsupported(raw[0].layer, f"activation {raw[0].activation!r} inside the network")
    graph = PruneGraph(model=model, layers=layers, ops=ops, output_op=output_op)
    for p, c in zip(affine[:-1], affine[1:], strict=True):
        graph.groups.append(_group(ops, p, c))
    return graph


def _group(ops: list[Op], p: int, c: int) -> Group:
    producer, consumer = ops[p].layer, ops[c].layer
    group = Group(producer=producer, consumer=consumer, producer_op=p, consumer_op=c)
    nonlinear_seen = False
    post_at = None
    for i in range(p + 1, c):
        op = ops[i]
        cls = type(op.layer).__name__
        if op.kind == "act":
            nonlinear_seen = nonlinear_seen or op.activation != "linear"
            group.homogeneous = group.homogeneous and op.homogeneous
            if post_at is not None and op.activation != "linear":
                raise _unsupported(
                    ops[post_at].layer,
                    "a BatchNormalization that is not right after its Dense/Conv2D must not "
                    "be followed by a nonlinearity",
                )
        elif op.kind == "bn":
            if group.bn is not None or group.post_bn is not None:
                raise _unsupported(op.layer, "two BatchNormalization layers on the same units")
            between = [type(o.layer).__name__ for o in ops[p + 1 : i]]
            if not nonlinear_seen and all(b in IDENTITY_AT_INFERENCE for b in between):
                group.bn = op.layer  # folded into the producer
            else:
                group.post_bn, post_at = op.layer, i  # an affine map on the unit's output
        elif op.kind == "max" and post_at is not None:
            group.post_max = True
        if cls == "Flatten":
            shape = op.layer.input.shape[1:]
            group.flatten_positions = int(np.prod(shape[:-1])) if len(shape) > 1 else 0
        elif cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            group.flatten_positions = 0
    if type(consumer).__name__ == "Conv2D" and len(consumer.input.shape) != 4:
        raise _unsupported(consumer, "a Conv2D must read a 4-D tensor")  # pragma: no cover
    return group


# --- reading the units' weights -----------------------------------------------------------


def kernel_bias(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """A Dense/Conv2D layer's kernel and bias (zeros when it has none)."""
    weights = layer.get_weights()
    kernel = weights[0]
    bias = weights[1] if layer.use_bias else np.zeros(kernel.shape[-1], kernel.dtype)
    return kernel, bias


def incoming(group: Group) -> np.ndarray:
    """Each unit's incoming vector (kernel column or flattened filter, bias last).

    Inference-mode BatchNormalization is folded in. Shape [units, fan_in + 1].
    """
    if not isinstance(group, Group):
        return group.incoming()
    kernel, bias = kernel_bias(group.producer)
    w = kernel.reshape(-1, kernel.shape[-1]).T.astype(np.float64)
    b = bias.astype(np.float64)
    if group.bn is not None:
        scale, shift = bn_affine(group.bn)
        w = w * scale[:, None]
        b = b * scale + shift
    return np.concatenate([w, b[:, None]], axis=1)


def outgoing(group: Group) -> np.ndarray:
    """Each unit's outgoing vector: the consumer weights that read it, times the scale
    of a BatchNormalization after the nonlinearity. Shape [units, k]."""
    if not isinstance(group, Group):
        return group.outgoing()
    kernel = group.consumer.get_weights()[0].astype(np.float64)
    n = group.width
    if type(group.consumer).__name__ == "Conv2D":
        out = np.moveaxis(kernel, 2, 0).reshape(n, -1)
    else:
        rows = group.consumer_rows(np.arange(n))  # [n, positions]
        out = kernel[rows].reshape(n, -1)
    scale, _ = post_affine(group)
    return out * scale[:, None]


def post_affine(group: Group) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of the BatchNormalization after the nonlinearity (1 and 0 if none)."""
    if not isinstance(group, Group):
        return group.post_affine()
    if group.post_bn is None:
        return np.ones(group.width), np.zeros(group.width)
    return bn_affine(group.post_bn)


def merge_terms(
    group: Group, a: np.ndarray, b: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """What the consumer's input for b becomes when h_b is replaced by gamma * h_a:
    y_b -> k * y_a + c, with k = gamma*s_b/s_a and c = t_b - k*t_a (k = gamma, c = 0
    without a BatchNormalization after the nonlinearity)."""
    gamma = np.asarray(gamma, np.float64)
    if group.post_bn is None:
        return gamma, np.zeros_like(gamma)
    scale, shift = post_affine(group)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = gamma * scale[b] / scale[a]
    return k, shift[b] - k * shift[a]
