"""A host process running one rollout (the fault tests kill it, or run two at once).

Usage: python rollout_worker.py SPEC.json  (prints 'planned <rollout id>' once it has a plan)
"""

from __future__ import annotations

import json
import sys

from core.errors import PaodingError
from core.mqtt import Broker
from fleet.orchestrator import run_rollout
from fleet.registry import Registry
from fleet.rollout import Target, WavePolicy


def main(path: str) -> int:
    spec = json.loads(open(path).read())

    def progress(event: str, info: dict) -> None:
        if event == "plan":
            print(f"planned {info['rollout_id']}", flush=True)

    with Registry(spec["db"]) as reg:
        try:
            result = run_rollout(
                {spec["profile"]: spec["model"]}, Broker.from_url(spec["broker"]), reg,
                policy=WavePolicy(**spec.get("policy", {})),
                target=Target(device_patterns=tuple(spec.get("devices", ()))),
                key=spec.get("key"), share_group=spec.get("share_group"),
                discover_s=spec.get("discover_s", 1.0), progress=progress,
            )
        except PaodingError as exc:
            print(f"error: {exc}", flush=True)
            return 2
    print(json.dumps({"rollout_id": result.rollout_id, "decision": result.decision.value,
                      "resumed": result.resumed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
