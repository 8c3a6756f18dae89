"""Resume the deployment in a state directory's lock; the kill tests kill it.

Usage: python kill_worker.py STATE_DIR [KILL_AFTER_STAGE [SLOWDOWN]]
(prints 'ready' once everything is imported, then the outcome). With
KILL_AFTER_STAGE the process kills itself (SIGKILL) right after that state
ran, before the next one is recorded: e.g. 'activate' is right after the
active-model switch. SLOWDOWN stretches any re-measurement.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from agent.runtime import select_runtime
from agent.states import Context, resume, run_machine
from agent.storage import Storage


def main(state_dir: str, kill_after: str | None = None, slowdown: float = 1.0) -> int:
    st = Storage(Path(state_dir))
    st.recover()
    select_runtime()

    def emit(report) -> None:
        st.spool_add(report.report_id, report.to_json(), retain=report.final)

    def on_step(state, _next) -> None:
        if state.name == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    ctx = Context(storage=st, device_id="pi-1", emit=emit, slowdown=slowdown)
    print("ready", flush=True)
    outcome = run_machine(ctx, resume(ctx), on_step=on_step, timeout=120)
    print(outcome, flush=True)
    return 0 if outcome in (None, "active") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], *(sys.argv[2:3]),
                  *(float(a) for a in sys.argv[3:4])))
