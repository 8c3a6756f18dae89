"""A host process running one rollout (the fault tests kill it, or run two at once).

Usage: python rollout_worker.py SPEC.json  (prints 'planned <rollout id>' once it has a plan;
with "print_reports", 'heard report <deployment> <state> <unix time>' for each report it takes)
"""

from __future__ import annotations

import json
import sys
import time

from core.errors import PaodingError
from core.mqtt import Broker
from fleet.gate import Check, checker, keys_from_pems
from fleet.orchestrator import run_rollout
from fleet.registry import Registry
from fleet.rollout import Target, WavePolicy


class Heard:
    """The intake of enrolled keys, printing each report it lets through."""

    def __init__(self, check: Check) -> None:
        self._check = check

    def check(self, kind: str, device_id: str, payload: bytes) -> object:
        msg = self._check(kind, device_id, payload)
        if kind == "report":
            print(f"heard report {msg.deployment_id} {msg.state} {time.time():.6f}", flush=True)
        return msg


def main(path: str) -> int:
    spec = json.loads(open(path).read())

    def progress(event: str, info: dict) -> None:
        if event == "plan":
            print(f"planned {info['rollout_id']}", flush=True)

    with Registry(spec["db"]) as reg:
        intake = (Heard(checker(keys_from_pems(reg.public_keys())))
                  if spec.get("print_reports") else None)
        try:
            result = run_rollout(
                {spec["profile"]: spec["model"]}, Broker.from_url(spec["broker"]), reg,
                policy=WavePolicy(**spec.get("policy", {})),
                target=Target(device_patterns=tuple(spec.get("devices", ()))),
                key=spec.get("key"), share_group=spec.get("share_group"),
                discover_s=spec.get("discover_s", 1.0), progress=progress,
                intake=intake,  # type: ignore[arg-type]
            )
        except PaodingError as exc:
            print(f"error: {exc}", flush=True)
            return 2
    print(json.dumps({"rollout_id": result.rollout_id, "decision": result.decision.value,
                      "resumed": result.resumed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
