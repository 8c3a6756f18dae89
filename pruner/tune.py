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

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_profiles import latency as lat
from device_profiles.schema import DeviceProfile
from pruner.errors import BudgetError, ConfigError, DataError

EXPORTS = ("float32", "float16", "dynamic", "int8")
OUTPUT_FILES = ("model.tflite", "model.keras", "report.json", "report.png", "devices")

# Highest builtin op version each runtime can load. tflite-runtime 2.14: from
# tensorflow/lite/core/kernels/register.cc of that release, and checked here
# against the tflite-runtime 2.14.0 wheel by raising the version of each op
# the exporter writes until the interpreter refused it (FULLY_CONNECTED 10,
# CONV_2D 7, DEPTHWISE_CONV_2D 7, MAX_POOL_2D 3, SOFTMAX 3, RESHAPE 1, SHAPE 1,
# STRIDED_SLICE 8, PACK 4, QUANTIZE 3, DEQUANTIZE 5).
OP_MAX_VERSIONS: dict[tuple[str, tuple[int, int]], dict[str, int]] = {
    ("tflite-runtime", (2, 14)): {
        "ADD": 5,
        "AVERAGE_POOL_2D": 3,
        "BATCH_MATMUL": 4,
        "CONCATENATION": 4,
        "CONV_2D": 7,
        "DEPTHWISE_CONV_2D": 7,
        "DEQUANTIZE": 5,
        "EXPAND_DIMS": 1,
        "FULLY_CONNECTED": 10,
        "GATHER": 6,
        "HARD_SWISH": 1,
        "LEAKY_RELU": 2,
        "LOGISTIC": 3,
        "MAX_POOL_2D": 3,
        "MEAN": 3,
        "MUL": 7,
        "PACK": 4,
        "PAD": 4,
        "PADV2": 4,
        "QUANTIZE": 3,
        "RELU": 3,
        "RELU6": 3,
        "RESHAPE": 1,
        "SHAPE": 1,
        "SOFTMAX": 3,
        "SQUEEZE": 2,
        "STRIDED_SLICE": 8,
        "SUB": 5,
        "TANH": 3,
        "TRANSPOSE": 6,
    },
}


def runtime_check(profile: DeviceProfile, ops: Sequence[tuple[str, int]]) -> str | None:
    """Why the profile's runtime cannot load a model with these ops, or None when it can."""
    rt = profile.runtime
    table = OP_MAX_VERSIONS.get((rt.interpreter, tuple(rt.version_tuple[:2])))  # type: ignore[arg-type]
    if table is None:
        if rt.interpreter == "tflite-runtime" and rt.version_tuple[:2] < (2, 14):
            return f"no op-version table for tflite-runtime {rt.version}: refusing to guess"
        return None  # ai-edge-litert / TF Lite of this converter's generation
    bad = []
    for op, version in ops:
        limit = table.get(op)
        if limit is None:
            bad.append(f"{op} (not in the {rt.interpreter} {rt.version} table)")
        elif version > limit:
            bad.append(f"{op} v{version} > v{limit}")
    if bad:
        return f"{rt.interpreter} {rt.version} cannot load " + ", ".join(bad)
    return None


@dataclass
class Candidate:
    """One (mode, seed, pruning step, export type) point of the search."""

    mode: str
    seed: int
    step: int
    ratio: float
    export: str
    params: int
    macs: int
    size_kb: float
    predicted_p90_ms: float
    predicted_memory_mb: float
    exported: bool = False
    accuracy: float | None = None
    robust: float | None = None
    accuracy_retention: float | None = None
    robust_retention: float | None = None
    runtime_error: str | None = None
    misses: list[str] = field(default_factory=list)
    measured: dict[str, Any] | None = None
    chosen: bool = False
    features: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.mode}/s{self.seed}/r{self.ratio:.2f}/{self.export}"

    @property
    def evaluated(self) -> bool:
        return self.exported and self.accuracy is not None

    @property
    def meets(self) -> bool:
        return self.evaluated and self.runtime_error is None and not self.misses

    @property
    def measured_miss(self) -> bool:
        """The device measurement missed a budget (or the device refused the model)."""
        return bool(self.measured and self.measured.get("misses"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = self.key
        d["meets"] = self.meets
        return d


@dataclass
class _Step:
    mode: str
    seed: int
    step: int
    ratio: float
    params: int
    macs: int
    model: Any
    f32: bytes
    features: lat.ModelFeatures
    adv: list[np.ndarray]


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
    steps: dict[tuple[str, int], list[_Step]] = field(default_factory=dict)
    # (mode, seed) -> the retention at which that run stopped early (None: it did not)
    stopped_at: dict[tuple[str, int], float | None] = field(default_factory=dict)
    schedule: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    exports: dict[tuple[str, int, int, str], bytes] = field(default_factory=dict)
    scores: dict[tuple[str, int, int, str], tuple[float, float]] = field(default_factory=dict)

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
    ) -> Search:
        """Validate the inputs; without eval data, label random inputs by the original model."""
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
            x = random_inputs(box, shape, 512, seed)
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
            calibration=x[:100],
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
    ) -> list[_Step]:
        """Progressive pruning steps of one (mode, seed), each exported as float32."""
        key = (mode, seed)
        same = self.schedule.get(key) == (max_ratio, step)
        if key in self.steps and same:
            early = self.stopped_at.get(key)
            if early is None or (stop_retention is not None and stop_retention >= early):
                return self.steps[key]
        done = self.steps.get(key, []) if same else []
        if not same:  # another schedule: its steps are other models
            self.exports = {k: v for k, v in self.exports.items() if k[:2] != key}
            self.scores = {k: v for k, v in self.scores.items() if k[:2] != key}
        self.schedule[key] = (max_ratio, step)
        from pruner.api import prune_steps
        from pruner.export import export_tflite

        steps: list[_Step] = []
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
            progress=self.progress,
        )
        for rec, m in gen:
            if rec.step < len(done):  # pruning is deterministic: reuse what was measured
                steps.append(done[rec.step])
                continue
            f32 = export_tflite(m, quantization="float32")
            s = _Step(
                mode,
                seed,
                rec.step,
                float(rec.ratio),
                int(rec.params),
                int(rec.macs),
                m,
                f32,
                lat.features_from_tflite(f32),
                self._adversarial(m),
            )
            steps.append(s)
            self.exports[(mode, seed, rec.step, "float32")] = f32
            acc, _ = self.score(s, "float32")
            base_acc = self.score(steps[0], "float32")[0]
            if stop_retention is not None and base_acc > 0 and acc / base_acc < stop_retention:
                self.stopped_at[key] = stop_retention
                break  # further pruning only loses more accuracy
        else:
            self.stopped_at[key] = None
        gen.close()
        self.steps[key] = steps
        return steps

    def export(self, s: _Step, export: str) -> bytes:
        key = (s.mode, s.seed, s.step, export)
        if key not in self.exports:
            from pruner.export import export_tflite

            self.exports[key] = export_tflite(
                s.model,
                quantization=export,
                representative_data=self.calibration,
                box=self.box,
            )
        return self.exports[key]

    def score(self, s: _Step, export: str) -> tuple[float, float]:
        """(accuracy, robust accuracy) of one export of one step, on the host interpreter."""
        key = (s.mode, s.seed, s.step, export)
        if key not in self.scores:
            from pruner.export import run_tflite

            blob = self.export(s, export)
            clean = np.argmax(run_tflite(blob, self.x), axis=1) == self.y
            n = min(self.robust_samples, len(self.x))
            robust = [
                float(np.mean(clean[:n] & (np.argmax(run_tflite(blob, a), axis=1) == self.y[:n])))
                for a in s.adv
            ]
            self.scores[key] = (float(np.mean(clean)), float(np.mean(robust)))
        return self.scores[key]


def _estimate(f32: lat.ModelFeatures, params: int, export: str) -> lat.ModelFeatures:
    """Cheap features of a not-yet-exported type, from its float32 export."""
    if export in ("float32", "float16"):
        size = f32.model_bytes - (2 * params if export == "float16" else 0)
        return lat.ModelFeatures(dict(f32.counts), size, f32.activation_bytes)
    counts = {k: 0.0 for k in f32.counts}
    for k, v in f32.counts.items():
        feature = k.split(".")[0]
        if export == "dynamic":
            target = "hybrid" if feature in ("dense_macs", "conv_macs") else "float"
        else:
            target = "int8"
        counts[f"{feature}.{target}"] = counts.get(f"{feature}.{target}", 0.0) + v
    if export == "int8":
        counts["ops.int8"] += 2  # QUANTIZE in, DEQUANTIZE out
    return lat.ModelFeatures(
        counts,
        max(f32.model_bytes - 3 * params, 1024),
        f32.activation_bytes // (4 if export == "int8" else 1),
    )


@dataclass
class TuneResult:
    """Every candidate tried, the chosen one (or why none), and the verification log."""

    profile: DeviceProfile
    candidates: list[Candidate]
    chosen: Candidate | None
    original: Candidate
    statement: str
    screened_out: int
    labelled: bool
    settings: dict[str, Any]
    correction: float = 1.0
    verification: list[dict[str, Any]] = field(default_factory=list)
    model_bytes: bytes | None = None
    keras_model: Any = None
    seconds: float = 0.0
    per_export: int = 2
    pending: list[tuple[Candidate, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.id,
            "profile_name": self.profile.name,
            "runtime": self.profile.runtime.model_dump(),
            "budgets": self.profile.budgets.model_dump(),
            "latency_model": {
                "provenance": self.profile.latency.provenance,
                "source": self.profile.latency.source,
                "correction_from_measurements": self.correction,
            },
            "emulated_profile": self.profile.emulated,
            "settings": self.settings,
            "accuracy_measure": (
                "top-1 accuracy on the evaluation data"
                if self.labelled
                else "top-1 agreement with the original on random inputs (no eval data given)"
            ),
            "robust_measure": "white-box FGSM/PGD on each candidate's float model, "
            "run through its .tflite export; correct clean and attacked",
            "original": self.original.to_dict(),
            "chosen": self.chosen.to_dict() if self.chosen else None,
            "statement": self.statement,
            "screened_out_before_export": self.screened_out,
            "candidates": [c.to_dict() for c in self.candidates],
            "verification": self.verification,
            "measurements": self.measurements(),
            "seconds": round(self.seconds, 1),
        }

    def measurements(self) -> list[dict[str, Any]]:
        """Measured candidates as latency-model calibration records."""
        out = []
        for c in self.candidates:
            if c.measured and c.features and c.measured.get("p90_ms"):
                out.append(
                    {
                        "profile": self.profile.id,
                        "label": c.key,
                        "features": c.features,
                        "p90_ms": c.measured["p90_ms"],
                        "peak_memory_mb": c.measured.get("peak_memory_mb"),
                        "emulated": bool(c.measured.get("emulated")),
                    }
                )
        return out

    def table(self) -> str:
        from pruner.tune_report import format_table

        return format_table(self.candidates, self.profile)

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write model.tflite (+ model.keras), report.json and report.png; atomically."""
        out = Path(out_dir)
        if out.exists() and (
            not out.is_dir() or any(f.name not in OUTPUT_FILES for f in out.iterdir())
        ):
            raise ConfigError(
                f"output {out} exists and holds other files: give a new or empty directory "
                "(or a previous tune output)"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            if self.model_bytes is not None:
                (tmp / "model.tflite").write_bytes(self.model_bytes)
                if self.keras_model is not None:
                    self.keras_model.save(tmp / "model.keras")
            (tmp / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
            from pruner.tune_report import plot

            plot(self, tmp / "report.png")
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def _misses(c: Candidate, p: DeviceProfile, correction: float) -> list[str]:
    b = p.budgets
    out = []
    p90 = c.predicted_p90_ms * correction
    how = "predicted" if correction == 1.0 else f"predicted x{correction:.2f} measured/predicted"
    if c.measured and c.measured.get("p90_ms") is not None:
        p90, how = (
            c.measured["p90_ms"],
            "measured" + (", emulated" if c.measured.get("emulated") else ""),
        )
    if p90 > b.p90_latency_ms:
        out.append(f"p90 latency {p90:.3g} ms > {b.p90_latency_ms:g} ms ({how})")
    mem, mhow = c.predicted_memory_mb, "predicted"
    if c.measured and c.measured.get("peak_memory_mb") is not None:
        mem, mhow = c.measured["peak_memory_mb"], "measured"
    if mem > b.peak_memory_mb:
        out.append(f"peak memory {mem:.4g} MB > {b.peak_memory_mb:g} MB ({mhow})")
    if c.size_kb > b.model_size_kb:
        out.append(f"model size {c.size_kb:.1f} KB > {b.model_size_kb:g} KB")
    if c.accuracy_retention is not None and c.accuracy_retention < b.min_accuracy_retention:
        out.append(f"accuracy retention {c.accuracy_retention:.3f} < {b.min_accuracy_retention:g}")
    if c.robust_retention is not None and c.robust_retention < b.min_robust_retention:
        out.append(
            f"robust accuracy retention {c.robust_retention:.3f} < {b.min_robust_retention:g}"
        )
    return out


def _excess(c: Candidate, p: DeviceProfile, correction: float) -> float:
    """How far a candidate is from meeting the budgets (0 when it meets them)."""
    if c.runtime_error:
        return float("inf")
    b = p.budgets
    ratios = [
        c.predicted_p90_ms * correction / b.p90_latency_ms,
        c.predicted_memory_mb / b.peak_memory_mb,
        c.size_kb / b.model_size_kb,
    ]
    if c.accuracy_retention is not None:
        ratios.append(b.min_accuracy_retention / max(c.accuracy_retention, 1e-9))
    if c.robust_retention is not None:
        ratios.append(b.min_robust_retention / max(c.robust_retention, 1e-9))
    return float(sum(max(0.0, r - 1.0) for r in ratios))


def _rank_key(c: Candidate) -> tuple[float, float, float]:
    return (-(c.robust or 0.0), -(c.accuracy or 0.0), c.predicted_p90_ms)


def _fill(
    c: Candidate, search: Search, s: _Step, profile: DeviceProfile, base: tuple[float, float]
) -> None:
    """Export, measure and predict one candidate from its real .tflite bytes."""
    from pruner.export import tflite_ops

    blob = search.export(s, c.export)
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
) -> TuneResult:
    """Search pruning x export for the candidate that meets every budget of ``profile``.

    Returns a TuneResult whose ``chosen`` is None when no candidate meets the
    budgets; ``statement`` then names the closest candidate and what it misses.
    """
    import device_profiles

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
    pending: list[tuple[Candidate, _Step]] = []
    screened = 0
    original: Candidate | None = None
    from tqdm.auto import tqdm

    for mode in modes:
        for seed in seeds:
            steps = search.prune(mode, seed, max_ratio, step, stop_retention=floor - 0.05)
            base = search.score(steps[0], "float32")
            if original is None:
                s0 = steps[0]
                original = Candidate(
                    mode, seed, 0, 0.0, "float32", s0.params, s0.macs, 0.0, 0.0, 0.0
                )
                _fill(original, search, s0, profile, base)
                original.misses = _misses(original, profile, 1.0)
            for export in exports:
                pool = []
                for s in steps:
                    est = _estimate(s.features, s.params, export)
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
                    ok = [(c, s) for c, s in pool if _excess(c, profile, 1.0) <= 0.15]
                    if not ok:  # keep the nearest one, to say how far it is
                        ok = sorted(pool, key=lambda cs: _excess(cs[0], profile, 1.0))[:1]
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
                    _fill(c, search, s, profile, base)
                    c.misses = _misses(c, profile, 1.0)
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
        },
    )
    result.per_export, result.pending = per_export, pending
    choose(result)
    result.seconds = time.perf_counter() - t0
    _attach_model(result, search)
    return result


def _attach_model(result: TuneResult, search: Search) -> None:
    c = result.chosen
    result.model_bytes = result.keras_model = None
    if c is None:
        return
    for s in search.steps.get((c.mode, c.seed), []):
        if s.step == c.step:
            result.model_bytes = search.export(s, c.export)
            result.keras_model = s.model


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def choose(result: TuneResult) -> Candidate | None:
    """Mark the best candidate that meets every budget; write the statement."""
    p = result.profile
    for c in result.candidates:
        c.chosen = False
        if c.evaluated:
            c.misses = _misses(c, p, result.correction)
    ok = [c for c in result.candidates if c.meets and not c.measured_miss]
    if ok:
        best = min(ok, key=_rank_key)
        best.chosen = True
        result.chosen = best
        measured = (best.measured or {}).get("p90_ms")
        if measured is not None:
            emulated = bool(best.measured.get("emulated"))  # type: ignore[union-attr]
            latency = f"p90 {measured:.3g} ms measured{' under emulation' if emulated else ''}"
        else:
            scaled = "" if result.correction == 1.0 else f" x{result.correction:.2f} measured"
            latency = f"p90 {best.predicted_p90_ms * result.correction:.3g} ms predicted{scaled}"
        result.statement = (
            f"chosen {best.key} for {p.id}: robust accuracy {best.robust:.3f} "
            f"(retention {_fmt(best.robust_retention)}), accuracy {best.accuracy:.3f}, "
            f"{latency}, {best.size_kb:.1f} KB; "
            f"meets every budget"
        )
        return best
    result.chosen = None
    evaluated = [c for c in result.candidates if c.evaluated]
    loadable = [c for c in evaluated if not c.runtime_error]
    pool = loadable or evaluated
    closest = min(pool, key=lambda c: (_excess(c, p, result.correction), _rank_key(c)))
    missed = "; ".join(closest.misses) or (closest.runtime_error or "")
    if closest.runtime_error and closest.misses:
        missed = f"{closest.runtime_error}; {missed}"
    result.statement = (
        f"no candidate meets every budget of {p.id}; the closest is {closest.key} "
        f"(ratio {closest.ratio:.2f}, {closest.size_kb:.1f} KB, "
        f"p90 {closest.predicted_p90_ms * result.correction:.3g} ms predicted): it misses {missed}"
    )
    return None


def raise_if_impossible(result: TuneResult) -> None:
    """BudgetError with the statement when no candidate meets the budgets."""
    if result.chosen is None:
        raise BudgetError(result.statement)


# The presentation and the closed loop live in modules of their own (imported on use:
# pruner.tune_verify imports this module).
_ELSEWHERE = {
    "format_table": "pruner.tune_report",
    "plot": "pruner.tune_report",
    "verify": "pruner.tune_verify",
    "mqtt_deployer": "pruner.tune_verify",
    "report_measurement": "pruner.tune_verify",
    "Deployer": "pruner.tune_verify",
}


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'pruner.tune' has no attribute {name!r}")


__all__ = [
    "EXPORTS",
    "Candidate",
    "Search",
    "TuneResult",
    "choose",
    "raise_if_impossible",
    "runtime_check",
    "tune",
]
