"""Calibrating a profile's latency model from measurements: the refit, its error, its pairs.

``calibrate`` refits a profile's coefficients with ``latency.fit`` and returns
the calibrated profile; ``prediction_pairs`` gives, for each measurement, what
the model predicted before and after beside what was measured (what a chart of
a profile's calibration draws); ``error_rows`` the table of errors the CLI and
the bench print. All pure: the measurements come from the caller (the fleet's
record, or report files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from device_profiles import latency
from device_profiles.schema import DeviceProfile, LatencyModel

MIN_OBSERVATIONS = latency.MIN_MEASUREMENTS


@dataclass(frozen=True)
class Pair:
    """One measured model: measured p90 and peak memory, predicted before and after."""

    label: str
    measured_p90_ms: float
    before_p90_ms: float
    after_p90_ms: float | None
    measured_memory_mb: float | None
    before_memory_mb: float
    after_memory_mb: float | None


def calibrate(
    prior: DeviceProfile, data: Sequence[latency.Measurement], *, source: str
) -> DeviceProfile:
    """``prior`` with its latency and memory model refitted from ``data``.

    Raises ValueError naming the minimum when there are too few measurements.
    """
    fitted = latency.fit(prior.latency, list(data), source=source)
    return prior.model_copy(update={"latency": fitted})


def prediction_pairs(
    before: LatencyModel, after: LatencyModel | None, data: Sequence[latency.Measurement]
) -> list[Pair]:
    """Predicted (before and, when given, after calibration) against measured, per model."""
    return [
        Pair(
            label=m.label,
            measured_p90_ms=m.p90_ms,
            before_p90_ms=latency.predict_latency_ms(before, m.features),
            after_p90_ms=latency.predict_latency_ms(after, m.features) if after else None,
            measured_memory_mb=m.peak_memory_mb,
            before_memory_mb=latency.predict_memory_mb(before, m.features),
            after_memory_mb=latency.predict_memory_mb(after, m.features) if after else None,
        )
        for m in data
    ]


def errors(model: LatencyModel, data: Sequence[latency.Measurement]) -> dict[str, float]:
    """p90 relative error summary (``latency.error_summary``) plus the memory's median."""
    out = latency.error_summary(latency.relative_errors(model, data))
    mem = [
        abs(latency.predict_memory_mb(model, m.features) - m.peak_memory_mb) / m.peak_memory_mb
        for m in data
        if m.peak_memory_mb
    ]
    if mem:
        out["memory_median_abs"] = round(float(np.median(mem)), 4)
    return out


ERROR_HEADER = ["latency model", "reports", "median |err|", "p90 |err|", "within 15%",
                "memory median |err|"]


def error_row(name: str, summary: dict[str, float]) -> list[str]:
    """One row of the error table (ERROR_HEADER) from an ``errors`` summary."""
    mem = summary.get("memory_median_abs")
    return [
        name,
        f"{int(summary.get('n', 0))}",
        f"{summary.get('median_abs', 0):.1%}",
        f"{summary.get('p90_abs', 0):.1%}",
        f"{summary.get('within_15pct', 0):.0%}",
        f"{mem:.1%}" if mem is not None else "-",
    ]
