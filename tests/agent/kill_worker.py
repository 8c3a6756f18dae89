"""Run the pending deployment of a state directory; the kill test kills it at random.

Usage: python kill_worker.py STATE_DIR  (prints 'ready' once everything is imported)
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.runtime import select_runtime
from agent.states import Context, Received, run_machine
from agent.storage import Storage
from core.protocol import Manifest


def main(state_dir: str) -> int:
    st = Storage(Path(state_dir))
    st.recover()
    lock = st.read_lock()
    if lock is None:
        print("ready", flush=True)
        return 0
    manifest = Manifest.model_validate(lock["manifest"])
    select_runtime()

    def emit(report) -> None:
        st.spool_add(report.report_id, report.to_json())

    ctx = Context(storage=st, manifest=manifest,
                  transfer_dir=st.transfer_dir(manifest.deployment_id),
                  device_id=manifest.device_id, emit=emit)
    print("ready", flush=True)
    outcome = run_machine(ctx, Received())
    print(outcome, flush=True)
    return 0 if outcome == "active" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
