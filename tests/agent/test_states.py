"""The state machine on a real state directory and interpreter (no broker)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from agenthelp import make_probes

from agent.states import Context, Transfer, record, resume, run_machine
from agent.storage import Storage
from core.protocol import Artifact, Manifest
from core.signing import SigningKey, TrustStore

KEY = SigningKey.generate()
CHUNK = 4096


def fill(ctx: Context, m: Manifest, blobs: dict[str, bytes]) -> None:
    """Write every chunk of ``m`` as the network would (checked against its digests)."""
    tr = ctx.link.open(m)
    for name, art in m.artifacts().items():
        for i in range(art.chunks):
            tr.write(name, i, blobs[name][i * art.chunk_size:(i + 1) * art.chunk_size])
    ctx.link.close(m.deployment_id)


def prepare(tmp_path: Path, model: bytes, *, dep: str = "d1", probes=None, sign=KEY,
            thresholds=None, corrupt: bool = False, **manifest) -> tuple[Context, list]:
    """A state dir whose lock holds deployment ``dep`` with every chunk received."""
    st = Storage(tmp_path / "state")
    blobs = {"model": model}
    fields = {"deployment_id": dep, "device_id": "pi-1", "model": Artifact.of(model, CHUNK),
              "thresholds": thresholds or {}, "benchmark": {"runs": 20, "warmup_runs": 1},
              **manifest}
    if probes is not None:
        buf = io.BytesIO()
        np.savez(buf, **probes)
        blobs["probes"] = buf.getvalue()
        fields["probes"] = Artifact.of(blobs["probes"], CHUNK)
    m = Manifest.model_validate(fields)
    if sign is not None:
        m = sign.sign(m)
    reports: list = []
    ctx = Context(storage=st, device_id="pi-1", emit=reports.append,
                  trust=TrustStore([KEY.public_key()]))
    fill(ctx, m, blobs)
    if corrupt:  # damaged on disk after the transfer: the whole-file digest catches it
        part = st.transfer_dir(dep) / "model.part"
        part.write_bytes(part.read_bytes()[:-1] + b"\0")
    record(ctx, Transfer(m, st.active()))
    return ctx, reports


def states(reports) -> list[str]:
    return [r.state for r in reports]


def test_happy_path_activates(tmp_path, small_model):
    ctx, reports = prepare(tmp_path, small_model, probes=make_probes(small_model),
                           thresholds={"min_agreement": 0.98, "max_p90_ms": 1000})
    assert run_machine(ctx, resume(ctx)) == "active"
    assert states(reports) == ["received", "verified", "installed", "benchmarked", "active"]
    final = reports[-1]
    assert final.final and final.benchmark.latency_ms.p99 > 0
    assert final.checks.agreement == 1.0 and final.checks.count == 24
    st = ctx.storage
    assert st.active()["sha256"] == hashlib.sha256(small_model).hexdigest()
    assert st.read_lock() is None and not st.transfer_dir("d1").exists()
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
    assert run_machine(ctx, resume(ctx)) == "active"
    kw = {"corrupt": case == "corrupt",
          "sign": None if case == "unsigned" else
          (SigningKey.generate() if case == "other-key" else KEY)}
    ctx2, reports = prepare(tmp_path, small_model, dep="d1", **kw)
    assert run_machine(ctx2, resume(ctx2)) == "rejected"
    assert reports[-1].state == "rejected"
    assert __import__("re").search(match, reports[-1].reason)
    assert ctx2.storage.active()["sha256"] == hashlib.sha256(tiny_model).hexdigest()


def test_threshold_miss_rolls_back(tmp_path, small_model, tiny_model):
    ctx, _ = prepare(tmp_path, tiny_model, dep="d0")
    run_machine(ctx, resume(ctx))
    ctx2, reports = prepare(tmp_path, small_model, dep="d1", thresholds={"max_p90_ms": 1e-6})
    assert run_machine(ctx2, resume(ctx2)) == "rolled_back"
    assert "p90 latency" in reports[-1].reason and reports[-1].benchmark is not None
    assert ctx2.storage.active()["sha256"] == hashlib.sha256(tiny_model).hexdigest()
    assert not ctx2.storage.model_path(hashlib.sha256(small_model).hexdigest()).exists()


def test_unloadable_model_rolls_back_with_interpreter_message(tmp_path, unloadable_model):
    ctx, reports = prepare(tmp_path, unloadable_model)
    assert run_machine(ctx, resume(ctx)) == "rolled_back"
    assert "FULLY_CONNECTED" in reports[-1].reason and "9999" in reports[-1].reason
    assert ctx.storage.active() is None


def test_nan_outputs_fail_every_check_and_roll_back(tmp_path, tiny_model, nan_model):
    """NaN > x is False: a NaN model once passed max_abs_deviation and went active."""
    ctx, _ = prepare(tmp_path, tiny_model, dep="d0")
    assert run_machine(ctx, resume(ctx)) == "active"
    probes = dict(make_probes(tiny_model), expected=make_probes(tiny_model)["reference"])
    ctx2, reports = prepare(tmp_path, nan_model, dep="d1", probes=probes,
                            thresholds={"max_abs_deviation": 0.5})
    assert run_machine(ctx2, resume(ctx2)) == "rolled_back"
    assert "not finite" in reports[-1].reason
    assert ctx2.storage.active()["sha256"] == hashlib.sha256(tiny_model).hexdigest()
