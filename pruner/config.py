"""Every option that changes a pruning result, as one validating, serialisable object.

``PruneConfig`` is shared by ``prune``, ``prune_steps``, the command line and
the report (``report.json`` stores ``get_config()``, and ``from_config`` of
it reproduces the run). Constructors check each value and name the allowed
range, as TensorFlow Model Optimization's schedules do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.errors import ConfigError

MODES = ("paoding", "greedy", "baseline", "magnitude", "random")
SCOPES = ("layer", "global", "sequential")
ATTACKS = ("fgsm", "pgd")
TAU_STARTS = ("first", "median", "best")
COMPENSATIONS = ("reconstruct", "bias", "none")
PAIR_SCORES = ("auto", "activations", "weights")
BUDGETS = ("auto", "uniform", "width")


def _unit(name: str, value: Any, low_open: bool = True, high_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    lo_ok = v > 0.0 if low_open else v >= 0.0
    hi_ok = v < 1.0 if high_open else v <= 1.0
    if not (lo_ok and hi_ok):
        rng = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ConfigError(f"{name} should be in {rng}, got {value!r}")
    return v


def _count(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} should be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name} should be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class PruneConfig:
    """The options of a pruning run (defaults are the method's; see PRUNING.md).

    Schedule: ``target`` share of prunable units to remove, ``step`` share of
    each layer per step, ``round_to`` (kept widths in multiples of it; 0, the
    default, SIMD-friendly multiples where channels couple, exact targets elsewhere,
    see schedule.Schedule), ``budget`` (how the target is shared between layers:
    ``uniform``, the same share of every layer; ``width``, shares proportional
    to the square of the layers' widths; ``auto``, width for convolutional
    models with BatchNormalization, and uniform otherwise). Selection:
    ``mode``, ``scope``, ``seed``; annealing
    ``t0``, ``cooling``, ``tau_start``; robustness score ``alpha``, ``beta``,
    ``entropy_threshold``, ``max_candidates``. Data-free signals:
    ``synthetic`` inputs synthesised from the model (0 turns them off, and with
    them activation-based pair scores and compensation), ``synthesis_steps``,
    ``compensation`` (pruner.compensate; ``reconstruct``: the closed-form
    BatchNormalization-statistics bias correction, then a ridge least squares refit of
    every Dense/Conv2D reader of pruned channels on the synthesised inputs, ``ridge``
    its strength; ``bias``: the correction, then the readers' intercepts alone on the
    synthesised inputs; ``none``), ``pair_scores`` (pair saliency from the
    ``activations`` the consumer reads on the synthesised inputs, or from the
    ``weights``; ``auto``: activations when the model has a BatchNormalization
    or a convolution, whose statistics the synthesis matches, weights for plain
    MLPs, where synthesised inputs are a poor stand-in and the weight rule is
    exact). paoding and greedy score every candidate (pair merges where they are
    exact, plain removals elsewhere) with the robustness criterion on every model;
    the removed option ``dag_saliency`` is accepted only as ``"robustness"``.
    Input box ``input_lo``/``input_hi``. Measurement: ``eps``, ``attacks``, ``pgd_steps``, ``n_random`` random box
    inputs (fewer for models costlier than metrics.REFERENCE_MACS), ``measure_tflite``. Stopping: ``min_accuracy_retention``,
    ``min_robust_retention`` (need evaluation data), ``fidelity_floor`` (the
    data-free estimate of top-1 agreement with the original on real inputs whose
    upper confidence bound, under it, stops pruning and fails the run: pruner.verdict),
    ``max_accuracy_drop`` (with evaluation data, measured accuracy decides instead:
    the accuracy points a model may lose) and ``keep_below_floor`` (keep the target's
    model anyway).
    """

    target: float = 0.5
    step: float = 0.05
    round_to: int = 0
    budget: str = "auto"
    mode: str = "paoding"
    scope: str = "layer"
    seed: int = 0
    t0: float = 0.5
    cooling: float = 0.9
    tau_start: str = "first"
    alpha: float = 0.75
    beta: float = 0.25
    entropy_threshold: float = 0.9
    max_candidates: int = 2048
    synthetic: int = 192
    synthesis_steps: int = 200
    compensation: str = "reconstruct"
    pair_scores: str = "auto"
    ridge: float = 0.01
    input_lo: Any = 0.0
    input_hi: Any = 1.0
    eps: tuple[float, ...] = (0.01, 0.05, 0.1)
    attacks: tuple[str, ...] = ATTACKS
    pgd_steps: int = 10
    n_random: int = 512
    measure_tflite: bool = True
    min_accuracy_retention: float | None = None
    min_robust_retention: float | None = None
    fidelity_floor: float = 0.9
    keep_below_floor: bool = False
    max_accuracy_drop: float = 0.03

    def __post_init__(self) -> None:
        _unit("target", self.target, high_open=True)
        _unit("step", self.step)
        _choice("mode", self.mode, MODES)
        _choice("scope", self.scope, SCOPES)
        _choice("tau_start", self.tau_start, TAU_STARTS)
        _choice("compensation", self.compensation, COMPENSATIONS)
        _choice("pair_scores", self.pair_scores, PAIR_SCORES)
        _choice("budget", self.budget, BUDGETS)
        _count("seed", self.seed, 0)
        _count("round_to", self.round_to, 0)
        _count("max_candidates", self.max_candidates, 1)
        _count("synthetic", self.synthetic, 0)
        _count("synthesis_steps", self.synthesis_steps, 0)
        _count("pgd_steps", self.pgd_steps, 1)
        _count("n_random", self.n_random, 0)
        if not isinstance(self.t0, (int, float)) or self.t0 < 0:
            raise ConfigError(f"t0 should be >= 0, got {self.t0!r}")
        _unit("cooling", self.cooling)
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta <= 0:
            raise ConfigError(
                f"alpha and beta should be >= 0 with a positive sum, got {self.alpha}, {self.beta}"
            )
        _unit("entropy_threshold", self.entropy_threshold)
        if not isinstance(self.ridge, (int, float)) or self.ridge < 0:
            raise ConfigError(f"ridge should be >= 0, got {self.ridge!r}")
        _unit("fidelity_floor", self.fidelity_floor, low_open=False)
        _unit("max_accuracy_drop", self.max_accuracy_drop, low_open=False)
        for name in ("min_accuracy_retention", "min_robust_retention"):
            if getattr(self, name) is not None:
                _unit(name, getattr(self, name))
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        if any(not e > 0 for e in self.eps):
            raise ConfigError(f"every eps should be > 0, got {list(self.eps)}")
        object.__setattr__(self, "attacks", tuple(self.attacks))
        for a in self.attacks:
            _choice("attacks", a, ATTACKS)
        if self.mode == "baseline" and self.target > 0.5:
            raise ConfigError(
                f"baseline mode pairs each unit at most once, so it prunes at most 50% of each "
                f"layer; target {self.target} is above that (use paoding or greedy)"
            )
        if self.scope != "layer" and self.mode not in ("paoding", "greedy"):
            raise ConfigError(f"scope {self.scope!r} applies to paoding and greedy, not {self.mode!r}")
        from pruner.bounds import InputBox  # validates the box

        InputBox(self.input_lo, self.input_hi)

    @property
    def compensates(self) -> bool:
        """True when selection uses synthesised activations and compensation runs."""
        return self.mode in ("paoding", "greedy") and self.synthetic > 0

    def replace(self, **changes: Any) -> PruneConfig:
        """A copy with some options changed (validated again)."""
        changes = _without_removed(changes)
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown pruning option(s): {', '.join(sorted(unknown))}")
        return PruneConfig(**{**asdict(self), **changes})

    def get_config(self) -> dict[str, Any]:
        """Every option as plain JSON values."""
        out = asdict(self)
        out["eps"] = list(self.eps)
        out["attacks"] = list(self.attacks)
        for key in ("input_lo", "input_hi"):
            v = out[key]
            out[key] = v.tolist() if hasattr(v, "tolist") else v
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruneConfig:
        config = _without_removed(config)
        unknown = set(config) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown pruning option(s): {', '.join(sorted(unknown))}")
        return cls(**config)


def _without_removed(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without ``dag_saliency``, which is gone: its one remaining meaning,
    ``"robustness"``, is what paoding does on every model; the others were removed."""
    if "dag_saliency" not in options:
        return options
    if options["dag_saliency"] != "robustness":
        raise ConfigError(
            f"dag_saliency {options['dag_saliency']!r} was removed: paoding scores every "
            "model with the robustness criterion (drop the option)"
        )
    return {k: v for k, v in options.items() if k != "dag_saliency"}
