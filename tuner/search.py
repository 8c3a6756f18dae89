"""The budget tuner: from a model and a device profile to the candidate that meets every budget.

Search space: pruning mode and seed x progressive pruning step (ratio) x
export type (float32, float16, dynamic-range, int8). The search is
predict-first (NetAdapt-style, with a latency model in place of a lookup
table): every pruning step is exported as float32 and measured on the host
for accuracy and robust accuracy; its other export types are estimated
cheaply and only the promising ones are exported and measured. A candidate
meets the profile when its predicted p90 latency, predicted peak memory and
exact .tflite size are within the budgets, its accuracy and robust accuracy
retention are above the floors, and the device's runtime can load it (the
op-version rule below). The chosen candidate is the one with the best robust
accuracy (then accuracy, then latency).

``verify`` closes the loop on a real or emulated device over MQTT: it
deploys the chosen candidate, compares the measured latency and memory with
the budgets, rescales the latency model by measured / predicted, and moves
to the next candidate when the measurement misses (up to ``rounds`` times).

Robust accuracy here is white-box on each candidate's float model (FGSM and
PGD, crafted with gradients of that model) and transferred to its .tflite
export: the share of evaluation samples classified correctly both clean and
under attack, averaged over the attacks and epsilons.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError
from device_profiles import latency as lat
from device_profiles.schema import DeviceProfile
from tuner import choice
from tuner.candidates import EXPORTS, Candidate, Step, TuneResult, estimate, runtime_check
from tuner.choice import choose
from tuner.quiet import native_quiet


@dataclass
class Search:
    """Pruned models, exports and evaluations shared by the tunings of several profiles."""

    model: Any
    x: np.ndarray
    y: np.ndarray
    labelled: bool
    box: Any
    eps: tuple[float, ...] = (0.05,)
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    pgd_steps: int = 10
    robust_samples: int = 200
    calibration: np.ndarray | None = None
    progress: bool = True
    steps: dict[tuple[str, int], list[Step]] = field(default_factory=dict)
    # (mode, seed) -> the retention at which that run stopped early (None: it did not)
    stopped_at: dict[tuple[str, int], float | None] = field(default_factory=dict)
    schedule: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    exports: dict[tuple[str, int, int, str], bytes] = field(default_factory=dict)
    scores: dict[tuple[str, int, int, str], tuple[float, float]] = field(default_factory=dict)
    # (mode, seed) -> the suspended pruning run that stopped early (resumed by prune)
    runs: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def create(
        cls,
        model: Any,
        eval_data: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        input_box: Any = None,
        eps: Sequence[float] = (0.05,),
        attacks: Sequence[str] = ("fgsm", "pgd"),
        robust_samples: int = 200,
        progress: bool = True,
        seed: int = 0,
        representative: np.ndarray | None = None,
    ) -> Search:
        """Validate the inputs; without eval data, label ``representative`` inputs (or
        random inputs from the box) by the original model. Representative inputs also
        calibrate int8."""
        from pruner.bounds import InputBox
        from pruner.evaluate import predict, random_inputs

        if isinstance(model, (str, os.PathLike)):
            from pruner.io import load_model

            model = load_model(model)
        box = input_box or InputBox(0.0, 1.0)
        shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        if any(float(e) <= 0 for e in eps) or not eps:
            raise ConfigError(f"eps must be one or more values > 0, got {list(eps)}")
        if eval_data is None:
            x = (random_inputs(box, shape, 512, seed) if representative is None
                 else np.asarray(representative, np.float32))
            y = np.argmax(predict(model, x), axis=1).astype(np.int64)
            labelled = False
        else:
            x, y = (np.asarray(a) for a in eval_data)
            x = x.astype(np.float32)
            if x.shape[1:] != shape:
                raise DataError(f"eval data x has shape {x.shape[1:]}, the model expects {shape}")
            if len(x) != len(y) or len(x) == 0:
                raise DataError(f"eval data has {len(x)} inputs and {len(y)} labels")
            y = np.asarray(y).reshape(-1).astype(np.int64)
            labelled = True
        return cls(
            model=model,
            x=x,
            y=y,
            labelled=labelled,
            box=box,
            eps=tuple(float(e) for e in eps),
            attacks=tuple(attacks),
            robust_samples=robust_samples,
            calibration=(x if representative is None else representative)[:100],
            progress=progress,
        )

    # -- pruning ---------------------------------------------------------------------------

    def _adversarial(self, model: Any) -> list[np.ndarray]:
        from pruner import evaluate

        n = min(self.robust_samples, len(self.x))
        xs, ys = self.x[:n], self.y[:n]
        out = []
        for attack in self.attacks:
            for e in self.eps:
                if attack == "fgsm":
                    out.append(evaluate.fgsm(model, xs, ys, e, self.box))
                else:
                    out.append(evaluate.pgd(model, xs, ys, e, self.box, steps=self.pgd_steps))
        return out

    def prune(
        self,
        mode: str,
        seed: int,
        max_ratio: float,
        step: float,
        stop_retention: float | None = None,
    ) -> list[Step]:
        """Progressive pruning steps of one (mode, seed), each exported as float32.

        A run that stopped early (its last step under ``stop_retention``) stays suspended:
        a later call with a lower retention goes on from that step instead of pruning from
        the start again (the profiles of one search have different floors)."""
        key = (mode, seed)
        same = self.schedule.get(key) == (max_ratio, step)
        if key in self.steps and same:
            early = self.stopped_at.get(key)
            if early is None or (stop_retention is not None and stop_retention >= early):
                return self.steps[key]
        if not same:  # another schedule: its steps are other models
            self.exports = {k: v for k, v in self.exports.items() if k[:2] != key}
            self.scores = {k: v for k, v in self.scores.items() if k[:2] != key}
            self.steps.pop(key, None)
            old = self.runs.pop(key, None)
            if old is not None:
                old.close()
        self.schedule[key] = (max_ratio, step)
        steps = list(self.steps.get(key, []))
        gen = self.runs.pop(key, None)
        if gen is None:
            from pruner.api import prune_steps

            steps = []
            gen = prune_steps(
                self.model,
                target=max_ratio,
                mode=mode,
                seed=seed,
                step=step,
                input_box=self.box,
                measure_tflite=False,
                eps=(),
                n_random=0,
                progress=False,  # a suspended run would leave its bar open: the bar is here
                keep_below_floor=True,  # the tuner applies its own floors
            )
        from pruner.progress import progress_bar

        total = math.ceil(max_ratio / step - 1e-9) + 1
        bar = progress_bar(total=total, initial=len(steps), desc=f"prune {mode}", unit="step",
                           disable=not self.progress, leave=False)
        try:
            if steps and self._below(steps, stop_retention):
                return self._suspend(key, gen, steps, stop_retention)
            for rec, m in gen:
                steps.append(self._measured(mode, seed, rec, m))
                bar.update(1)
                bar.set_postfix(ratio=f"{rec.ratio:.2f}")
                if self._below(steps, stop_retention):
                    return self._suspend(key, gen, steps, stop_retention)
        finally:
            bar.close()
        self.stopped_at[key] = None
        self.steps[key] = steps
        return steps

    def _measured(self, mode: str, seed: int, rec: Any, m: Any) -> Step:
        """A pruning step exported as float32, its features and adversarial inputs."""
        from pruner.export import export_tflite

        with native_quiet():
            f32 = export_tflite(m, quantization="float32")
            feats = lat.features_from_tflite(f32)
        s = Step(mode, seed, rec.step, float(rec.ratio), int(rec.params), int(rec.macs), m,
                 f32, feats, self._adversarial(m))
        self.exports[(mode, seed, rec.step, "float32")] = f32
        return s

    def _below(self, steps: list[Step], stop_retention: float | None) -> bool:
        """The last step's accuracy retention is under ``stop_retention``: pruning further
        only loses more accuracy."""
        if stop_retention is None:
            return False
        acc = self.score(steps[-1], "float32")[0]
        base_acc = self.score(steps[0], "float32")[0]
        return base_acc > 0 and acc / base_acc < stop_retention

    def _suspend(self, key: tuple[str, int], gen: Any, steps: list[Step],
                 stop_retention: float | None) -> list[Step]:
        self.stopped_at[key] = stop_retention
        self.steps[key] = steps
        self.runs[key] = gen
        return steps

    def export(self, s: Step, export: str) -> bytes:
        key = (s.mode, s.seed, s.step, export)
        if key not in self.exports:
            from pruner.export import export_tflite

            with native_quiet():
                self.exports[key] = export_tflite(
                    s.model,
                    quantization=export,
                    representative_data=self.calibration,
                    box=self.box,
                )
        return self.exports[key]

    def score(self, s: Step, export: str) -> tuple[float, float]:
        """(accuracy, robust accuracy) of one export of one step, on the host interpreter."""
        key = (s.mode, s.seed, s.step, export)
        if key not in self.scores:
            from pruner.export import run_tflite

            blob = self.export(s, export)
            with native_quiet():
                clean = np.argmax(run_tflite(blob, self.x), axis=1) == self.y
                n = min(self.robust_samples, len(self.x))
                robust = [
                    float(
                        np.mean(clean[:n] & (np.argmax(run_tflite(blob, a), axis=1) == self.y[:n]))
                    )
                    for a in s.adv
                ]
            self.scores[key] = (float(np.mean(clean)), float(np.mean(robust)))
        return self.scores[key]


def fill(
    c: Candidate, search: Search, s: Step, profile: DeviceProfile, base: tuple[float, float]
) -> None:
    """Export, measure and predict one candidate from its real .tflite bytes."""
    from pruner.export import tflite_ops

    blob = search.export(s, c.export)
    with native_quiet():
        feats = lat.features_from_tflite(blob)
    c.exported = True
    c.features = feats.to_dict()
    c.size_kb = len(blob) / 1024.0
    c.predicted_p90_ms = lat.predict_latency_ms(profile.latency, feats)
    c.predicted_memory_mb = lat.predict_memory_mb(profile.latency, feats)
    c.runtime_error = runtime_check(profile, tflite_ops(blob))
    c.accuracy, c.robust = search.score(s, c.export)
    c.accuracy_retention = c.accuracy / base[0] if base[0] > 0 else None
    c.robust_retention = c.robust / base[1] if base[1] > 0 else None


def tune(
    model: Any,
    profile: DeviceProfile | str,
    *,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    search: Search | None = None,
    modes: Sequence[str] = ("paoding",),
    seeds: Sequence[int] = (0,),
    exports: Sequence[str] | None = None,
    max_ratio: float = 0.9,
    step: float = 0.1,
    per_export: int = 2,
    input_box: Any = None,
    eps: Sequence[float] = (0.05,),
    progress: bool = True,
    objective: str = "robust",
) -> TuneResult:
    """Search pruning x export for the candidate that meets every budget of ``profile``.

    Among those that do, ``objective`` picks (tuner.choice.OBJECTIVES): the most
    robust, the smallest or the fastest.

    Returns a TuneResult whose ``chosen`` is None when no candidate meets the
    budgets; ``statement`` then names the closest candidate and what it misses.
    """
    import device_profiles

    if objective not in choice.OBJECTIVES:
        raise ConfigError(f"objective {objective!r}: use one of {', '.join(choice.OBJECTIVES)}")
    t0 = time.perf_counter()
    if isinstance(profile, str):
        profile = device_profiles.load(profile)
    if not 0.0 < max_ratio < 1.0:
        raise ConfigError(f"max_ratio must be in (0, 1), got {max_ratio}")
    if not 0.0 < step <= max_ratio:
        raise ConfigError(f"step must be in (0, max_ratio], got {step}")
    if per_export < 1:
        raise ConfigError(f"per_export must be >= 1, got {per_export}")
    exports = list(exports or profile.exports)
    for e in exports:
        if e not in EXPORTS:
            raise ConfigError(f"export types must be among {', '.join(EXPORTS)}, got {e!r}")
    search = search or Search.create(
        model, eval_data, input_box=input_box, eps=eps, progress=progress
    )
    floor = min(profile.budgets.min_accuracy_retention, profile.budgets.min_robust_retention)
    candidates: list[Candidate] = []
    pending: list[tuple[Candidate, Step]] = []
    screened = 0
    original: Candidate | None = None
    from pruner.progress import progress_bar as tqdm

    for mode in modes:
        for seed in seeds:
            steps = search.prune(mode, seed, max_ratio, step, stop_retention=floor - 0.05)
            base = search.score(steps[0], "float32")
            if original is None:
                s0 = steps[0]
                original = Candidate(
                    mode, seed, 0, 0.0, "float32", s0.params, s0.macs, 0.0, 0.0, 0.0
                )
                fill(original, search, s0, profile, base)
                original.misses = choice.misses(original, profile, 1.0)
            for export in exports:
                pool = []
                for s in steps:
                    est = estimate(s.features, s.params, export)
                    c = Candidate(
                        mode,
                        seed,
                        s.step,
                        s.ratio,
                        export,
                        s.params,
                        s.macs,
                        est.model_bytes / 1024.0,
                        lat.predict_latency_ms(profile.latency, est),
                        lat.predict_memory_mb(profile.latency, est),
                    )
                    pool.append((c, s))
                if export == "float32":
                    chosen_here = pool  # already exported and scored while pruning
                else:
                    ok = [(c, s) for c, s in pool if choice.excess(c, profile, 1.0) <= 0.15]
                    if not ok:  # keep the nearest one, to say how far it is
                        ok = sorted(pool, key=lambda cs: choice.excess(cs[0], profile, 1.0))[:1]
                    chosen_here = ok[:per_export]
                    screened += len(pool) - len(chosen_here)
                    pending += [(c, s) for c, s in pool if all(c is not k for k, _ in chosen_here)]
                for c, s in tqdm(
                    chosen_here,
                    desc=f"{profile.id} {export}",
                    unit="model",
                    disable=not progress or export == "float32",
                    leave=False,
                ):
                    fill(c, search, s, profile, base)
                    c.misses = choice.misses(c, profile, 1.0)
                    if s.step == 0 and export == "float32" and not candidates:
                        c = original
                    candidates.append(c)
    assert original is not None
    result = TuneResult(
        profile,
        candidates,
        None,
        original,
        "",
        screened,
        search.labelled,
        settings={
            "modes": list(modes),
            "seeds": list(seeds),
            "exports": exports,
            "max_ratio": max_ratio,
            "step": step,
            "eps": list(search.eps),
            "attacks": list(search.attacks),
            "objective": objective,
        },
    )
    result.per_export, result.pending = per_export, pending
    result.objective = objective
    choose(result)
    result.seconds = time.perf_counter() - t0
    attach_model(result, search)
    return result


def attach_model(result: TuneResult, search: Search) -> None:
    c = result.chosen
    result.model_bytes = result.keras_model = None
    if c is None:
        return
    for s in search.steps.get((c.mode, c.seed), []):
        if s.step == c.step:
            result.model_bytes = search.export(s, c.export)
            result.keras_model = s.model
