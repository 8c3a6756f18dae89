"""The public pruning verbs: ``prune`` and ``prune_steps``.

Modes:
  paoding    pair saliency + robustness impact, simulated annealing, merges
  greedy     the same at temperature 0
  baseline   Srinivas & Babu one-shot pairs (gamma = 1, at most 50%)
  magnitude  one-shot L1-norm structured pruning, no compensation
  random     seeded random units, no compensation
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError, FidelityError, PaodingWarning
from pruner.bounds import InputBox, dag_interval_bounds, interval_bounds
from pruner.config import ATTACKS, MODES, SCOPES, PruneConfig
from pruner.criteria import L1Magnitude, PairSaliency, RandomScore, RobustnessImpact, UnitView
from pruner.dag import DagGraph
from pruner.dag_surgery import advance, as_model
from pruner.graph import build_graph
from pruner.metrics import count_macs, count_params, scaled_count
from pruner.schedule import AUTO, Schedule, StopCriteria
from pruner.strategies import Annealing, GlobalAnnealing, OneShotPairs, OneShotRanking
from pruner.surgery import apply_plan

__all__ = ["ATTACKS", "MODES", "SCOPES", "PruneConfig", "PruneResult", "StepRecord", "prune",
           "prune_steps"]
FIDELITY = "below the floor"  # pruner.verdict.REFUSED: the reason of a refused step
# Reasons a run ends that keep the last model (a crossed floor keeps the one before).
TARGET_REACHED = "target reached"
BUDGET_MET = "budget met"
NO_PROGRESS = "a step could prune nothing more"
NOTHING_TO_PRUNE = "nothing to prune"
KEEPS_MODEL = (TARGET_REACHED, BUDGET_MET, NO_PROGRESS, NOTHING_TO_PRUNE)


@dataclass
class StepRecord:
    """One row of the trajectory (step 0 is the original model).

    ``ratio`` is units removed / prunable units of the original; ``robust`` maps
    attack -> {eps: robust accuracy}; ``seconds`` is the wall time of the step
    (selection, surgery and measurement); ``stop`` says why the run ended after
    this step, if it did.
    """

    step: int
    ratio: float
    units: dict[str, int]
    params: int
    macs: int
    tflite_bytes: int | None = None
    accuracy: float | None = None
    robust: dict[str, dict[float, float]] | None = None
    fidelity: float | None = None
    fidelity_random: float | None = None
    fidelity_synthetic: float | None = None
    fidelity_kl: float | None = None
    seconds: float = 0.0
    stop: str | None = None
    verdict: dict[str, Any] | None = None  # pruner.verdict.Verdict.to_dict() of this step

    @property
    def data_free_fidelity(self) -> float | None:
        """The data-free figure of the verdict (pruner.verdict): estimated top-1 agreement
        with the original on real inputs, from its margins on the check inputs
        (representative or synthesised), or plain agreement on random box inputs."""
        v = self.verdict
        if v is not None:
            return v["fidelity"] if v["evidence"] == "labelled" else v["figure"]
        return self.fidelity_synthetic if self.fidelity_synthetic is not None else (
            self.fidelity_random
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_free_fidelity"] = self.data_free_fidelity
        if self.robust is not None:
            d["robust"] = {a: {str(e): v for e, v in r.items()} for a, r in self.robust.items()}
        return d


@dataclass
class PruneResult:
    """The pruned model, its trajectory and the options that produced it."""

    model: Any
    trajectory: list[StepRecord]
    config: PruneConfig = field(default_factory=PruneConfig)
    stop_reason: str | None = None

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.config.target, self.config.step, self.config.round_to)

    @property
    def input_box(self) -> InputBox:
        return InputBox(self.config.input_lo, self.config.input_hi)

    @property
    def eps(self) -> tuple[float, ...]:
        return self.config.eps

    @property
    def final(self) -> StepRecord:
        """The trajectory row of ``model`` (the last one within the floors)."""
        for rec in reversed(self.trajectory):
            if rec.units == _widths(self.model):
                return rec
        return self.trajectory[-1]

    def to_dict(self) -> dict[str, Any]:
        """The report: every option (``config``, which from_config turns back into the
        run's PruneConfig), why the run stopped, and the trajectory."""
        final = self.final
        from pruner.outcome import outcome  # verdict, stop reason, ratio reached

        return {
            "config": self.config.get_config(),
            "mode": self.mode,
            "seed": self.seed,
            "schedule": self.schedule.get_config(),
            "stop_reason": self.stop_reason,
            "final_step": final.step,
            "data_free_fidelity": final.data_free_fidelity,
            **outcome(self.trajectory, final, self.config),
            "trajectory": [rec.to_dict() for rec in self.trajectory],
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write pruned.keras, pruned.tflite, report.json and report.png into out_dir,
        all or nothing (staged beside it, then moved in, as the command line does)."""
        from core.files import staged_dir
        from pruner.export import export_tflite

        out = Path(out_dir)
        report = self.to_dict()
        with staged_dir(out) as tmp:
            self.model.save(tmp / "pruned.keras")
            export_tflite(self.model, tmp / "pruned.tflite")
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            try:
                from pruner.report import plot_trajectory
            except ImportError:
                plot_trajectory = None
            if plot_trajectory is not None:
                plot_trajectory(report, tmp / "report.png")
        return out


def _widths(model: Any) -> dict[str, int]:
    return {g.name: g.width for g in build_graph(model).groups}


def _check_eval(model: Any, eval_data: Any) -> tuple[np.ndarray, np.ndarray] | None:
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


def _strategy(mode: str, rng: np.random.Generator, cfg: PruneConfig) -> Any:
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


class _Meter:
    """Measures a model for the trajectory."""

    def __init__(
        self, reference: Any, data: Any, box: InputBox, cfg: PruneConfig, check: Any = None,
        evidence: str = "synthesised",
    ) -> None:
        self.reference, self.data, self.box, self.cfg = reference, data, box, cfg
        self.check = check  # the verdict's data-free check inputs (pruner.fidelity)
        self.random_x = self.random_top = self.data_top = None
        from pruner.evaluate import predict, random_inputs

        if cfg.n_random > 0:  # fewer for costly models: 7 passes of 512 took 19 s at 96x96
            shape = tuple(int(d) for d in reference.inputs[0].shape[1:])
            n = scaled_count(cfg.n_random, count_macs(reference), 64)
            self.random_x = random_inputs(box, shape, n, cfg.seed)
            self.random_top = predict(reference, self.random_x).argmax(axis=-1)
        if data is not None:  # the reference's answers, for agreement with it
            self.data_top = predict(reference, data[0]).argmax(axis=-1)
        from pruner.fidelity import Gate  # the verdict of every step

        self.gate = Gate(reference, cfg.fidelity_floor, check, evidence,
                         0 if data is None else len(data[0]), cfg.max_accuracy_drop,
                         cfg.min_accuracy_retention,
                         0 if self.random_x is None else len(self.random_x))

    def tflite_bytes(self, current: Any) -> int:
        """Size of the float32 TFLite export (seconds on large models: first and last step)."""
        from pruner.export import export_tflite

        return len(export_tflite(as_model(current)))

    def __call__(self, current: Any, step: int, ratio: float, units: dict[str, int],
                 tflite: bool = False) -> StepRecord:
        if isinstance(current, DagGraph):  # sizes from the arrays: no model to build
            rec = StepRecord(step, ratio, units, current.params(), current.macs())
        else:
            rec = StepRecord(step, ratio, units, count_params(current), count_macs(current))
        model = current
        if self.data is not None or self.random_x is not None or self.check is not None:
            model = as_model(current)
        if tflite and self.cfg.measure_tflite:
            rec.tflite_bytes = self.tflite_bytes(current)
        from pruner import evaluate

        if self.data is not None:
            x, y = self.data
            rec.accuracy = evaluate.accuracy(model, x, y)
            rec.fidelity = evaluate.accuracy(model, x, self.data_top)
            if self.cfg.eps and self.cfg.attacks:
                rec.robust = {
                    attack: {
                        float(e): evaluate.robust_accuracy(
                            model,
                            x,
                            y,
                            float(e),
                            self.box,
                            attack=attack,
                            steps=self.cfg.pgd_steps,
                            seed=self.cfg.seed,
                        )
                        for e in self.cfg.eps
                    }
                    for attack in self.cfg.attacks
                }
        if self.random_x is not None:
            rec.fidelity_random = evaluate.accuracy(model, self.random_x, self.random_top)
        verdict = self.gate(model, rec)
        rec.verdict = None if verdict is None else verdict.to_dict()
        return rec


def _robust_retention(rec: StepRecord, base: StepRecord) -> float | None:
    if not rec.robust or not base.robust:
        return None
    kept = [
        rec.robust[a][e] / base.robust[a][e]
        for a in base.robust
        for e in base.robust[a]
        if base.robust[a][e] > 0
    ]
    return min(kept) if kept else None


def budget_rule(cfg: PruneConfig, graph: Any) -> str:
    """The budget rule of a run: ``auto`` is width for convolutional models with
    BatchNormalization, chains or DAGs (their narrow layers carry every later feature;
    MobileNetV2's narrow residual groups most of all) and uniform otherwise (measured:
    bench/results/prune_quality.md, bench/results/dag_selection.md)."""
    if cfg.budget != "auto":
        return cfg.budget
    conv = any(type(g.producer).__name__ == "Conv2D" for g in graph.groups)
    bn = any(type(lay).__name__ == "BatchNormalization" for lay in graph.layers)
    return "width" if conv and bn else "uniform"


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


def fidelity_failed(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(FIDELITY)


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
    activations the consumer reads on synthesised inputs and refit each
    consumer after every step (``compensation``; on DAG models the Dense/Conv2D
    readers of the pruned channels, pruner.dag_refit); a held-out part of the
    synthesised batch gives the data-free fidelity of every step. Scope:
    ``"global"`` walks the pairs of all layers together each step;
    ``"sequential"`` prunes one layer at a time, front to back (opt-in, see
    README). ``t0``, ``cooling`` and ``tau_start`` set the annealing (see
    strategies.Annealing).
    """
    cfg = resolve_config(
        config, target=target, mode=mode, schedule=schedule, stop=stop, input_box=input_box,
        **options,
    )
    for rec, current in _run(model, cfg, eval_data, stop, synthetic_inputs, progress,
                             representative_data):
        yield rec, as_model(current)


def _run(
    model: Any,
    cfg: PruneConfig,
    eval_data: Any,
    stop: StopCriteria | None,
    synthetic_inputs: np.ndarray | None,
    progress: bool,
    representative: np.ndarray | None = None,
) -> Iterator[tuple[StepRecord, Any]]:
    """prune_steps' loop. On a DAG a step's model is a DagGraph holding weight arrays:
    ``as_model`` builds the Keras model, only for the steps someone looks at."""
    if isinstance(model, (str, os.PathLike)):
        from pruner.io import load_model

        model = load_model(model)
    mode, scope, seed = cfg.mode, cfg.scope, cfg.seed
    budget = stop.budget if stop is not None else None
    stop = StopCriteria(cfg.min_accuracy_retention, cfg.min_robust_retention, budget)
    box = InputBox(cfg.input_lo, cfg.input_hi)
    graph = build_graph(model)  # refuses unsupported models before anything else
    # AUTO rounding (the default) aligns widths on DAG models only: chains keep exact targets
    schedule = Schedule(cfg.target, cfg.step, 1 if cfg.round_to == AUTO and not graph.coupled else cfg.round_to)
    box.arrays(graph.input_shape)
    data = _check_eval(model, eval_data)
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
        n_check = 0 if real is not None else n_check  # no held-out part to synthesise
        if synthetic_inputs is None:
            from pruner.synthesis import MIN_FIDELITY_STEPS, synthesize

            if cfg.synthesis_steps < MIN_FIDELITY_STEPS:
                warnings.warn(
                    f"synthesis_steps={cfg.synthesis_steps} is under {MIN_FIDELITY_STEPS}: "
                    "inputs this rough leave the data-free fidelity figure blind to the "
                    "loss (bench/results/synthesis_steps.md)", PaodingWarning, stacklevel=3)
            synthetic_inputs = synthesize(
                model, box, n=n_fit + n_check, steps=cfg.synthesis_steps, seed=seed
            )
        synthetic_inputs = np.asarray(synthetic_inputs, np.float32)
        if len(synthetic_inputs) <= n_check:
            raise ConfigError(f"synthetic_inputs needs more than {n_check} inputs")
        from pruner.fidelity import check_set

        synth = synthetic_inputs[:len(synthetic_inputs) - n_check]
        if n_check:
            check = check_set(model, synthetic_inputs[-n_check:], seed)
        # DAG readers are refitted on them (dag_refit) with compensation "reconstruct" only
        if not cfg.compensates or (graph.coupled and cfg.compensation != "reconstruct"):
            synth = None
    check = check if real is None else real
    rng = np.random.default_rng(seed)
    strategy = _strategy(mode, rng, cfg)
    if graph.coupled:  # not a chain: merges where exact, group-saliency removal elsewhere
        if scope == "global":
            raise ConfigError("scope 'global' needs a chain model; use 'layer' or 'sequential'")
        from pruner.coupled import coupled_strategy

        strategy = coupled_strategy(mode, rng, cfg.dag_saliency)
    widths0 = {g.name: g.width for g in graph.groups}
    total0 = sum(widths0.values())
    rule = budget_rule(cfg, graph)
    goals = schedule.layer_targets(widths0, rule)
    # width budgets differ between layers: each layer reaches its goal at the last step
    spread = rule == "width" and scope != "sequential"
    orig_ids = {name: np.arange(w) for name, w in widths0.items()}
    layer_steps = {name: 0 for name in widths0}  # steps that selected in each layer
    meter = _Meter(model, data, box, cfg, check, evidence)
    activation_scores = cfg.pair_scores == "activations" or (
        cfg.pair_scores == "auto"
        and any(type(lay).__name__ in ("BatchNormalization", "Conv2D") for lay in graph.layers)
    )
    one_shot = mode not in ("paoding", "greedy")
    needs_bounds = not one_shot and (not graph.coupled or cfg.dag_saliency == "bounds")
    bounds_of = dag_interval_bounds if graph.coupled else interval_bounds
    graph0 = graph

    from pruner.progress import progress_bar as tqdm

    n_steps = schedule.max_steps - 1
    if scope == "sequential":
        n_steps *= len(graph.groups)
    bar = tqdm(total=n_steps, disable=not progress, desc=f"prune {mode}", unit="step")
    try:
        t = time.perf_counter()
        base = meter(model, 0, 0.0, dict(widths0), tflite=True)
        base.seconds = time.perf_counter() - t
        if not graph.groups or all(g == 0 for g in goals.values()):
            base.stop = NOTHING_TO_PRUNE
            yield base, model
            return
        yield base, model
        previous, current, number = base, graph0 if graph0.coupled else model, 0
        last = current  # the model of ``previous``
        while True:
            number += 1
            t = time.perf_counter()
            if one_shot:  # every ratio is a one-shot selection on the original model
                graph, source = graph0, model
                done = {name: 0 for name in widths0}
            else:  # a DAG step's graph is the previous step's result, no rebuild
                graph = current if graph0.coupled else build_graph(current)
                source = current
                done = {g.name: widths0[g.name] - g.width for g in graph.groups}
            bounds = bounds_of(graph, box) if needs_bounds else None
            if graph0.coupled and synth is not None and hasattr(strategy, "observe"):
                strategy.observe(graph, synth)  # activation-aware DAG saliency (coupled.py)
            plan = {}
            acts = {}
            if synth is not None and activation_scores and not graph0.coupled:
                from pruner.compensate import consumer_inputs

                acts = consumer_inputs(source, [g.consumer.name for g in graph.groups], synth)
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
                views.append(UnitView.of(graph, group, ids, bounds, acts.get(group.consumer.name)))
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
            if graph0.coupled:  # BN-statistics bias correction unless compensation is "none"
                correct = not one_shot and cfg.compensation != "none"
                current = advance(graph, plan, correct)
                if synth is not None and not one_shot:
                    from pruner.dag_refit import readers_of, refit

                    ids = {n: np.delete(orig_ids[n], plan[n].remove if n in plan else [])
                           for n in widths0}
                    refit(current, synth, readers_of(graph, set(plan)), ids, cfg.ridge)
            else:
                current = apply_plan(source, graph, plan)
            for name in widths0:
                gone = plan[name].remove if name in plan else []
                base_ids = np.arange(widths0[name]) if one_shot else orig_ids[name]
                orig_ids[name] = np.delete(base_ids, gone)
            if synth is not None and cfg.compensation != "none" and not graph0.coupled:
                from pruner.compensate import correct_biases, reconstruct

                consumers = [g.consumer.name for g in graph.groups]
                if cfg.compensation == "reconstruct":
                    reconstruct(model, current, synth, consumers, orig_ids, cfg.ridge)
                else:
                    correct_biases(model, current, synth, consumers, orig_ids)
            units = {name: len(ids) for name, ids in orig_ids.items()}
            ratio = (total0 - sum(units.values())) / total0
            rec = meter(current, number, ratio, units)
            rec.seconds = time.perf_counter() - t
            bar.update(1)
            bar.set_postfix(ratio=f"{ratio:.2f}")
            robust = _robust_retention(rec, base)
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
    for rec, pruned in _run(model, cfg, eval_data, budget, synthetic_inputs, progress,
                            representative_data):
        trajectory.append(rec)
        if rec.stop is None or rec.stop in KEEPS_MODEL:
            chosen = pruned
    result = PruneResult(
        model=as_model(chosen),  # a DAG's steps stay arrays until here
        trajectory=trajectory,
        config=cfg,
        stop_reason=trajectory[-1].stop if trajectory else None,
    )
    if fidelity_failed(result.stop_reason):
        from pruner.outcome import refusal_message

        raise FidelityError(refusal_message(trajectory[-1], result.final, cfg))
    return result
