"""Helpers for rollouts against simulated devices: a variant, and the agreement check."""

from __future__ import annotations

import random

from fleetsim import Simulator

from fleet.registry import Registry
from fleet.rollout import Outcome


def variant(size: int = 150_000, seed: int = 1) -> bytes:
    """Model bytes (the simulator runs no interpreter, so any bytes will do)."""
    return random.Random(seed).randbytes(size)


def assert_agree(reg: Registry, sim: Simulator | list[Simulator], rollout_id: str
                 ) -> dict[str, int]:
    """The registry and the devices agree: outcomes, what each runs, one deployment each."""
    devices = {d: dev for s in (sim if isinstance(sim, list) else [sim])
               for d, dev in s.devices.items()}
    rows = reg.rollout_deployments(rollout_id)
    by_device: dict[str, list[dict]] = {}
    for row in rows:
        by_device.setdefault(row["device_id"], []).append(row)
    recorded = {r["device_id"]: r for r in reg.device_rows()}
    counts: dict[str, int] = {}
    for device_id, deps in by_device.items():
        if device_id not in devices:
            continue  # a real agent's deployment: its own test checks it
        assert len(deps) == 1, f"{device_id} has {len(deps)} deployments in {rollout_id}"
        row = deps[0]
        dev = devices[device_id]
        outcome = Outcome(row["outcome"])
        counts[outcome.value] = counts.get(outcome.value, 0) + 1
        assert outcome is not Outcome.PENDING, f"{device_id} still pending"
        runs = dev.active.deployment_id if dev.active else None
        assert (outcome is Outcome.ACTIVE) == (runs == row["deployment_id"]), (
            f"{device_id}: registry says {outcome.value}, device runs {runs}")
        assert dev.accepted.count(row["deployment_id"]) <= 1
    for device_id, dev in devices.items():
        if dev.active is not None:
            assert recorded[device_id]["active_sha"] == dev.active.sha256, device_id
        # no device took on two deployments of one rollout
        assert sum(1 for d in dev.accepted if d.startswith(rollout_id)) <= 1, device_id
    return counts
