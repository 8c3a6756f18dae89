"""The fleet's record on SQLite and on PostgreSQL: history, rollouts, locks, outcomes."""

from __future__ import annotations

import sqlite3

import pytest

from core.errors import ConfigError
from fleet.registry import Registry
from fleet.rollout import Device, Outcome


def test_devices_deployments_reports_survive_reopen(registry_target):
    with Registry(registry_target) as reg:
        reg.upsert_device(Device("pi-1", "raspberry-pi-4", frozenset({"kitchen"})), online=True)
        reg.upsert_device(Device("pi-1", "raspberry-pi-4", frozenset({"kitchen", "beta"})))
        reg.add_deployment("d1", "pi-1", "ab" * 32, 1234, rollout_id="r1", wave=0)
        reg.add_report("d1", "pi-1", "received", {"state": "received"}, report_id="x1")
        reg.add_report("d1", "pi-1", "active", {"state": "active", "p90_ms": 1.5},
                       report_id="x2")
        reg.add_report("d1", "pi-1", "active", {"state": "active"}, report_id="x2")  # again
        reg.settle([("d1", Outcome.ACTIVE, "")])
    with Registry(registry_target) as reg:
        assert reg.devices() == [Device("pi-1", "raspberry-pi-4", frozenset({"kitchen", "beta"}))]
        assert reg.device_rows()[0]["online"] == 1  # an upsert without `online` keeps it
        assert reg.outcomes("r1") == {"pi-1": Outcome.ACTIVE}
        assert [r["state"] for r in reg.reports("d1")] == ["received", "active"]
        assert reg.reports("d1")[1]["body"]["p90_ms"] == 1.5
        assert reg.deployments("pi-1")[0]["finished_at"] is not None


def test_one_deployment_per_device_and_rollout(registry_target):
    with Registry(registry_target) as reg:
        reg.upsert_device(Device("pi-1", "p"))
        reg.add_deployment("d1", "pi-1", "ab" * 32, 1, rollout_id="r1")
        with pytest.raises(Exception, match="(?i)unique"):
            reg.add_deployment("d2", "pi-1", "ab" * 32, 1, rollout_id="r1")
        reg.add_deployment("d3", "pi-1", "ab" * 32, 1, rollout_id="r2")  # another rollout: fine


def test_locks_hold_a_device_for_one_rollout(registry_target):
    with Registry(registry_target) as reg, Registry(registry_target) as other:
        reg.upsert_devices([(Device(d, "p"), None, True, None) for d in ("a", "b", "c")])
        reg.create_rollout("r1", {})
        reg.create_rollout("r2", {})
        assert reg.lock_devices("r1", ["a", "b"]) == {}
        assert other.lock_devices("r2", ["b", "c"]) == {"b": "r1"}  # another process
        assert reg.lock_devices("r1", ["a"]) == {}  # re-locking its own is fine
        reg.unlock_devices("r1", ["a"])
        assert other.lock_devices("r2", ["a"]) == {}
        reg.unlock_devices("r1")
        assert other.lock_devices("r2", ["b"]) == {}
        assert {r["device_id"]: r["lock_rollout"] for r in reg.device_rows()} == {
            "a": "r2", "b": "r2", "c": "r2"}


def test_settle_changes_pending_rows_only(registry_target):
    with Registry(registry_target) as reg:
        reg.upsert_device(Device("a", "p"))
        reg.upsert_device(Device("b", "p"))
        reg.add_deployments([("d1", "a", "ab" * 32, 1, "r1", 0, "{}", 1),
                             ("d2", "b", "ab" * 32, 1, "r1", 0, "{}", 2)])
        reg.settle([("d1", Outcome.ACTIVE, "")])
        reg.settle([("d1", Outcome.TIMED_OUT, "late")])  # already final: kept
        assert reg.outcomes("r1") == {"a": Outcome.ACTIVE, "b": Outcome.PENDING}
        reg.settle([("d2", Outcome.OFFLINE, "gone")])
        reg.settle([("d2", Outcome.ACTIVE, "")])  # a late report revises the host's guess
        assert reg.outcomes("r1")["b"] is Outcome.ACTIVE


def test_rollouts_and_artifacts(registry_target):
    with Registry(registry_target) as reg:
        reg.create_rollout("r1", {"waves": [["a"]], "variants": {"p": ["ab" * 32, None]}})
        reg.put_artifact("ab" * 32, b"\x00model\xff")
        reg.put_artifact("ab" * 32, b"\x00model\xff")  # once
        assert [r["rollout_id"] for r in reg.rollouts("running")] == ["r1"]
        reg.set_rollout_state("r1", "done", "all 1 finished")
        assert reg.rollouts("running") == []
        assert reg.rollout("r1")["spec"]["waves"] == [["a"]]
        assert reg.artifact("ab" * 32) == b"\x00model\xff"
        assert reg.artifact("cd" * 32) is None


def test_note_devices_updates_what_they_run(registry_target):
    with Registry(registry_target) as reg:
        reg.upsert_device(Device("a", "p"), online=True)
        reg.note_devices([("a", None, "cd" * 32, "d9"), ("ghost", True, "ef" * 32, None)])
        row = reg.device_rows()[0]
        assert (row["active_sha"], row["active_deployment"], row["online"]) == (
            "cd" * 32, "d9", 1)
        reg.note_devices([("a", False, None, None)])
        assert reg.device_rows()[0]["online"] == 0
        assert len(reg.device_rows()) == 1  # an unknown device is not invented


def test_an_old_sqlite_file_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE devices (device_id TEXT PRIMARY KEY, profile TEXT NOT NULL,
           tags TEXT NOT NULL DEFAULT '[]', runtime TEXT, online INTEGER NOT NULL DEFAULT 0,
           active_sha TEXT, last_seen REAL);
           INSERT INTO devices(device_id, profile) VALUES ('pi-1', 'p');"""
    )
    db.close()
    with Registry(path) as reg:
        assert reg.lock_devices("r1", ["pi-1"]) == {}
        assert reg.device_rows()[0]["lock_rollout"] == "r1"


def test_unreachable_postgres_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"cannot open registry postgresql://nobody@127\.0\.0\.1:1/"):
        Registry("postgresql://nobody:secret@127.0.0.1:1/x")


def test_identity_is_recorded_replaced_and_revoked(registry_target):
    with Registry(registry_target) as reg:
        assert reg.public_key("pi-1") is None
        reg.set_identity("pi-1", "raspberry-pi-4", "PEM-1", "pi-1")
        reg.upsert_device(Device("pi-1", "raspberry-pi-4"), online=True)  # keeps the key
    with Registry(registry_target) as reg:
        assert reg.public_key("pi-1") == "PEM-1"
        row = reg.device_rows()[0]
        assert row["broker_user"] == "pi-1" and row["enrolled_at"] > 0 and row["online"] == 1
        reg.set_identity("pi-1", "raspberry-pi-4", "PEM-2", "pi-1")
        assert reg.public_keys() == {"pi-1": "PEM-2"}
        assert reg.revoke_identity("pi-1") and not reg.revoke_identity("pi-1")
        assert reg.public_key("pi-1") is None and reg.public_keys() == {}


def test_an_older_file_gains_the_identity_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE devices (device_id TEXT PRIMARY KEY, profile TEXT NOT NULL, "
               "tags TEXT NOT NULL DEFAULT '[]', runtime TEXT, online INTEGER NOT NULL "
               "DEFAULT 0, active_sha TEXT, last_seen REAL)")
    db.execute("INSERT INTO devices(device_id, profile) VALUES ('old-1', 'p')")
    db.commit()
    db.close()
    with Registry(path) as reg:
        assert reg.public_key("old-1") is None
        reg.set_identity("old-1", "p", "PEM", "old-1")
        assert reg.public_key("old-1") == "PEM"


def test_a_lock_of_a_rollout_no_longer_running_is_free(registry_target):
    with Registry(registry_target) as reg:
        reg.upsert_devices([(Device(d, "p"), None, True, None) for d in ("a", "b")])
        reg.create_rollout("r1", {})
        assert reg.lock_devices("r1", ["a", "b"]) == {}
        reg.set_rollout_state("r1", "aborted", "x")  # ended without unlocking (a crash)
        reg.create_rollout("r2", {})
        assert reg.lock_devices("r2", ["a"]) == {}
        assert reg.lock_devices("ghost", ["b"]) == {}  # r1 is not running: free
        assert reg.lock_devices("r2", ["b"]) == {}  # "ghost" was never recorded: free


def test_a_device_settles_only_its_own_deployment(tmp_path):
    with Registry(tmp_path / "f.sqlite") as reg:
        reg.upsert_device(Device("pi-1", "p"))
        reg.upsert_device(Device("pi-2", "p"))
        reg.add_deployment("d1", "pi-1", "ab" * 32, 10)
        reg.settle([("d1", Outcome.ACTIVE, "", "pi-2")])  # pi-2 speaking for pi-1
        assert reg.deployments("pi-1")[0]["outcome"] == "pending"
        reg.settle([("d1", Outcome.ACTIVE, "", "pi-1")])
        assert reg.deployments("pi-1")[0]["outcome"] == "active"


def test_a_stale_status_does_not_move_a_device_back(registry_target):
    with Registry(registry_target) as reg:
        reg.upsert_device(Device("pi-a", "raspberry-pi-4"))
        reg.note_devices([("pi-a", True, "new" * 21 + "n", "d2", 200.0)])
        # a retained status from before (an older persistence file): older by the device's clock
        reg.note_devices([("pi-a", True, "old" * 21 + "o", "d1", 100.0)])
        row = reg.device_rows()[0]
        assert row["active_deployment"] == "d2" and row["status_at"] == 200.0
        assert reg.status_times() == {"pi-a": 200.0}
        reg.note_devices([("pi-a", False, None, None)])  # a Last Will carries no order
        assert reg.device_rows()[0]["online"] == 0


def test_in_flight_is_the_devices_own_deployment_while_it_can_answer(registry_target):
    with Registry(registry_target) as reg:
        for d in ("pi-a", "pi-b"):
            reg.upsert_device(Device(d, "raspberry-pi-4"))
        reg.create_rollout("r1", {"variants": {}})
        reg.add_deployment("r1-a", "pi-a", "a" * 64, 10, rollout_id="r1", manifest="{}")
        assert reg.in_flight("pi-a", "r1-a")["deployment_id"] == "r1-a"
        assert reg.in_flight("pi-b", "r1-a") is None  # another device's
        assert reg.in_flight("pi-a", "made-up") is None
        reg.settle([("r1-a", Outcome.TIMED_OUT, "no report")])
        assert reg.in_flight("pi-a", "r1-a") is not None  # its late answer still counts
        reg.set_rollout_state("r1", "done")
        assert reg.in_flight("pi-a", "r1-a") is None  # the rollout is over
