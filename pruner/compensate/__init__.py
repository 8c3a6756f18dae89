"""Compensation: what changes the weights that stay when channels go, behind one entry
point. Merges where they are exact (graph.surgery.merge: o_a += gamma * o_b), the
closed-form bias correction from BatchNormalization statistics (bias), and the refit
of the readers on synthesised inputs (refit: ridge least squares, or the intercept
alone)."""

from __future__ import annotations

import numpy as np

from pruner.compensate.bias import correct_biases
from pruner.compensate.refit import readers_of, refit
from pruner.graph.dag import Graph
from pruner.graph.plan import Plan
from pruner.graph.surgery import cut, merge

HOW = ("reconstruct", "bias", "none")


def compensate(
    graph: Graph,
    plan: Plan,
    how: str = "reconstruct",
    synth: np.ndarray | None = None,
    kept: dict[str, np.ndarray] | None = None,
    ridge: float = 1e-2,
) -> Graph:
    """The graph after ``plan`` with its loss compensated (``graph`` is not changed).

    ``how``: ``none`` merges and cuts only; ``bias`` adds the BatchNormalization
    statistics' correction and, given synthesised inputs ``synth``, refits each
    reader's intercept on them; ``reconstruct`` refits the readers' weights too.
    ``kept``: per group, the original channels still there after the plan.
    """
    weights, masks = merge(graph, plan)
    if how != "none":
        correct_biases(graph, weights, masks)
    new = cut(graph, plan, weights, masks)
    if how != "none" and synth is not None:
        refit(new, synth, readers_of(graph, set(plan)), kept or {}, ridge,
              bias_only=how == "bias")
    return new
