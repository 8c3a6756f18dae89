"""Single deployments (`deploy`, `tune --verify-on`) in the fleet record beside rollouts.

A rollout records its deployments and reports as it goes; a single deployment
is recorded when its final report is in, so `paoding-edge fleet` shows every
deployment a device had and what it measured.
"""

from __future__ import annotations

from typing import Any

from fleet.registry import Registry
from fleet.rollout import Outcome, reported_outcome


def record_single(registry: Registry, report: dict[str, Any], source: str) -> None:
    """Record one finished deployment (a DeploymentReport as a dict); ``source`` names the command."""
    registry.add_deployment(report["deployment_id"], report["device_id"],
                            report["model_sha256"], int(report.get("model_size") or 0))
    outcome = reported_outcome(report["state"]) or Outcome.FAILED
    registry.settle([(report["deployment_id"], outcome, report.get("reason") or "")])
    registry.add_report(report["deployment_id"], report["device_id"], report["state"],
                        {**report, "source": source, "final": True})


def measures(body: dict[str, Any]) -> dict[str, float | None]:
    """p90 latency (ms), clean accuracy and lowest robust accuracy from a final report body."""
    bench, checks = body.get("benchmark") or {}, body.get("checks") or {}
    return {"p90_ms": (bench.get("latency_ms") or {}).get("p90"),
            "clean_accuracy": checks.get("clean_accuracy"),
            "robust_accuracy": checks.get("min_robust_accuracy")}
