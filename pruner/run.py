"""The progressive pruning loop: each step scores the groups, selects, cuts, compensates
and measures, until the target, a floor or a step that prunes nothing ends the run."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError, PaodingWarning
from pruner.bounds import InputBox, interval_bounds
from pruner.compensate import compensate
from pruner.config import PruneConfig
from pruner.criteria import (
    L1Magnitude,
    PairSaliency,
    RandomScore,
    RobustnessImpact,
    UnitView,
    reader_activations,
)
from pruner.graph import Graph, as_model, build_graph
from pruner.meter import Meter, robust_retention
from pruner.metrics import count_macs
from pruner.result import (
    BUDGET_MET,
    NO_PROGRESS,
    NOTHING_TO_PRUNE,
    TARGET_REACHED,
    StepRecord,
)
from pruner.schedule import AUTO, Schedule, StopCriteria
from pruner.strategies import Annealing, GlobalAnnealing, OneShotPairs, OneShotRanking


def check_eval(model: Any, eval_data: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if eval_data is None:
        return None
    try:
        x, y = eval_data
    except (TypeError, ValueError) as exc:
        raise DataError("eval_data must be a pair (x, y)") from exc
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    want = tuple(int(d) for d in model.inputs[0].shape[1:])
    if tuple(x.shape[1:]) != want:
        raise DataError(
            f"evaluation inputs of shape {tuple(x.shape[1:])} do not fit the model's input "
            f"shape {want}"
        )
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"evaluation set has {len(x)} inputs and {len(y)} labels")
    return x, y


def strategy_for(mode: str, rng: np.random.Generator, cfg: PruneConfig) -> Any:
    """The selection of ``mode``: paoding and greedy anneal over pair merges where they are
    exact and plain removals elsewhere, every candidate scored by the robustness impact."""
    impact = RobustnessImpact(cfg.alpha, cfg.beta, cfg.entropy_threshold)
    if mode in ("paoding", "greedy"):
        cls = GlobalAnnealing if cfg.scope == "global" else Annealing
        t0 = cfg.t0 if mode == "paoding" else 0.0
        return cls(
            rng, PairSaliency(), impact, t0, cfg.cooling, cfg.max_candidates,
            tau_start=cfg.tau_start,
        )
    if mode == "baseline":
        return OneShotPairs()
    if mode == "magnitude":
        return OneShotRanking(L1Magnitude())
    return OneShotRanking(RandomScore(rng))


def budget_rule(cfg: PruneConfig, graph: Any) -> str:
    """The budget rule of a run: ``auto`` is width for convolutional models with
    BatchNormalization (their narrow layers carry every later feature;
    MobileNetV2's narrow residual groups most of all) and uniform otherwise (measured:
    bench/results/prune_quality.md, bench/results/dag_selection.md)."""
    if cfg.budget != "auto":
        return cfg.budget
    conv = any(type(g.producer).__name__ == "Conv2D" for g in graph.groups)
    bn = any(type(lay).__name__ == "BatchNormalization" for lay in graph.layers)
    return "width" if conv and bn else "uniform"


def run(
    model: Any,
    cfg: PruneConfig,
    eval_data: Any,
    stop: StopCriteria | None,
    synthetic_inputs: np.ndarray | None,
    progress: bool,
    representative: np.ndarray | None = None,
) -> Iterator[tuple[StepRecord, Graph]]:
    """The loop of ``api.prune_steps``. A step's model is a Graph holding weight arrays:
    ``as_model`` builds the Keras model, only for the steps someone looks at."""
    if isinstance(model, (str, os.PathLike)):
        from pruner.io import load_model

        model = load_model(model)
    mode, scope, seed = cfg.mode, cfg.scope, cfg.seed
    budget = stop.budget if stop is not None else None
    stop = StopCriteria(cfg.min_accuracy_retention, cfg.min_robust_retention, budget)
    box = InputBox(cfg.input_lo, cfg.input_hi)
    graph = build_graph(model)  # refuses unsupported models before anything else
    # AUTO rounding (the default) aligns widths where channels couple (depthwise layers,
    # residual adds: the mobile models); other models keep exact targets
    aligned = any(g.coupled for g in graph.groups)
    schedule = Schedule(cfg.target, cfg.step,
                        1 if cfg.round_to == AUTO and not aligned else cfg.round_to)
    box.arrays(graph.input_shape)
    data = check_eval(model, eval_data)
    if stop.needs_eval and data is None:
        raise ConfigError("accuracy or robustness floors need eval_data")
    evidence, real = "synthesised", None
    if representative is not None:  # real inputs check the verdict (pruner.verdict)
        from pruner.representative import check_shape

        evidence, real = "representative", check_shape(representative, graph.input_shape)
    synth = check = None
    if cfg.synthetic > 0:  # inputs made from the model: refits, scores and the fidelity figure
        from pruner.synthesis import counts

        n_fit, n_check = counts(cfg.synthetic, count_macs(model))
        n_check = 0 if real is not None else n_check  # real inputs replace the check synthesis
        if synthetic_inputs is None:
            from pruner.synthesis import MIN_FIDELITY_STEPS, synthesize

            if cfg.synthesis_steps < MIN_FIDELITY_STEPS:
                warnings.warn(
                    f"synthesis_steps={cfg.synthesis_steps} is under {MIN_FIDELITY_STEPS}: "
                    "inputs this rough leave the data-free fidelity figure blind to the "
                    "loss (bench/results/synthesis_steps.md)", PaodingWarning, stacklevel=3)
            # the fitting inputs alone: the check set is a separate synthesis (below)
            synthetic_inputs = synthesize(model, box, n=n_fit, steps=cfg.synthesis_steps,
                                          seed=seed)
        synthetic_inputs = np.asarray(synthetic_inputs, np.float32)
        if len(synthetic_inputs) == 0:
            raise ConfigError("synthetic_inputs is empty")
        synth = synthetic_inputs[:n_fit]  # a caller's batch may carry held-out inputs after
        if n_check:  # the verdict's check set: a separate synthesis (pruner.fidelity)
            from pruner.fidelity import check_inputs

            check = check_inputs(model, box, n_check, seed)
        if not cfg.compensates:
            synth = None
    check = check if real is None else real
    rng = np.random.default_rng(seed)
    strategy = strategy_for(mode, rng, cfg)
    fixed = [g.name for g in graph.groups if not g.mergeable]
    if scope == "global" and fixed:
        raise ConfigError(f"scope 'global' walks pair merges across layers, and group {fixed[0]!r} "
                          "cannot merge (coupled channels); use 'layer' or 'sequential'")
    widths0 = {g.name: g.width for g in graph.groups}
    total0 = sum(widths0.values())
    rule = budget_rule(cfg, graph)
    goals = schedule.layer_targets(widths0, rule)
    # width budgets differ between layers: each layer reaches its goal at the last step
    spread = rule == "width" and scope != "sequential"
    orig_ids = {name: np.arange(w) for name, w in widths0.items()}
    layer_steps = {name: 0 for name in widths0}  # steps that selected in each layer
    meter = Meter(model, data, box, cfg, check, evidence)
    activation_scores = cfg.pair_scores == "activations" or (
        cfg.pair_scores == "auto"
        and any(type(lay).__name__ in ("BatchNormalization", "Conv2D") for lay in graph.layers)
    )
    one_shot = mode not in ("paoding", "greedy")
    how = "none" if one_shot else cfg.compensation
    graph0 = graph

    from pruner.progress import progress_bar as tqdm

    n_steps = schedule.max_steps - 1
    if scope == "sequential":
        n_steps *= len(graph.groups)
    bar = tqdm(total=n_steps, disable=not progress, desc=f"prune {mode}", unit="step")
    try:
        t = time.perf_counter()
        base = meter(graph0, 0, 0.0, dict(widths0), tflite=True)
        base.seconds = time.perf_counter() - t
        if not graph.groups or all(g == 0 for g in goals.values()):
            base.stop = NOTHING_TO_PRUNE
            yield base, graph0
            return
        yield base, graph0
        previous, current, number = base, graph0, 0
        last = current  # the graph of ``previous``
        while True:
            number += 1
            t = time.perf_counter()
            if one_shot:  # every ratio is a one-shot selection on the original model
                graph = graph0
                done = {name: 0 for name in widths0}
            else:  # a step's graph is the previous step's result, no rebuild
                graph = current
                done = {g.name: widths0[g.name] - g.width for g in graph.groups}
            bounds = None if one_shot else interval_bounds(graph, box)
            plan = {}
            acts = {}
            if synth is not None and activation_scores:  # pair scores where merges are exact
                acts = reader_activations(graph, synth,
                                          [g.name for g in graph.groups if g.mergeable])
            views, quotas, caps = [], {}, {}
            active = None  # sequential: the first layer still short of its goal
            if scope == "sequential":
                active = next(g.name for g in graph.groups if goals[g.name] > done[g.name])
            for group in graph.groups:
                name = group.name
                if active is not None and name != active:
                    continue
                caps[name] = goals[name] - done[name]
                if spread:  # the layer's budget spread evenly: floor(goal * number / steps)
                    share = min(1.0, number / max(1, schedule.max_steps - 1))
                    quotas[name] = min(math.floor(goals[name] * share + 1e-9) - done[name],
                                       caps[name])
                else:
                    per_step = schedule.layer_quota(widths0[name])
                    quotas[name] = min(per_step * (number if one_shot else 1), caps[name])
            if spread and quotas and max(quotas.values()) <= 0:  # every step removes a unit
                name = max(caps, key=lambda n: caps[n] / max(1, goals[n]))
                quotas[name] = min(1, caps[name])
            for group in graph.groups:
                name = group.name
                if quotas.get(name, 0) <= 0:
                    continue
                ids = np.arange(widths0[name]) if one_shot else orig_ids[name]
                views.append(UnitView.of(graph, group, ids, bounds, acts.get(name)))
            if scope == "global":
                plan = strategy.select_all(views, quotas, caps, number - 1)
            for view in views if scope != "global" else []:
                name = view.group.name
                gp = strategy.select(view, quotas[name], layer_steps[name])
                layer_steps[name] += 1
                if gp.remove:
                    plan[name] = gp
            removed_before = total0 - sum(len(ids) for ids in orig_ids.values())
            removed_now = sum(len(gp.remove) for gp in plan.values())
            if not one_shot:
                removed_now += removed_before
            if not plan or removed_now <= removed_before:
                previous.stop = previous.stop or NO_PROGRESS
                if cfg.measure_tflite and previous.tflite_bytes is None:
                    previous.tflite_bytes = meter.tflite_bytes(last)
                return
            for name in widths0:
                gone = plan[name].remove if name in plan else []
                base_ids = np.arange(widths0[name]) if one_shot else orig_ids[name]
                orig_ids[name] = np.delete(base_ids, gone)
            current = compensate(graph, plan, how, synth, orig_ids, cfg.ridge)
            units = {name: len(ids) for name, ids in orig_ids.items()}
            ratio = (total0 - sum(units.values())) / total0
            rec = meter(current, number, ratio, units)
            rec.seconds = time.perf_counter() - t
            bar.update(1)
            bar.set_postfix(ratio=f"{ratio:.2f}")
            robust = robust_retention(rec, base)
            reason = stop.floor_crossed(rec.accuracy, robust, base.accuracy, 1.0)
            if reason is None and not cfg.keep_below_floor:  # the gate decides on the bound
                from pruner.verdict import refusal

                reason = refusal(rec.verdict)
            if reason is None and stop.budget is not None and stop.budget_met(as_model(current)):
                reason = BUDGET_MET
            if reason is None and all(widths0[n] - units[n] >= goals[n] for n in units):
                reason = TARGET_REACHED
            rec.stop = reason
            if reason is not None and cfg.measure_tflite:  # the last step: sizes before/after
                rec.tflite_bytes = meter.tflite_bytes(current)
            yield rec, current
            if reason is not None:
                return
            previous, last = rec, current
    finally:
        bar.close()
