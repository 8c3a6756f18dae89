"""The one place that edits weights: physical removal of units, with merges.

For each group, merges (keep a, remove b, gamma) first fold b's outgoing
consumer weights into a's (o_a += gamma * o_b; with a BatchNormalization after
the nonlinearity, o_a += k * o_b and the consumer's bias takes the shift
difference, see graph.merge_terms); then the removed units lose
their kernel column / filter, bias, BatchNormalization channel and the
consumer's input rows / channels. A new, smaller model is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import ConfigError
from pruner.dag_surgery import apply_dag_plan
from pruner.graph import Group, PruneGraph, merge_terms
from pruner.plan import GroupPlan, Plan, validate

__all__ = ["GroupPlan", "Plan", "apply_plan", "rebuild", "remove_units", "validate"]


def _merge_consumer(group: Group, kernel: np.ndarray, bias: np.ndarray | None, merges: list):
    """o_a += k * o_b for every merge; a BatchNormalization after the nonlinearity
    adds its shift difference c to the consumer's bias."""
    kernel = kernel.astype(np.float64).copy()
    bias = None if bias is None else bias.astype(np.float64).copy()
    if not merges:
        return kernel, bias
    a = np.array([m[0] for m in merges])
    b = np.array([m[1] for m in merges])
    k, c = merge_terms(group, a, b, np.array([m[2] for m in merges]))
    conv = type(group.consumer).__name__ == "Conv2D"
    for ai, bi, ki, ci in zip(a.tolist(), b.tolist(), k.tolist(), c.tolist(), strict=True):
        if conv:
            kernel[:, :, ai, :] += ki * kernel[:, :, bi, :]
            reads_b = kernel[:, :, bi, :].sum(axis=(0, 1))
        else:
            rows_a = group.consumer_rows(np.array([ai]))[0]
            rows_b = group.consumer_rows(np.array([bi]))[0]
            kernel[rows_a] += ki * kernel[rows_b]
            reads_b = kernel[rows_b].sum(axis=0)
        if ci != 0.0 and bias is not None:
            bias += ci * reads_b
    return kernel, bias


def _slice_consumer(group: Group, kernel: np.ndarray, keep: np.ndarray) -> np.ndarray:
    if type(group.consumer).__name__ == "Conv2D":
        return kernel[:, :, keep, :]
    rows = group.consumer_rows(keep).T.reshape(-1)  # position-major, as Flatten lays them out
    return kernel[np.sort(rows)]


def apply_plan(model: Any, graph: PruneGraph, plan: Plan) -> Any:
    """A new model with the plan's units physically removed (``model`` is not changed)."""
    if graph.coupled:
        return apply_dag_plan(model, graph, plan)
    weights = {layer.name: [w.copy() for w in layer.get_weights()] for layer in graph.layers}
    widths: dict[str, int] = {}
    known = {g.name for g in graph.groups}
    for name in plan:
        if name not in known:
            raise ConfigError(f"no prunable layer named {name!r}")
    for group in graph.groups:
        gp = plan.get(group.name)
        if gp is None or not gp.remove:
            continue
        keep = validate(group, gp)
        prod = weights[group.producer.name]
        prod[0] = prod[0][..., keep]
        if group.producer.use_bias:
            prod[1] = prod[1][keep]
        for bn in (group.bn, group.post_bn):
            if bn is not None:
                weights[bn.name] = [w[keep] for w in weights[bn.name]]
        cons = weights[group.consumer.name]
        dtype = cons[0].dtype
        has_bias = group.consumer.use_bias
        kernel, bias = _merge_consumer(group, cons[0], cons[1] if has_bias else None, gp.merges)
        cons[0] = _slice_consumer(group, kernel, keep).astype(dtype)
        if has_bias:
            cons[1] = bias.astype(dtype)
        widths[group.producer.name] = int(keep.size)
    return rebuild(model, graph, widths, weights)


def rebuild(model: Any, graph: PruneGraph, widths: dict[str, int], weights: dict) -> Any:
    """Build a model of the same chain with new producer widths and set its weights."""
    import keras

    inp = model.inputs[0]
    sequential = type(model).__name__ == "Sequential"
    name = None if sequential else inp._keras_history[0].name
    new_input = keras.Input(shape=tuple(inp.shape[1:]), dtype=inp.dtype, name=name)
    new_layers = []
    for layer in graph.layers:
        config = layer.get_config()
        if layer.name in widths:
            key = "units" if type(layer).__name__ == "Dense" else "filters"
            config[key] = widths[layer.name]
        new_layers.append(type(layer).from_config(config))
    if sequential:
        new_model = keras.Sequential([new_input, *new_layers], name=model.name)
    else:
        x = new_input
        for new in new_layers:
            x = new(x)
        new_model = keras.Model(new_input, x, name=model.name)
    for layer, new in zip(graph.layers, new_layers, strict=True):
        if weights[layer.name]:
            new.set_weights(weights[layer.name])
    return new_model


def remove_units(model: Any, graph: PruneGraph, units: dict[str, list[int]]) -> Any:
    """Plain removal (no compensation) of ``units`` per producer layer name."""
    return apply_plan(model, graph, {k: GroupPlan(remove=list(v)) for k, v in units.items()})
