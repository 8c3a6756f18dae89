"""Data-free bias correction from BatchNormalization statistics (Nagel et al. 2019, Data-Free Quantization).

A reader (Dense, Conv1D, Conv2D) that loses input channel c loses, in expectation,
E[a_c] times the sum of its kernel weights for c over spatial positions. E[a_c] is
known without data when a BatchNormalization makes the channel: its output is taken
as N(beta, gamma^2 var / (var + eps)), so the mean is beta, and after a ReLU or a
clipped ReLU (ReLU6) the clipped-normal mean in closed form. Means pass through
identity-like layers and pooling, add up at an Add, and tile through a Flatten.
The lost expectation goes into the reader's bias, or, for a reader without bias
whose only consumer is a BatchNormalization, into that BN's moving mean (minus the
loss): exact in expectation (borders of 'same' padding aside). Channels whose mean
is unknown (no BN upstream, another nonlinearity, ...) are left as they are.
The correction is a pure function of the weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruner.graph.dag import Graph

# layers whose output mean per channel is their input's (inference mode)
_PASS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout", "AlphaDropout",
         "GaussianNoise", "ActivityRegularization", "Identity", "ZeroPadding1D",
         "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D")
_POOL = ("AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
         "GlobalAveragePooling2D")
_READERS = ("dense", "conv")

Gauss = tuple[np.ndarray, np.ndarray]  # per-channel mean and standard deviation


def _relu_mean(mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """E[max(X, 0)] for X ~ N(mu, sd^2), per channel (sd 0: max(mu, 0))."""
    from scipy.special import ndtr  # a host dependency: not at import time
    safe = np.where(sd > 0, sd, 1.0)
    z = mu / safe
    out = mu * ndtr(z) + safe * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    return np.where(sd > 0, out, np.maximum(mu, 0.0))


def clipped_mean(mu: np.ndarray, sd: np.ndarray, top: float | None) -> np.ndarray:
    """E[clip(X, 0, top)] for X ~ N(mu, sd^2) (top None: a plain ReLU)."""
    out = _relu_mean(mu, sd)
    return out if top is None else out - _relu_mean(mu - top, sd)


def _bn_values(bn: Any, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    names = [w.path.split("/")[-1] for w in bn.weights]
    return dict(zip(names, arrays, strict=True))


def _relu_top(op: Any) -> tuple[bool, float | None]:
    """(is a plain/clipped ReLU, its ceiling) of an activation layer."""
    cls = type(op).__name__
    if cls == "ReLU":
        if float(op.negative_slope) != 0.0 or float(op.threshold) != 0.0:
            return False, None
        return True, None if op.max_value is None else float(op.max_value)
    if cls == "Activation":
        name = getattr(op.activation, "__name__", "")
        if name == "relu":
            return True, None
        if name == "relu6":
            return True, 6.0
    return False, None


def _is_linear(op: Any) -> bool:
    return type(op).__name__ == "Activation" and getattr(op.activation, "__name__", "") == "linear"


def channel_means(graph: Graph) -> dict[int, np.ndarray]:
    """Per node index: the expected value of each channel of its output tensor (NaN:
    unknown), from the BatchNormalization statistics in ``graph``'s weights."""
    means: dict[int, np.ndarray] = {}
    gauss: dict[int, Gauss] = {}
    for i, node in enumerate(graph.nodes):
        op, key = node.op, node.key
        if i == 0 or not node.parents:
            continue
        p = node.parents[0]
        if key == "BatchNormalization":
            if node.handler.params != "bn" or len(op.input.shape) < 2:
                continue
            axis = op.axis if isinstance(op.axis, int) else op.axis[0]
            if axis not in (-1, len(op.input.shape) - 1):
                continue
            v = _bn_values(op, graph.store(op))
            var = v["moving_variance"].astype(np.float64)
            n = var.shape[0]
            gamma = v.get("gamma", np.ones(n)).astype(np.float64)
            beta = v.get("beta", np.zeros(n)).astype(np.float64)
            sd = np.abs(gamma) * np.sqrt(var / (var + op.epsilon))
            means[i], gauss[i] = beta, (beta, sd)
        elif key in _PASS or _is_linear(op):
            if p in means:
                means[i] = means[p]
                if p in gauss:
                    gauss[i] = gauss[p]
        elif key in _POOL:
            if p in means:
                means[i] = means[p]
        elif key in ("ReLU", "Activation"):
            relu, top = _relu_top(op)
            if relu and p in gauss:
                means[i] = clipped_mean(*gauss[p], top)
        elif key == "Add":
            ins = [means.get(q) for q in node.parents]
            if all(m is not None for m in ins) and len({m.shape for m in ins}) == 1:
                means[i] = np.sum(ins, axis=0)
        elif key == "Flatten" and p in means:
            shape = op.input.shape[1:]
            positions = int(np.prod([int(d) for d in shape[:-1]])) if len(shape) > 1 else 1
            means[i] = np.tile(means[p], positions)
    return means


def _kernel_sums(params: str, kernel: np.ndarray) -> np.ndarray:
    """[inputs, outputs]: each input's kernel weights summed over spatial positions."""
    if params == "dense":
        return kernel.astype(np.float64)
    return kernel.reshape(-1, *kernel.shape[-2:]).sum(axis=0).astype(np.float64)


def correct_biases(
    graph: Graph, weights: dict[str, list[np.ndarray]], masks: dict[tuple[str, str], Any]
) -> dict[str, np.ndarray]:
    """Add every reader's lost expectation to its bias (or its BN's moving mean), in
    ``weights`` (the step's arrays after merges, before slicing); ``masks`` the kept
    input rows. Returns the lost expectation per corrected reader."""
    means = channel_means(graph)
    index = {id(n.op): i for i, n in enumerate(graph.nodes)}
    readers = {m.layer.name: m for g in graph.groups for m in g.readers if m.params in _READERS}
    lost_by: dict[str, np.ndarray] = {}
    for name, m in readers.items():
        keep = masks.get((name, "in"))
        if keep is None or keep.all():
            continue
        node = index[id(m.layer)]
        mean = means.get(graph.nodes[node].parents[0])
        if mean is None:
            continue
        mean = np.nan_to_num(mean, nan=0.0)
        before = mean @ _kernel_sums(m.params, graph.store(m.layer)[0])
        after = mean[keep] @ _kernel_sums(m.params, weights[name][0])[keep]
        lost = before - after
        w = weights[name]
        if m.layer.use_bias:
            w[1] += lost.astype(w[1].dtype)
        else:
            bn = graph.sole_bn_after(m.layer)
            if bn is None:
                continue
            mm = _bn_values(bn, weights[bn.name])["moving_mean"]
            mm -= lost.astype(mm.dtype)
        lost_by[name] = lost
    return lost_by
