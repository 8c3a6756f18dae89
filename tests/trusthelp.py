"""Device messages as a device would sign them, including ones the models refuse to build."""

from __future__ import annotations

import json
from typing import Any

from core.protocol import Report
from core.signing import SigningKey


def full_report(**fields: Any) -> dict[str, Any]:
    """Every field of a valid final 'active' report with a benchmark and checks, as JSON data."""
    lat = {"count": 5, "mean": 1.0, "std": 0.1, "min": 0.9, "max": 1.2, "p50": 1.0,
           "p90": 1.1, "p99": 1.2}
    bench = {"runtime": {"name": "ai-edge-litert", "version": "1"}, "init_ms": 1.0,
             "first_inference_ms": 1.0, "warmup_runs": 1, "warmup_mean_ms": 1.0,
             "latency_ms": lat, "peak_memory_mb": 9.0, "rss_before_mb": 8.0,
             "measured_seconds": 1.0}
    checks = {"count": 5, "clean_accuracy": 0.9, "agreement": 1.0}
    rep = Report.model_validate({"deployment_id": "d1", "state": "active", "final": True,
                                 "benchmark": bench, "checks": checks, **fields})
    return json.loads(rep.to_json())


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set ``data['a']['b']`` for path 'a.b' (in place); return ``data``."""
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    return data


def sign_raw(data: dict[str, Any], key: SigningKey) -> bytes:
    """``data`` signed over its canonical JSON (NaN allowed), as a device's code would send it."""
    body = {k: v for k, v in data.items() if k != "signature"}
    sig = key.sign_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                    allow_nan=True).encode())
    return json.dumps({**body, "signature": {"key_id": sig.key_id, "value": sig.value}},
                      allow_nan=True).encode()
