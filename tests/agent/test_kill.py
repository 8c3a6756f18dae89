"""Kill -9 at random moments of an install: the agent always restarts with a loadable model."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agenthelp import ROOT, SUBPROCESS_ENV
from test_states import prepare

from agent.runtime import select_runtime
from agent.states import Context, Received, run_machine
from agent.storage import Storage
from core.protocol import Manifest

TRIALS = 24
WORKER = Path(__file__).with_name("kill_worker.py")
pytestmark = pytest.mark.timeout(180)


def spawn(state: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, str(WORKER), str(state)], cwd=ROOT,
                         env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout.readline().strip() == b"ready"
    return p


def resume(state: Path) -> str | None:
    """What a restarted agent does: recover, then finish the deployment in the lock."""
    st = Storage(state)
    st.recover()
    lock = st.read_lock()
    if lock is None:
        return None
    m = Manifest.model_validate(lock["manifest"])
    ctx = Context(storage=st, manifest=m, transfer_dir=st.transfer_dir(m.deployment_id),
                  device_id=m.device_id, emit=lambda r: None)
    return run_machine(ctx, Received())


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_model, small_model):
    """A state dir with model A active and model B received, waiting to be installed."""
    base = tmp_path_factory.mktemp("kill-base")
    ctx, _ = prepare(base, tiny_model, dep="a", sign=None)
    assert run_machine(dataclasses.replace(ctx, trust=None), Received()) == "active"
    prepare(base, small_model, dep="b", sign=None, thresholds={"max_p90_ms": 1000})
    return base / "state"


def test_kill_at_random_points_always_leaves_a_loadable_model(template, tmp_path, tiny_model,
                                                              small_model):
    shas = {hashlib.sha256(m).hexdigest(): name for m, name in ((tiny_model, "A"),
                                                               (small_model, "B"))}
    runtime = select_runtime()
    # calibrate: how long does the whole install take after start-up?
    cal = tmp_path / "cal"
    shutil.copytree(template, cal, symlinks=True)
    p = spawn(cal)
    t0 = time.monotonic()
    assert p.stdout.readline().strip() == b"active"
    window = time.monotonic() - t0
    assert p.wait(timeout=60) == 0
    p.stdout.close()
    assert shas[Storage(cal).active()["sha256"]] == "B"

    rng = random.Random(1234)
    stages, outcomes = [], []
    for i in range(TRIALS):
        state = tmp_path / f"t{i}"
        shutil.copytree(template, state, symlinks=True)
        p = spawn(state)
        time.sleep(rng.uniform(0, window * 1.05))
        p.kill()
        p.wait()
        p.stdout.close()
        st = Storage(state)
        stages.append((st.read_lock() or {}).get("stage", "done"))
        st.recover()
        active = st.active()
        assert active is not None, f"trial {i}: no active model"
        path = st.model_path(active["sha256"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == active["sha256"]
        assert st.active_link.resolve() == path.resolve()
        runtime.load(st.active_link)  # loadable
        outcomes.append(shas[active["sha256"]])
        # a restarted agent finishes the deployment
        assert resume(state) in (None, "active")
        assert shas[Storage(state).active()["sha256"]] == "B"
        runtime.load(Storage(state).active_link)
    print("kill stages:", sorted(stages))
    assert len(set(stages)) >= 2, stages  # the kills landed at different stages
    assert "A" in outcomes or "B" in outcomes
