"""Data-free refit of the readers of pruned channels on synthesised inputs.

After a step removes channels, each Dense or Conv2D that read them (the next
layer of a chain, a 1x1 project conv, the Dense after pooling) is refitted so
its pre-activation on inputs synthesised from the model (pruner.synthesis)
matches the original model's: ridge least squares pulled towards the current
weights, with an intercept, or the intercept alone (``bias_only``: bias
correction from synthesised inputs, for models whose BatchNormalization
statistics say nothing, or that have none). The intercept goes into the
reader's bias or, for a reader without bias whose only consumer is a
BatchNormalization, into that BN's moving mean (replacing the closed-form
correction of compensate.bias there). Readers whose own output channels are cut
by a Concatenate offset are left as they are.

One step costs one forward pass of the pruned model, layer by layer (``replay``),
up to its last reader: each reader is refitted when the pass reaches it, so it
sees the earlier readers' refits, and its fit uses at most ``ROWS`` sampled rows
(positions x inputs). The original's inputs at the readers do not change between
steps: the first step that needs one runs the original in lockstep, and the run
keeps them (``Graph.memo``, up to ``MEMO_BYTES``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pruner.graph.dag import Graph
from pruner.graph.surgery import as_model

_KINDS = ("Dense", "Conv2D")
ROWS = 16384  # rows per reader's least squares: ample for its fan-in, bounded in time
MEMO_BYTES = 256 << 20  # the original's reader inputs a run keeps; past it they are replayed


def patches(layer: Any, inp: np.ndarray) -> np.ndarray:
    """The rows a layer's kernel multiplies: inputs (Dense) or im2col patches (Conv2D),
    shape [rows, fan_in] in the order of ``kernel.reshape(fan_in, -1)``."""
    if type(layer).__name__ == "Dense":
        return inp.reshape(-1, inp.shape[-1])
    import tensorflow as tf

    kh, kw = layer.kernel_size
    out = tf.image.extract_patches(
        inp.astype(np.float32),
        sizes=(1, kh, kw, 1),
        strides=(1, *layer.strides, 1),
        rates=(1, *layer.dilation_rate, 1),
        padding=layer.padding.upper(),
    ).numpy()
    return out.reshape(-1, out.shape[-1])


def ridge_fit(a: np.ndarray, z: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    """argmin_w |a w - z|^2 / rows + lam |w - w0|^2, lam = ridge x the mean diagonal of
    a's Gram matrix: a least-squares refit pulled towards the current weights w0."""
    gram = (a.T @ a).astype(np.float64) / len(a)  # products in a's dtype, the solve in float64
    rhs = (a.T @ z.astype(a.dtype)).astype(np.float64) / len(a)
    lam = ridge * float(np.trace(gram)) / gram.shape[0]
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), rhs + lam * w0)


def _kept_out(graph: Graph, orig_ids: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Per producer layer: the original output channels it still has (None: unknown)."""
    out: dict[str, np.ndarray | None] = {}
    for g in graph.groups:
        for m in g.producers:
            whole = m.offset == 0 and m.total in (0, g.width)
            out[m.layer.name] = orig_ids[g.name] if whole else None
    return out


def readers_of(graph: Graph, removed: set[str]) -> list[str]:
    """Dense/Conv2D readers of the groups in ``removed``, in graph order."""
    names = {m.layer.name for g in graph.groups if g.name in removed for m in g.readers
             if type(m.layer).__name__ in _KINDS}
    return [lay.name for lay in graph.model.layers if lay.name in names]


def replay(
    graph: Graph, pruned: Any, x: np.ndarray, names: set[str], known: dict[str, np.ndarray]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Run ``pruned`` (a pruned copy of ``graph.model``: same layer names) on x layer by
    layer; at each layer in ``names`` yield (name, original input, pruned input) before
    the pruned layer runs, so a consumer may change its weights first. The original's
    inputs come from ``known`` (layer name -> input on x) or, for a name not there, from
    ``graph.model`` run in lockstep, and are added to ``known`` within MEMO_BYTES."""
    nodes = graph.nodes
    layers = {id(lay) for lay in graph.layers}
    last = {i: i for i in range(len(nodes))}
    for j, node in enumerate(nodes[1:], start=1):
        for p in node.parents:
            last[p] = max(last[p], j)
    lockstep = not names <= known.keys()
    left = set(names)
    orig: dict[int, Any] = {0: x}
    new: dict[int, Any] = {0: x}
    for j, node in enumerate(nodes[1:], start=1):
        args = [_args(node, orig) if lockstep else None, _args(node, new)]
        if node.op.name in left:
            ref = known.get(node.op.name)
            if ref is None:
                ref = np.asarray(args[0][0][0])
                if sum(v.nbytes for v in known.values()) + ref.nbytes <= MEMO_BYTES:
                    known[node.op.name] = ref
            yield node.op.name, ref, np.asarray(args[1][0][0])
            left.discard(node.op.name)
            if not left:  # nothing after the last reader is read
                return
        if lockstep:
            orig[j] = node.op(*args[0][0], **args[0][1])
        twin = pruned.get_layer(node.op.name) if id(node.op) in layers else node.op  # ops: stateless
        new[j] = twin(*args[1][0], **args[1][1])
        for p in set(node.parents):
            if last[p] <= j:
                orig.pop(p, None)
                new.pop(p, None)


def _args(node: Any, values: dict[int, Any]) -> tuple[tuple, dict]:
    """The positional and keyword arguments of a node's call, from its parents' values."""
    if node.call is None:  # Sequential: one input, the previous layer's output
        return (values[node.parents[0]],), {}
    tensors = node.call.arguments.keras_tensors
    return node.call.arguments.fill_in(
        {id(t): values[p] for t, p in zip(tensors, node.parents, strict=True)}
    )


def refit(
    graph: Graph,
    x: np.ndarray,
    names: list[str],
    orig_ids: dict[str, np.ndarray],
    ridge: float = 1e-2,
    seed: int = 0,
    bias_only: bool = False,
) -> Graph:
    """Refit the named readers of ``graph`` (a step's result, in place: its arrays and
    its built model), front to back in one pass against the model it was derived from
    (``graph.model``, whose own weights are the original's); returns ``graph``."""
    original, model = graph.model, as_model(graph)
    kept = _kept_out(graph, orig_ids)
    arrays = graph.store.arrays
    todo = {n for n in names if kept.get(n, "free") is not None}
    if not todo or arrays is None:
        return graph
    memo = graph.memo.setdefault("refit", {"x": None, "inputs": {}})
    if memo["x"] is not x:  # inputs of the original on other fitting inputs: not these
        memo.update(x=x, inputs={})
    rng = np.random.default_rng(seed)
    for name, ref_in, now_in in replay(graph, model, x, todo, memo["inputs"]):
        olayer, layer = original.get_layer(name), model.get_layer(name)
        keep = kept.get(name, "free")
        a0, a = patches(olayer, ref_in), patches(layer, now_in)
        if len(a) > ROWS:
            rows = np.sort(rng.choice(len(a), ROWS, replace=False))
            a0, a = a0[rows], a[rows]
        _fit(original, graph, model, name, a0, a, keep, ridge, bias_only)
    return graph


def _fit(
    original: Any, graph: Graph, model: Any, name: str, a0: np.ndarray, a: np.ndarray,
    keep: Any, ridge: float, bias_only: bool = False,
) -> None:
    """Ridge-refit reader ``name`` of ``model`` so a @ W matches the original's
    pre-activation a0 @ W0 (+ b0) on its kept output channels; write the arrays back."""
    olayer, layer = original.get_layer(name), model.get_layer(name)
    ow = olayer.get_weights()
    z = a0 @ ow[0].reshape(a0.shape[1], -1)
    if olayer.use_bias:
        z += ow[1]
    if not isinstance(keep, str):
        z = z[:, keep]
    weights = layer.get_weights()
    kernel = weights[0]
    fan_in = a.shape[1]
    bn = None if layer.use_bias else graph.sole_bn_after(graph.model.get_layer(name))
    bn = None if bn is None else model.get_layer(bn.name)
    w0 = kernel.reshape(fan_in, -1).astype(np.float64)
    if layer.use_bias or bn is not None:
        if layer.use_bias:
            c0 = weights[1].astype(np.float64)
        else:  # the BN's shift relative to the original: an intercept before it
            bw = bn.get_weights()
            mm0 = original.get_layer(bn.name).moving_mean.numpy()
            mm0 = mm0 if isinstance(keep, str) else mm0[keep]
            c0 = (mm0 - bw[-2]).astype(np.float64)
        a = np.concatenate([a, np.ones((len(a), 1), a.dtype)], axis=1)
        w0 = np.concatenate([w0, c0[None, :]], axis=0)
    if bias_only:  # the intercept alone: the mean of what the reader now misses
        if a.shape[1] == fan_in:
            return
        w = w0.copy()
        w[fan_in] += (z - a @ w0).mean(axis=0)
    else:
        w = ridge_fit(a, z, w0, ridge)
    new = [w[:fan_in].reshape(kernel.shape).astype(kernel.dtype)]
    if layer.use_bias:
        new.append(w[fan_in].astype(weights[1].dtype))
    new += weights[len(new):]
    layer.set_weights(new)
    arrays = graph.store.arrays
    arrays[name] = [np.array(v) for v in new]
    if bn is not None:
        bw = bn.get_weights()
        bw[-2] = (mm0 - w[fan_in]).astype(bw[-2].dtype)
        bn.set_weights(bw)
        arrays[bn.name] = [np.array(v) for v in bw]
