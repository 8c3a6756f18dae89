"""The tuner's search space: candidates (mode, seed, pruning step, export type), their
estimates, what each device runtime can load, and the result of a tuning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from device_profiles import calibration_note
from device_profiles import latency as lat
from device_profiles.schema import DeviceProfile

EXPORTS = ("float32", "float16", "dynamic", "int8")
OUTPUT_FILES = ("model.tflite", "model.keras", "report.json", "report.png", "devices")

# Highest builtin op version each runtime can load, for every op the exporter
# writes (Dense, Conv2D, pooling, padding, resizing, activations, merges, softmax,
# the four export types). tflite-runtime 2.14: measured on the tflite-runtime
# 2.14.0 wheel by raising each op's version in real exports until the
# interpreter refused it; tests/tuner/test_export_compat.py re-measures every
# entry (limit loads, limit + 1 does not) and loads every export type of every
# test model in the real runtime. ai-edge-litert of this converter's
# generation loads what the converter writes (tested there too): no table.
OP_MAX_VERSIONS: dict[tuple[str, tuple[int, int]], dict[str, int]] = {
    ("tflite-runtime", (2, 14)): {
        "ADD": 5,
        "AVERAGE_POOL_2D": 3,
        "BATCH_MATMUL": 4,
        "CONCATENATION": 4,
        "CONV_2D": 7,
        "DEPTHWISE_CONV_2D": 7,
        "DEQUANTIZE": 5,
        "ELU": 1,
        "EXPAND_DIMS": 1,
        "FULLY_CONNECTED": 10,
        "GATHER": 6,
        "HARD_SWISH": 1,
        "LEAKY_RELU": 2,
        "LOGISTIC": 3,
        "MAXIMUM": 4,
        "MAX_POOL_2D": 3,
        "MEAN": 3,
        "MINIMUM": 4,
        "MUL": 7,
        "PACK": 4,
        "PAD": 4,
        "PADV2": 4,
        "QUANTIZE": 3,
        "REDUCE_MAX": 3,
        "RELU": 3,
        "RELU6": 3,
        "RESHAPE": 1,
        "SHAPE": 1,
        "SOFTMAX": 3,
        "SQUEEZE": 2,
        "STRIDED_SLICE": 8,
        "SUB": 5,
        "TANH": 3,
        "TILE": 3,
        "TRANSPOSE": 6,
    },
}


def op_limits(profile: DeviceProfile) -> dict[str, int] | None:
    """The op-version table of the profile's runtime, or None when it loads what we write."""
    rt = profile.runtime
    return OP_MAX_VERSIONS.get((rt.interpreter, tuple(rt.version_tuple[:2])))  # type: ignore[arg-type]


def runtime_check(profile: DeviceProfile, ops: Sequence[tuple[str, int]]) -> str | None:
    """Why the profile's runtime cannot load a model with these ops, or None when it can."""
    from pruner.export import op_version_problems

    rt = profile.runtime
    table = op_limits(profile)
    if table is None:
        if rt.interpreter == "tflite-runtime" and rt.version_tuple[:2] < (2, 14):
            return f"no op-version table for tflite-runtime {rt.version}: refusing to guess"
        return None  # ai-edge-litert / TF Lite of this converter's generation
    bad = op_version_problems(ops, table, f"{rt.interpreter} {rt.version}")
    return f"{rt.interpreter} {rt.version} cannot load {bad}" if bad else None


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
class Step:
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


def estimate(f32: lat.ModelFeatures, params: int, export: str) -> lat.ModelFeatures:
    """Cheap features of a not-yet-exported type, from its float32 export."""
    if export in ("float32", "float16"):
        size = f32.model_bytes - (2 * params if export == "float16" else 0)
        return lat.ModelFeatures(dict(f32.counts), size, f32.activation_bytes)
    counts = {k: 0.0 for k in f32.counts}
    for k, v in f32.counts.items():
        feature = k.split(".")[0]
        if export == "dynamic":
            gemm = feature in ("dense_macs", "conv_macs", "dw_macs", "pad16_macs")
            target = "hybrid" if gemm else "float"
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
    # the share of the p90 budget a choice keeps free: the closed loop's NoiseRule.margin when
    # it verifies on a device (a candidate predicted inside it would fail the margin there)
    latency_margin: float = 0.0
    verification: list[dict[str, Any]] = field(default_factory=list)
    model_bytes: bytes | None = None
    keras_model: Any = None
    seconds: float = 0.0
    per_export: int = 2
    device: str | None = None  # where verify measured, None: not verified on a device
    verified: bool = False  # chosen was measured there: every budget met, active
    pending: list[tuple[Candidate, Any]] = field(default_factory=list, repr=False)
    objective: str = "robust"  # what choice.choose maximises among those that meet the budgets

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
                "calibrated_profile": calibration_note(self.profile),
            },
            "emulated_profile": self.profile.emulated,
            "settings": self.settings,
            "accuracy_measure": (
                "top-1 accuracy on the evaluation data"
                if self.labelled
                else "top-1 agreement with the original on unlabeled inputs: the "
                "representative data when given, else random inputs (no eval data given)"
            ),
            "robust_measure": "white-box FGSM/PGD on each candidate's float model, "
            "run through its .tflite export; correct clean and attacked",
            "original": self.original.to_dict(),
            "chosen": self.chosen.to_dict() if self.chosen else None,
            "outcome": self.outcome,
            "device": self.device,
            "statement": self.statement,
            "screened_out_before_export": self.screened_out,
            "candidates": [c.to_dict() for c in self.candidates],
            "verification": self.verification,
            "measurements": self.measurements(),
            "seconds": round(self.seconds, 1),
        }

    @property
    def outcome(self) -> str:
        """'verified' (measured on the device), 'not verified' (verify found none),
        'predicted' (no device) or 'none' (no candidate meets the budgets)."""
        if self.verified:
            return "verified"
        if self.device is not None:
            return "not verified"
        return "predicted" if self.chosen is not None else "none"

    def measurements(self) -> list[dict[str, Any]]:
        """Measured candidates as latency-model calibration records."""
        out = []
        for c in self.candidates:
            if c.measured and c.features and c.measured.get("p90_ms"):  # device latency only
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
