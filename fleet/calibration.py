"""The fleet's VERIFIED reports as latency-model measurements, per device profile.

The registry records one observation per VERIFIED deployment (measured p50/p90
and peak memory, threads, runtime, emulation). Its model's features (per-op-type
MACs, elements and ops, bytes, export type) are read once from the artifact the
deployment published, by sha256, and kept beside it in ``model_features``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import device_profiles
from device_profiles import latency
from device_profiles.calibration import Pair, prediction_pairs
from device_profiles.schema import DeviceProfile
from fleet.registry import Registry


@dataclass(frozen=True)
class Observations:
    """A profile's usable measurements, and how many observations had no model bytes."""

    measurements: list[latency.Measurement]
    without_model: int


def _fill_features(registry: Registry, rows: list[dict[str, Any]]) -> None:
    """Read and record the features of every observed model that lacks them."""
    for sha in sorted({r["model_sha256"] for r in rows if r["features"] is None}):
        blob = registry.artifact(sha)
        if blob is None:
            continue
        feats = latency.features_from_tflite(blob)
        registry.put_model_features(sha, feats.to_dict(), latency.export_type(blob))


def observations(registry: Registry, profile: str) -> Observations:
    """The latency measurements of ``profile`` in the fleet's record, oldest first."""
    rows = registry.observations(profile)
    if any(r["features"] is None for r in rows):
        _fill_features(registry, rows)
        rows = registry.observations(profile)
    data = [
        latency.Measurement(
            features=latency.ModelFeatures.from_dict(r["features"]),
            p90_ms=float(r["p90_ms"]),
            peak_memory_mb=r["peak_memory_mb"],
            emulated=r["emulation"] is not None,
            label=f"{r['device_id']}/{r['deployment_id']} ({r['export']})",
        )
        for r in rows
        if r["features"] is not None
    ]
    return Observations(data, len(rows) - len(data))


def pairs_by_profile(
    registry: Registry,
    load: Callable[[str], tuple[DeviceProfile, DeviceProfile | None]] = device_profiles.before_after,
    profile: str | None = None,
) -> dict[str, list[Pair]]:
    """Predicted against measured for every observed profile (or only ``profile``), before
    and after calibration.

    ``load(profile_id)`` gives (the profile before, the calibrated one or None);
    profiles it does not know are left out.
    """
    ids = sorted({r["profile"] for r in registry.observations(profile)})
    out = {}
    for pid in ids:
        try:
            before, after = load(pid)
        except device_profiles.ProfileError:
            continue
        out[pid] = prediction_pairs(
            before.latency, after.latency if after else None, observations(registry, pid).measurements
        )
    return out
