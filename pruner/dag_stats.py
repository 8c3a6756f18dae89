"""Per-channel statistics of the DAG readers' inputs on synthesised inputs.

Activation-aware selection on DAG models (coupled.ActivationSaliency) needs,
for every layer that reads a group's channels, the mean and covariance of its
input channels (positions of a feature map pooled as rows). One Keras probe
over all readers' inputs per step, accumulated batch by batch so no feature
map of the whole batch is held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pruner.dag import DagGraph
from pruner.surgery import as_model

BATCH = 64


@dataclass
class InputStats:
    """Mean [c] and centred covariance [c, c] of one layer's input channels."""

    mean: np.ndarray
    cov: np.ndarray

    def conditional_variance(self, ridge: float = 1e-2) -> np.ndarray:
        """Each channel's variance left once the others predict it linearly, with an
        intercept: 1 / diag(inverse covariance), the covariance ridged by ``ridge``
        times its mean diagonal (the error a least-squares refit cannot undo)."""
        c = self.cov.shape[0]
        scale = float(np.trace(self.cov)) / max(1, c) or 1.0
        prec = np.linalg.inv(self.cov + ridge * scale * np.eye(c))
        return 1.0 / np.maximum(np.diag(prec), 1e-30)


def reader_stats(graph: DagGraph, x: np.ndarray) -> dict[str, InputStats]:
    """InputStats of every group reader's input in the model ``graph`` describes, on x."""
    import keras

    model = as_model(graph)
    names = sorted({m.layer.name for g in graph.groups for m in g.readers})
    if not names or len(x) == 0:
        return {}
    layers = [model.get_layer(n) for n in names]
    probe = keras.Model(model.inputs[0], [lay.input for lay in layers])
    sums: list[Any] = [None] * len(names)
    grams: list[Any] = [None] * len(names)
    rows = [0] * len(names)
    for i in range(0, len(x), BATCH):
        outs = probe(x[i : i + BATCH], training=False)
        outs = [outs] if len(names) == 1 else outs
        for j, o in enumerate(outs):
            a = np.asarray(o, np.float64)
            a = a.reshape(-1, a.shape[-1])
            s, g = a.sum(axis=0), a.T @ a
            sums[j] = s if sums[j] is None else sums[j] + s
            grams[j] = g if grams[j] is None else grams[j] + g
            rows[j] += len(a)
    out = {}
    for j, n in enumerate(names):
        mean = sums[j] / rows[j]
        out[n] = InputStats(mean, grams[j] / rows[j] - np.outer(mean, mean))
    return out
