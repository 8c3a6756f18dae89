"""State directory: atomic writes, active/previous, recovery, spool, history, lock."""

from __future__ import annotations

import hashlib
import os

from agent.storage import Storage
from core.files import write_atomic


def install(st: Storage, tmp_path, data: bytes) -> dict:
    src = tmp_path / f"src-{len(data)}"
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    st.install_model(src, sha)
    return {"deployment_id": f"d{len(data)}", "sha256": sha, "size": len(data)}


def test_atomic_write_leaves_no_temp(tmp_path):
    p = tmp_path / "f.json"
    write_atomic(p, b"one")
    write_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_activate_keeps_previous_and_prunes(tmp_path):
    st = Storage(tmp_path / "s")
    a = install(st, tmp_path, os.urandom(100))
    st.activate(a)
    b = install(st, tmp_path, os.urandom(200))
    st.activate(b)
    assert st.active()["sha256"] == b["sha256"]
    assert st.state()["previous"]["sha256"] == a["sha256"]
    assert os.readlink(st.active_link) == f"models/{b['sha256']}.tflite"
    c = install(st, tmp_path, os.urandom(300))
    st.activate(c)
    assert not st.model_path(a["sha256"]).exists()  # neither active nor previous
    assert st.model_path(b["sha256"]).exists()


def test_recover_repairs_link_and_missing_model(tmp_path):
    st = Storage(tmp_path / "s")
    a = install(st, tmp_path, os.urandom(100))
    st.activate(a)
    b = install(st, tmp_path, os.urandom(200))
    st.activate(b)
    st.active_link.unlink()
    (st.root / ".state.json.123.tmp").write_text("{")
    notes = st.recover()
    assert any("link" in n for n in notes) and st.active_link.exists()
    assert not list(st.root.glob(".*.tmp"))
    st.model_path(b["sha256"]).unlink()
    st.recover()
    assert st.active()["sha256"] == a["sha256"]


def test_lock_history_spool(tmp_path):
    st = Storage(tmp_path / "s")
    assert st.read_lock() is None
    st.write_lock({"deployment_id": "d1", "stage": "transfer"})
    assert st.read_lock()["deployment_id"] == "d1"
    st.clear_lock()
    assert st.read_lock() is None
    st.append_history({"deployment_id": "d1", "outcome": "active"})
    with open(st.history_path, "a") as f:
        f.write('{"torn')  # a kill in the middle of a line
    assert st.seen("d1") and not st.seen("d2")
    p1 = st.spool_add("r1", b"{}")
    p2 = st.spool_add("r2", b"{}")
    assert st.spool_list() == [p1, p2]
    st.spool_remove(p1)
    assert st.spool_list() == [p2]
