"""The public pruning verbs: ``prune`` and ``prune_steps``.

Modes:
  paoding    pair saliency + robustness impact, simulated annealing, merges where
             exact and plain removals elsewhere (every model: one graph)
  greedy     the same at temperature 0
  baseline   Srinivas & Babu one-shot pairs (gamma = 1, at most 50%)
  magnitude  one-shot L1-norm structured pruning, no compensation
  random     seeded random units, no compensation
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from core.errors import FidelityError
from pruner.bounds import InputBox
from pruner.config import ATTACKS, MODES, SCOPES, PruneConfig
from pruner.graph import as_model
from pruner.result import KEEPS_MODEL, PruneResult, StepRecord, fidelity_failed
from pruner.run import run
from pruner.schedule import Schedule, StopCriteria

__all__ = ["ATTACKS", "MODES", "SCOPES", "PruneConfig", "PruneResult", "StepRecord", "prune",
           "prune_steps"]


def resolve_config(
    config: PruneConfig | None = None,
    *,
    target: float | None = None,
    mode: str | None = None,
    schedule: Schedule | None = None,
    stop: StopCriteria | None = None,
    input_box: InputBox | None = None,
    **options: Any,
) -> PruneConfig:
    """One PruneConfig from a base config, the legacy objects and keyword options."""
    changes: dict[str, Any] = dict(options)
    if schedule is not None:
        changes.update(schedule.get_config())
    if target is not None:
        changes["target"] = target
    if mode is not None:
        changes["mode"] = mode
    if stop is not None:
        changes.update({k: v for k, v in stop.get_config().items() if v is not None})
    if input_box is not None:
        changes.update(input_lo=input_box.lo, input_hi=input_box.hi)
    return (config or PruneConfig()).replace(**changes)


def prune_steps(
    model: Any,
    target: float | None = None,
    mode: str | None = None,
    *,
    config: PruneConfig | None = None,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    schedule: Schedule | None = None,
    stop: StopCriteria | None = None,
    input_box: InputBox | None = None,
    synthetic_inputs: np.ndarray | None = None,
    representative_data: np.ndarray | None = None,
    progress: bool = True,
    **options: Any,
) -> Iterator[tuple[StepRecord, Any]]:
    """Prune progressively; yield (StepRecord, model) for the original (step 0) and each step.

    The options are one ``PruneConfig`` (``config``), changed by keyword
    options of the same names (``seed=1, step=0.1``); ``schedule``, ``stop``
    and ``input_box`` objects are accepted too. The run ends at the target,
    when a step prunes nothing, when a floor is crossed (that step is still
    yielded, with ``stop`` set): accuracy or robust accuracy retention (need
    ``eval_data``) or the data-free fidelity floor (unless
    ``keep_below_floor``), or when ``stop.budget(model)`` is met. ``model`` may
    be a path. paoding and greedy prune the previous step's model (recursive
    merges); baseline, magnitude and random select on the original model at
    every ratio (one-shot). ``synthetic_inputs`` (a batch synthesised by
    ``pruner.synthesis.synthesize`` for this model) saves the synthesis.
    ``representative_data`` (unlabeled real inputs) replaces the synthesised check
    inputs of the verdict (pruner.verdict; labelled ``eval_data`` decides over both).

    With ``synthetic`` > 0 (the default) paoding and greedy score pairs on the
    activations the readers read on synthesised inputs and refit the Dense/Conv2D
    readers of the pruned channels after every step (``compensation``,
    pruner.compensate); a separate synthesis (pruner.fidelity.check_inputs)
    gives the data-free fidelity of every step. Scope:
    ``"global"`` walks the pairs of all layers together each step;
    ``"sequential"`` prunes one layer at a time, front to back (opt-in, see
    README). ``t0``, ``cooling`` and ``tau_start`` set the annealing (see
    strategies.Annealing).
    """
    cfg = resolve_config(
        config, target=target, mode=mode, schedule=schedule, stop=stop, input_box=input_box,
        **options,
    )
    for rec, current in run(model, cfg, eval_data, stop, synthetic_inputs, progress,
                            representative_data):
        yield rec, as_model(current)


def prune(
    model: Any,
    target: float | None = None,
    mode: str | None = None,
    *,
    config: PruneConfig | None = None,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    schedule: Schedule | None = None,
    stop: StopCriteria | None = None,
    input_box: InputBox | None = None,
    synthetic_inputs: np.ndarray | None = None,
    representative_data: np.ndarray | None = None,
    progress: bool = True,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` until ``target`` of its prunable units are gone; see prune_steps.

    The result's model is the last one within the stop floors (the step that
    crossed a floor stays in the trajectory, marked with its reason). When the
    data-free fidelity floor stopped the run before the target, FidelityError
    says so (``keep_below_floor=True`` prunes to the target regardless).
    """
    cfg = resolve_config(
        config, target=target, mode=mode, schedule=schedule, stop=stop, input_box=input_box,
        **options,
    )
    trajectory: list[StepRecord] = []
    chosen = None
    budget = StopCriteria(budget=stop.budget) if stop is not None else None
    for rec, pruned in run(model, cfg, eval_data, budget, synthetic_inputs, progress,
                           representative_data):
        trajectory.append(rec)
        if rec.stop is None or rec.stop in KEEPS_MODEL:
            chosen = pruned
    result = PruneResult(
        model=as_model(chosen),  # the steps stay arrays until here
        trajectory=trajectory,
        config=cfg,
        stop_reason=trajectory[-1].stop if trajectory else None,
    )
    if fidelity_failed(result.stop_reason):
        from pruner.outcome import refusal_message

        raise FidelityError(refusal_message(trajectory[-1], result.final, cfg))
    return result
