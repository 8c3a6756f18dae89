"""The state machine on a real state directory and interpreter (no broker)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from agenthelp import make_probes

from agent.states import Context, Received, run_machine
from agent.storage import Storage
from core.protocol import Manifest
from core.signing import SigningKey, TrustStore

KEY = SigningKey.generate()


def prepare(tmp_path: Path, model: bytes, *, dep: str = "d1", probes=None, sign=KEY,
            thresholds=None, corrupt: bool = False) -> tuple[Context, list]:
    st = Storage(tmp_path / "state")
    tdir = st.transfer_dir(dep)
    tdir.mkdir(parents=True)
    (tdir / "model.part").write_bytes(model[:-1] + b"\0" if corrupt else model)
    fields = {"deployment_id": dep, "device_id": "pi-1",
              "model": {"sha256": hashlib.sha256(model).hexdigest(), "size": len(model)},
              "thresholds": thresholds or {}, "benchmark": {"runs": 20, "warmup_runs": 1}}
    if probes is not None:
        np.savez(tdir / "probes.npz", **probes)
        (tdir / "probes.npz").rename(tdir / "probes.part")
        data = (tdir / "probes.part").read_bytes()
        fields["probes"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    m = Manifest.model_validate(fields)
    if sign is not None:
        m = sign.sign(m)
    st.write_lock({"deployment_id": dep, "stage": "transfer",
                   "manifest": m.model_dump(mode="json")})
    reports: list = []
    ctx = Context(storage=st, manifest=m, transfer_dir=tdir, device_id="pi-1",
                  emit=reports.append, trust=TrustStore([KEY.public_key()]))
    return ctx, reports


def states(reports) -> list[str]:
    return [r.state for r in reports]


def test_happy_path_activates(tmp_path, small_model):
    ctx, reports = prepare(tmp_path, small_model, probes=make_probes(small_model),
                           thresholds={"min_agreement": 0.98, "max_p90_ms": 1000})
    assert run_machine(ctx, Received()) == "active"
    assert states(reports) == ["received", "verified", "installed", "benchmarked", "active"]
    final = reports[-1]
    assert final.final and final.benchmark.latency_ms.p99 > 0
    assert final.checks.agreement == 1.0 and final.checks.count == 24
    st = ctx.storage
    assert st.active()["sha256"] == ctx.manifest.model.sha256
    assert st.read_lock() is None and not ctx.transfer_dir.exists()
    assert st.active_link.resolve().read_bytes() == small_model
    assert st.history()[-1]["outcome"] == "active"


@pytest.mark.parametrize("case, match", [
    ("corrupt", "sha256 .* does not match"),
    ("unsigned", "not signed"),
    ("other-key", "unknown key"),
])
def test_bad_model_is_rejected_and_previous_stays(tmp_path, small_model, tiny_model, case,
                                                  match):
    ctx, _ = prepare(tmp_path, tiny_model, dep="d0")
    assert run_machine(ctx, Received()) == "active"
    kw = {"corrupt": case == "corrupt",
          "sign": None if case == "unsigned" else
          (SigningKey.generate() if case == "other-key" else KEY)}
    ctx2, reports = prepare(tmp_path, small_model, dep="d1", **kw)
    assert run_machine(ctx2, Received()) == "rejected"
    assert reports[-1].state == "rejected"
    assert __import__("re").search(match, reports[-1].reason)
    assert ctx2.storage.active()["sha256"] == hashlib.sha256(tiny_model).hexdigest()


def test_threshold_miss_rolls_back(tmp_path, small_model, tiny_model):
    ctx, _ = prepare(tmp_path, tiny_model, dep="d0")
    run_machine(ctx, Received())
    ctx2, reports = prepare(tmp_path, small_model, dep="d1", thresholds={"max_p90_ms": 1e-6})
    assert run_machine(ctx2, Received()) == "rolled_back"
    assert "p90 latency" in reports[-1].reason and reports[-1].benchmark is not None
    assert ctx2.storage.active()["sha256"] == hashlib.sha256(tiny_model).hexdigest()
    assert not ctx2.storage.model_path(ctx2.manifest.model.sha256).exists()


def test_unloadable_model_rolls_back_with_interpreter_message(tmp_path, unloadable_model):
    ctx, reports = prepare(tmp_path, unloadable_model)
    assert run_machine(ctx, Received()) == "rolled_back"
    assert "FULLY_CONNECTED" in reports[-1].reason and "9999" in reports[-1].reason
    assert ctx.storage.active() is None
