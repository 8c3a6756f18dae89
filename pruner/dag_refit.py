"""Data-free refit of DAG readers: ridge least squares on synthesised inputs.

After a DAG step removes channels, each Dense or Conv2D that read them (a 1x1
project conv, the Dense after pooling) is refitted so its pre-activation on
inputs synthesised from the model's BatchNormalization statistics
(pruner.synthesis) matches the original model's (the math of
pruner.compensate.reconstruct, plus an intercept). The intercept goes into the
reader's bias or, for a reader without bias whose only consumer is a
BatchNormalization, into that BN's moving mean (replacing the closed-form
correction of dag_bias there). Readers whose own output channels are cut by a
Concatenate offset are left as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruner.compensate import layer_inputs, patches, preactivation, ridge_fit
from pruner.dag import DagGraph
from pruner.dag_surgery import as_model

_KINDS = ("Dense", "Conv2D")


def _kept_out(graph: DagGraph, orig_ids: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Per producer layer: the original output channels it still has (None: unknown)."""
    out: dict[str, np.ndarray | None] = {}
    for g in graph.groups:
        for m in g.producers:
            whole = m.offset == 0 and m.total in (0, g.width)
            out[m.layer.name] = orig_ids[g.name] if whole else None
    return out


def readers_of(graph: DagGraph, removed: set[str]) -> list[str]:
    """Dense/Conv2D readers of the groups in ``removed``, in graph order."""
    names = {m.layer.name for g in graph.groups if g.name in removed for m in g.readers
             if type(m.layer).__name__ in _KINDS}
    return [lay.name for lay in graph.model.layers if lay.name in names]


def refit(
    original: Any,
    graph: DagGraph,
    x: np.ndarray,
    names: list[str],
    orig_ids: dict[str, np.ndarray],
    ridge: float = 1e-2,
) -> DagGraph:
    """Refit the named readers of ``graph`` (a step's result, in place: its arrays and
    its built model), front to back; returns ``graph``."""
    model = as_model(graph)
    kept = _kept_out(graph, orig_ids)
    arrays = graph.store.arrays
    names = [n for n in names if kept.get(n, "free") is not None]
    if not names or arrays is None:
        return graph
    ref = layer_inputs(original, names, x)
    for name in names:
        layer, olayer = model.get_layer(name), original.get_layer(name)
        keep = kept.get(name, "free")
        target = preactivation(olayer, ref[name])
        if not isinstance(keep, str):
            target = target[..., keep]
        weights = layer.get_weights()
        kernel = weights[0]
        fan_in, k = int(np.prod(kernel.shape[:-1])), kernel.shape[-1]
        bn = None if layer.use_bias else graph.sole_bn_after(graph.model.get_layer(name))
        bn = None if bn is None else model.get_layer(bn.name)
        a = patches(layer, layer_inputs(model, [name], x)[name]).astype(np.float64)
        z = target.reshape(-1, k).astype(np.float64)
        w0 = kernel.reshape(fan_in, k).astype(np.float64)
        if layer.use_bias or bn is not None:
            if layer.use_bias:
                c0 = weights[1].astype(np.float64)
            else:  # the BN's shift relative to the original: an intercept before it
                bw = bn.get_weights()
                mm0 = original.get_layer(bn.name).moving_mean.numpy()
                mm0 = mm0 if isinstance(keep, str) else mm0[keep]
                c0 = (mm0 - bw[-2]).astype(np.float64)
            a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
            w0 = np.concatenate([w0, c0[None, :]], axis=0)
        w = ridge_fit(a, z, w0, ridge)
        new = [w[:fan_in].reshape(kernel.shape).astype(kernel.dtype)]
        if layer.use_bias:
            new.append(w[fan_in].astype(weights[1].dtype))
        new += weights[len(new):]
        layer.set_weights(new)
        arrays[name] = [np.array(v) for v in new]
        if bn is not None:
            bw = bn.get_weights()
            bw[-2] = (mm0 - w[fan_in]).astype(bw[-2].dtype)
            bn.set_weights(bw)
            arrays[bn.name] = [np.array(v) for v in bw]
    return graph
