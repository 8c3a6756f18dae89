"""The one surgery: slice every member of a group through its handler, fold merges
where they are exact (``advance``: arrays only), and rebuild the Keras graph with
new widths (``as_model``: once, when a model is wanted; ``apply_plan``: both).

A group's removed channels disappear from every producer's filters, every
per-channel layer (BatchNormalization, DepthwiseConv2D) and every reader's
kernel rows (Dense, Conv, SeparableConv2D), at the member's offset (Concatenate)
and for every position (Flatten). Merges o_a += k * o_b go into the readers'
rows (k = gamma, or gamma * s_b / s_a through a BatchNormalization after the
nonlinearity, whose shift difference goes into the readers' biases: exact for a
Dense reader and a 'valid' convolution, away from the borders for a 'same' one)
and are accepted only for ``mergeable`` groups (one producer, readers linear in
each channel); coupled groups take plain removal.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from core.errors import ConfigError
from pruner.graph.dag import ChannelGroup, Graph, Member, Weights, build_graph
from pruner.graph.plan import GroupPlan, Plan, validate

__all__ = ["GroupPlan", "Plan", "advance", "apply_plan", "as_model", "cut", "merge", "validate"]

Arrays = dict[str, list[np.ndarray]]  # layer name -> its weight arrays
Masks = dict[tuple[str, str], np.ndarray]  # (layer name, role) -> kept indices

# params kind -> (index of the weight, its input-channel axis) for reader rows
_READ_AXES = {"dense": [(0, 0)], "conv": [(0, -2)], "separable": [(0, 2), (1, 2)]}


def _masks(graph: Graph, weights: Arrays) -> Masks:
    masks: dict[tuple[str, str], np.ndarray] = {}
    for group in graph.groups:
        for m in group.members:
            w = weights[m.layer.name]
            if m.role == "out":
                n = w[1].shape[-1] if m.params == "separable" else w[0].shape[-1]
            elif m.role == "chan":
                n = w[0].shape[2] if m.params == "depthwise" else w[0].shape[0]
            else:
                n = w[0].shape[0] if m.params == "dense" else w[0].shape[-2 if m.params == "conv" else 2]
            masks.setdefault((m.layer.name, m.role), np.ones(n, bool))
    return masks


def _merge_rows(
    m: Member, w: list[np.ndarray], merges: list[tuple[int, int, float]], k: np.ndarray,
    c: np.ndarray,
) -> None:
    """o_a += k * o_b in the reader's rows (float64, cast once); a nonzero shift
    difference c goes into its bias, times what the reader reads from b."""
    kernel = w[0].astype(np.float64)
    conv = m.params != "dense"
    bias = w[1].astype(np.float64) if len(w) > 1 else None
    for (a, b, _), ki, ci in zip(merges, k.tolist(), c.tolist(), strict=True):
        rows_a = m.rows(np.array([a]))[0]
        rows_b = m.rows(np.array([b]))[0]
        if conv:
            kernel[..., rows_a, :] += ki * kernel[..., rows_b, :]
            reads_b = kernel[..., rows_b, :].reshape(-1, kernel.shape[-1]).sum(axis=0)
        else:
            kernel[rows_a] += ki * kernel[rows_b]
            reads_b = kernel[rows_b].sum(axis=0)
        if ci != 0.0 and bias is not None:
            bias += ci * reads_b
    w[0] = kernel.astype(w[0].dtype)
    if bias is not None:
        w[1] = bias.astype(w[1].dtype)


def _slice(params: str, role_masks: dict[str, np.ndarray], w: list[np.ndarray]) -> list:
    keep_in, keep_out, keep_ch = (role_masks.get(r) for r in ("in", "out", "chan"))
    w = list(w)
    if params == "bn":
        return [x[keep_ch] for x in w]
    if params == "depthwise":
        w[0] = w[0][:, :, keep_ch, :]
        if len(w) > 1:
            w[1] = w[1][keep_ch]
        return w
    if params == "dense":
        if keep_in is not None:
            w[0] = w[0][keep_in]
    elif params == "conv":
        if keep_in is not None:
            w[0] = w[0][..., keep_in, :]
    elif keep_in is not None:  # separable: depthwise and pointwise rows
        w[0], w[1] = w[0][:, :, keep_in, :], w[1][:, :, keep_in, :]
    if keep_out is not None:
        k = 1 if params == "separable" else 0
        w[k] = w[k][..., keep_out]
        if len(w) > k + 1:
            w[k + 1] = w[k + 1][keep_out]
    return w


def apply_plan(model: Any, plan: Plan) -> Any:
    """A new model with the plan's channels removed from every member of their group
    (``model`` is not changed); plan keys are the groups' names (their first producer)."""
    return as_model(advance(build_graph(model), plan))


def advance(graph: Graph, plan: Plan) -> Graph:
    """The graph after ``plan``: weights merged and sliced as arrays, groups narrowed, no
    Keras model built (``as_model`` builds it)."""
    return cut(graph, plan, *merge(graph, plan))


def merge(graph: Graph, plan: Plan) -> tuple[Arrays, Masks]:
    """A copy of the graph's arrays with the plan's merges folded into the readers' rows
    (only in ``mergeable`` groups), and the masks of what stays, per (layer, role)."""
    known = {g.name for g in graph.groups}
    for name in plan:
        if name not in known:
            raise ConfigError(f"no prunable layer named {name!r}")
    weights = {layer.name: [w.copy() for w in graph.store(layer)] for layer in graph.layers}
    masks = _masks(graph, weights)
    for group in graph.groups:
        gp = plan.get(group.name)
        if gp is None or not gp.remove:
            continue
        validate(group, gp)
        if gp.merges and not group.mergeable:
            raise ConfigError(f"{group.name}: {_why_not(group)}, so its channels cannot be merged "
                              "exactly; remove them without merges")
        remove = np.asarray(gp.remove, np.int64)
        if gp.merges:
            a, b, gamma = (np.array([mg[i] for mg in gp.merges]) for i in range(3))
            k, c = group.merge_terms(a, b, gamma)
        for m in group.members:
            if m.role == "in" and gp.merges:
                _merge_rows(m, weights[m.layer.name], gp.merges, k, c)
            masks[(m.layer.name, m.role)][m.rows(remove).reshape(-1)] = False
    return weights, masks


def cut(graph: Graph, plan: Plan, weights: Arrays, masks: Masks) -> Graph:
    """The graph of ``weights`` with every member sliced to ``masks``: member offsets
    follow the kept channels."""
    by_layer: dict[str, dict[str, np.ndarray]] = {}
    for (name, role), mask in masks.items():
        if not mask.all():
            by_layer.setdefault(name, {})[role] = mask
    params = {m.layer.name: m.params for g in graph.groups for m in g.members}
    for name, role_masks in by_layer.items():
        weights[name] = _slice(params[name], role_masks, weights[name])
    store = Weights(weights)
    groups = []
    for group in graph.groups:
        gone = len(plan[group.name].remove) if group.name in plan else 0
        members = [
            replace(m, offset=int(mask[: m.offset].sum()), total=int(mask[: m.total].sum()))
            for m in group.members
            for mask in (masks[(m.layer.name, m.role)],)
        ]
        groups.append(replace(group, width=group.width - gone, members=members, store=store))
    return replace(graph, groups=groups, store=store, built=None)


def as_model(graph: Graph) -> Any:
    """The Keras model a Graph describes (built once from its arrays)."""
    if graph.store.arrays is None:
        return graph.model
    if graph.built is None:
        arrays = graph.store.arrays
        widths = {
            n.op.name: int(arrays[n.op.name][1 if n.handler.params == "separable" else 0].shape[-1])
            for n in graph.nodes
            if n.handler.kind == "producer"
        }
        graph.built = rebuild(graph.model, widths, arrays)
    return graph.built


def _why_not(group: ChannelGroup) -> str:
    if len(group.producers) > 1:
        names = ", ".join(m.layer.name for m in group.producers)
        return f"its channels are made by {len(group.producers)} layers ({names})"
    odd = [m.layer.name for m in group.members if m.role == "chan" and m.params != "bn"]
    if odd:
        return f"its channels pass through {odd[0]} (per-channel filters)"
    return ("a nonlinearity after a BatchNormalization that follows the activation, or a "
            "non-linear reader, carries it")


def rebuild(model: Any, widths: dict[str, int], weights: dict[str, list]) -> Any:
    """A copy of ``model``'s graph with producers resized to ``widths`` and ``weights`` set."""
    import keras

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in widths:
            config["units" if type(layer).__name__ == "Dense" else "filters"] = widths[layer.name]
        elif type(layer).__name__ == "Reshape":  # one that keeps the channel axis
            target = list(config["target_shape"])
            if target[-1] == int(layer.input.shape[-1]) and -1 not in target:
                config["target_shape"] = (*target[:-1], -1)
        return type(layer).from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in new.layers:
        if weights.get(layer.name):
            layer.set_weights(weights[layer.name])
    return new
