"""The device profile schema (pydantic v2): one validated object per device class.

A profile says what a device is (identity), what it runs (runtime), what a
model must meet on it (budgets), how to predict latency and memory there
(latency model, with provenance) and how to emulate it on a development host.
Unknown keys are rejected, and every error names the field at fault.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Platform = Literal["linux-aarch64", "android-arm64", "linux-armv7", "linux-x86_64"]
Interpreter = Literal["ai-edge-litert", "tflite-runtime", "tf-lite"]
Delegate = Literal["none", "xnnpack", "gpu", "nnapi"]
ExportType = Literal["float32", "float16", "dynamic", "int8"]
Provenance = Literal["estimated", "calibrated"]

EXPORT_TYPES: tuple[str, ...] = ("float32", "float16", "dynamic", "int8")
# Which kernels an export type runs on: float16 weights are dequantised to
# float32 at load time, so both use the float kernels.
KERNEL_CLASS: dict[str, str] = {
    "float32": "float",
    "float16": "float",
    "dynamic": "hybrid",
    "int8": "int8",
}
# Features the latency model knows (see device_profiles.latency).
FEATURES: tuple[str, ...] = (
    "dense_macs",
    "conv_macs",
    "dw_macs",
    "pad16_macs",
    "conv_elements",
    "elements",
    "conv_ops",
    "ops",
)
REQUIRED_COEFFICIENTS: tuple[str, ...] = ("dense_macs.float", "conv_macs.float", "ops.float")

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cpu(_Strict):
    """The CPU as published for the device class."""

    arch: str = Field(min_length=1, description="core type, e.g. cortex-a72")
    cores: int = Field(ge=1, le=256)
    clock_ghz: float = Field(gt=0, le=6)


class Runtime(_Strict):
    """The TFLite interpreter the device runs."""

    interpreter: Interpreter
    version: str = Field(description="interpreter version, e.g. 2.14 or 2.14.0")
    threads: int = Field(default=1, ge=1, le=64)
    delegate: Delegate = "none"

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION.match(v):
            raise ValueError(f"must look like 2.14 or 2.14.0, got {v!r}")
        return v

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split("."))


class Budgets(_Strict):
    """What a model must meet on this device; every limit is checked."""

    p90_latency_ms: float = Field(gt=0, description="90th percentile inference latency")
    peak_memory_mb: float = Field(gt=0, description="peak resident memory of the runtime process")
    model_size_kb: float = Field(gt=0, description="size of the .tflite file")
    min_accuracy_retention: float = Field(
        default=0.95, gt=0, le=1, description="candidate accuracy / original accuracy"
    )
    min_robust_retention: float = Field(
        default=0.90, gt=0, le=1, description="candidate robust accuracy / original's"
    )


class MemoryModel(_Strict):
    """Peak memory = base + model_factor * model MB + arena_factor * activation MB."""

    base_mb: float = Field(ge=0)
    model_factor: float = Field(default=1.0, ge=0)
    arena_factor: float = Field(default=2.0, ge=0)


class LatencyModel(_Strict):
    """Predicts p90 latency: overhead + sum of coefficient * feature.

    Coefficients are keyed ``<feature>.<kernel class>`` (e.g. ``dense_macs.float``,
    ``conv_macs.int8``) in milliseconds per unit of the feature; ``overhead_ms``
    is the fixed cost of one invocation.
    """

    provenance: Provenance
    source: str = Field(min_length=10, description="where the figures come from")
    calibrated_at: str | None = None
    calibration_reports: int = Field(default=0, ge=0)
    calibration_error: dict[str, float] | None = Field(
        default=None, description="relative error of the fit (median, p90, within_15pct)"
    )
    overhead_ms: float = Field(ge=0)
    coefficients: dict[str, float]
    memory: MemoryModel

    @field_validator("coefficients")
    @classmethod
    def _coefficients(cls, v: dict[str, float]) -> dict[str, float]:
        classes = set(KERNEL_CLASS.values())
        for key, value in v.items():
            feature, _, kclass = key.partition(".")
            if feature not in FEATURES or kclass not in classes:
                raise ValueError(
                    f"unknown coefficient {key!r}: expected <feature>.<class> with feature in "
                    f"{list(FEATURES)} and class in {sorted(classes)}"
                )
            if value < 0:
                raise ValueError(f"coefficient {key!r} must be >= 0, got {value}")
        missing = [k for k in REQUIRED_COEFFICIENTS if k not in v]
        if missing:
            raise ValueError(f"missing the float coefficients {missing}")
        return v

    @model_validator(mode="after")
    def _provenance(self) -> LatencyModel:
        if self.provenance == "calibrated" and (
            not self.calibrated_at or not self.calibration_reports
        ):
            raise ValueError("a calibrated model needs calibrated_at and calibration_reports > 0")
        return self


class Emulation(_Strict):
    """How to emulate this device class on a development host."""

    emulates: str | None = Field(default=None, description="the profile id this one stands for")
    cpuset: list[int] = Field(min_length=1, description="host CPUs the agent may use")
    cpu_quota: float = Field(
        default=1.0, gt=0, le=64, description="CPU time per wall second (1.0 = one full core)"
    )
    quota_period_us: int = Field(default=1000, ge=1000, le=1_000_000)
    memory_limit_mb: int = Field(ge=64, description="address-space limit (RLIMIT_AS)")
    slowdown: float = Field(
        default=1.0, ge=1.0, le=1000, description="deterministic factor applied to timings"
    )
    priority: Literal["normal", "realtime"] = Field(
        default="normal",
        description="realtime: SCHED_FIFO on the CPU set, so that other host load does not "
        "disturb the measurement (the quota then uses cgroup RT bandwidth)",
    )

    @field_validator("cpuset")
    @classmethod
    def _cpuset(cls, v: list[int]) -> list[int]:
        if any(c < 0 for c in v):
            raise ValueError("CPU numbers must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError(f"CPU numbers repeat: {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _quota(self) -> Emulation:
        if self.cpu_quota * self.quota_period_us < 1000:
            raise ValueError(
                f"cpu_quota * quota_period_us must be >= 1000 us (the kernel minimum), got "
                f"{self.cpu_quota * self.quota_period_us:g}"
            )
        return self


class DeviceProfile(_Strict):
    """One device class."""

    id: str
    name: str = Field(min_length=1)
    platform: Platform
    cpu: Cpu
    ram_mb: int = Field(ge=16)
    runtime: Runtime
    budgets: Budgets
    exports: list[ExportType] = Field(
        default_factory=lambda: list(EXPORT_TYPES),
        min_length=1,
        description="export types the tuner may try for this device",
    )
    latency: LatencyModel
    emulation: Emulation | None = None
    sources: list[str] = Field(default_factory=list, description="citations for public figures")
    notes: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"must be lower-case letters, digits and '-', got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DeviceProfile:
        if self.runtime.threads > self.cpu.cores:
            raise ValueError(
                f"runtime.threads ({self.runtime.threads}) exceeds cpu.cores ({self.cpu.cores})"
            )
        if self.budgets.peak_memory_mb > self.ram_mb:
            raise ValueError(
                f"budgets.peak_memory_mb ({self.budgets.peak_memory_mb}) exceeds ram_mb "
                f"({self.ram_mb})"
            )
        if self.latency.provenance == "estimated" and not self.sources:
            raise ValueError("an estimated latency model must cite its sources")
        return self

    @property
    def emulated(self) -> bool:
        return self.emulation is not None
