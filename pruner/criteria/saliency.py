"""Criteria that score units or pairs of units of one channel group; they never choose or
cut.

A pair (a, b) means "keep a, remove b and fold b's outgoing weights into a"
with factor gamma. Matrices are indexed [a, b]. Per-unit scores rank plain
removals (low goes first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError
from pruner.graph.dag import ChannelGroup, Graph, bn_channels, producer_kernel


@dataclass
class UnitView:
    """What criteria may read about one group at one step."""

    graph: Graph
    group: ChannelGroup
    w_in: np.ndarray  # [n, fan_in + 1], BatchNormalization folded
    w_out: np.ndarray  # [n, k]: the readers' rows (after any BN that follows the nonlinearity)
    orig_ids: np.ndarray  # original unit index of every current unit
    bounds: list[tuple[np.ndarray, np.ndarray]] | None = None  # per node (interval_bounds)
    acts: np.ndarray | None = None  # [rows, n]: what the readers read, synthesised inputs

    @classmethod
    def of(
        cls,
        graph: Graph,
        group: ChannelGroup,
        orig_ids: np.ndarray,
        bounds: list[tuple[np.ndarray, np.ndarray]] | None = None,
        acts: np.ndarray | None = None,
    ) -> UnitView:
        return cls(graph, group, group.incoming(), group.outgoing(), np.asarray(orig_ids),
                   bounds, acts)

    @property
    def n(self) -> int:
        return self.w_in.shape[0]


class PairSaliency:
    """gamma(a,b) = max(0, <w_a,w_b>/||w_a||^2) and s(a,b) = ||w_b - gamma w_a|| * ||o_b||.

    ``gamma="auto"`` uses the ratio for positively homogeneous activations
    (ReLU, linear) and 1 otherwise; ``gamma="one"`` always uses 1 (Srinivas &
    Babu). The diagonal is +inf.
    """

    def __init__(self, gamma: str = "auto") -> None:
        if gamma not in ("auto", "one"):
            raise ConfigError(f"gamma must be 'auto' or 'one', got {gamma!r}")
        self.gamma = gamma

    def __call__(self, view: UnitView) -> tuple[np.ndarray, np.ndarray]:
        if view.acts is not None and self.gamma == "auto":
            return self.from_activations(view)
        w = view.w_in
        gram = w @ w.T
        sq = np.diag(gram).copy()
        if self.gamma == "auto" and view.group.homogeneous:
            with np.errstate(divide="ignore", invalid="ignore"):
                gamma = np.where(sq[:, None] > 0, gram / sq[:, None], 0.0)
            gamma = np.maximum(gamma, 0.0)
        else:
            gamma = np.ones_like(gram)
        # ||w_b - g w_a||^2 = ||w_b||^2 - 2 g <w_a, w_b> + g^2 ||w_a||^2
        dist2 = sq[None, :] - 2.0 * gamma * gram + gamma**2 * sq[:, None]
        group = view.group
        scale, _ = group.post_affine()  # o_b: what reads h_b, through a BN after it
        out_norm = np.linalg.norm(view.w_out, axis=1) * np.abs(scale)
        saliency = np.sqrt(np.maximum(dist2, 0.0)) * out_norm[None, :]
        if group.post_bn is not None:  # the merge divides by s_a; max pooling needs k >= 0
            bad = np.broadcast_to(scale[:, None] == 0, saliency.shape)
            if group.post_max:
                bad = bad | (gamma * scale[None, :] * scale[:, None] < 0)
            saliency = np.where(bad, np.inf, saliency)
        np.fill_diagonal(saliency, np.inf)
        return gamma, saliency


    def from_activations(self, view: UnitView) -> tuple[np.ndarray, np.ndarray]:
        """The same pair score from what the consumer actually reads, u (on synthesised
        inputs): u_b ~ k*u_a with k = max(0, cov(a,b)/var(a)), and
        s(a,b) = std(u_b - k*u_a) * ||o_b|| (o_b the readers' raw rows). The
        means are left to bias correction. Returned gamma is the factor the surgery
        expects (k rescaled by a BatchNormalization after the nonlinearity)."""
        u = view.acts.astype(np.float64)
        if u.ndim != 2 or u.shape[1] != view.n:  # maps (or a flattened map): each position
            u = u.reshape(-1, view.n)  # is one more sample of every unit (channels last)
        cov = np.cov(u, rowvar=False).reshape(view.n, view.n)
        var = np.diag(cov).copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(var[:, None] > 1e-12, cov / var[:, None], 0.0)
        k = np.maximum(k, 0.0)
        resid = var[None, :] - 2.0 * k * cov + k**2 * var[:, None]
        scale, _ = view.group.post_affine()
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma = k * scale[:, None] / scale[None, :]
        saliency = np.sqrt(np.maximum(resid, 0.0)) * np.linalg.norm(view.w_out, axis=1)[None, :]
        saliency = np.where(np.isfinite(gamma), saliency, np.inf)
        gamma = np.where(np.isfinite(gamma), gamma, 0.0)
        np.fill_diagonal(saliency, np.inf)
        return gamma, saliency


class GroupSaliency:
    """Per-channel saliency summed over a coupled group, data-free, in the spirit of DFPC
    (Narshana et al., 2023): what flows into the channel (each producer's folded filter
    norm, times the per-channel scales of the depthwise filters and BatchNormalizations
    it passes) times what flows out of it (the norm of every reader's kernel rows).
    It orders the plain removals the robustness criterion scores in groups that cannot
    merge."""

    def __call__(self, view: UnitView) -> np.ndarray:
        group = view.group
        n = group.width
        inflow = np.zeros(n)
        for m in group.producers:
            kernel, _ = producer_kernel(m.layer, group.store(m.layer))
            inflow += np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]).T, axis=1)
        gain = np.ones(n)
        for m in group.members:
            if m.role != "chan":
                continue
            if m.params == "bn":
                gain *= np.abs(bn_channels(m.layer, m.offset, n, group.store(m.layer))[0])
            else:  # depthwise filter of each channel
                k = group.store(m.layer)[0][:, :, m.offset : m.offset + n, :]
                gain *= np.linalg.norm(np.moveaxis(k, 2, 0).reshape(n, -1), axis=1)
        return inflow * gain * np.linalg.norm(view.w_out, axis=1)


class L1Magnitude:
    """L1 norm of each channel's filters summed over the group's producers (Li et al.
    2017); low means remove first."""

    def __call__(self, view: UnitView) -> np.ndarray:
        group = view.group
        total = np.zeros(group.width)
        for m in group.producers:
            kernel, _ = producer_kernel(m.layer, group.store(m.layer))
            total += np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(axis=0)
        return total


class RandomScore:
    """Seeded random per-unit scores, drawn once per original unit so a run is a fixed order."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._scores: dict[str, np.ndarray] = {}

    def __call__(self, view: UnitView) -> np.ndarray:
        name = view.group.name
        if name not in self._scores:
            size = int(view.orig_ids.max()) + 1 if view.orig_ids.size else 0
            self._scores[name] = self.rng.random(size)
        return self._scores[name][view.orig_ids]


def reader_activations(graph: Graph, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Per named group: what its first reader reads of the group's channels on inputs x,
    as [rows, width] (every position of a feature map, or of a Flatten, is a row)."""
    import keras

    from pruner.graph.surgery import as_model

    groups = [graph.group(n) for n in names if graph.group(n).readers]
    if not groups or len(x) == 0:
        return {}
    model = as_model(graph)
    readers = [g.readers[0] for g in groups]
    layers = sorted({m.layer.name for m in readers})
    probe = keras.Model(model.inputs[0], [model.get_layer(n).input for n in layers])
    outs = [probe(x[i : i + 256], training=False) for i in range(0, len(x), 256)]
    outs = [[o] if len(layers) == 1 else list(o) for o in outs]
    value = {n: np.concatenate([np.asarray(o[j]) for o in outs]) for j, n in enumerate(layers)}
    return {
        g.name: value[m.layer.name].reshape(-1, m.total)[:, m.offset : m.offset + g.width]
        for g, m in zip(groups, readers, strict=True)
    }
