"""The SQLite record of devices, deployments and reports."""

from __future__ import annotations

import pytest

from fleet.registry import Registry
from fleet.rollout import Device, Outcome


def test_devices_deployments_reports_survive_reopen(tmp_path):
    path = tmp_path / "fleet.sqlite"
    with Registry(path) as reg:
        reg.upsert_device(Device("pi-1", "raspberry-pi-4", frozenset({"kitchen"})), online=True)
        reg.upsert_device(Device("pi-1", "raspberry-pi-4", frozenset({"kitchen", "beta"})))
        reg.add_deployment("d1", "pi-1", "ab" * 32, 1234, rollout_id="r1", wave=0)
        reg.add_report("d1", "pi-1", "received", {"state": "received"})
        reg.add_report("d1", "pi-1", "active", {"state": "active", "p90_ms": 1.5})
        reg.finish_deployment("d1", Outcome.ACTIVE)
    with Registry(path) as reg:
        assert reg.devices() == [Device("pi-1", "raspberry-pi-4", frozenset({"kitchen", "beta"}))]
        assert reg.device_rows()[0]["online"] == 1  # an upsert without `online` keeps it
        assert reg.outcomes("r1") == {"pi-1": Outcome.ACTIVE}
        assert [r["state"] for r in reg.reports("d1")] == ["received", "active"]
        assert reg.reports("d1")[1]["body"]["p90_ms"] == 1.5
        assert reg.deployments("pi-1")[0]["finished_at"] is not None


def test_unknown_deployment_is_an_error(tmp_path):
    with Registry(tmp_path / "f.sqlite") as reg, pytest.raises(KeyError, match="nope"):
        reg.finish_deployment("nope", Outcome.FAILED)


def test_identity_is_recorded_replaced_and_revoked(tmp_path):
    path = tmp_path / "fleet.sqlite"
    with Registry(path) as reg:
        assert reg.public_key("pi-1") is None
        reg.set_identity("pi-1", "raspberry-pi-4", "PEM-1", "pi-1")
        reg.upsert_device(Device("pi-1", "raspberry-pi-4"), online=True)  # keeps the key
    with Registry(path) as reg:
        assert reg.public_key("pi-1") == "PEM-1"
        row = reg.device_rows()[0]
        assert row["broker_user"] == "pi-1" and row["enrolled_at"] > 0 and row["online"] == 1
        reg.set_identity("pi-1", "raspberry-pi-4", "PEM-2", "pi-1")
        assert reg.public_keys() == {"pi-1": "PEM-2"}
        assert reg.revoke_identity("pi-1") and not reg.revoke_identity("pi-1")
        assert reg.public_key("pi-1") is None and reg.public_keys() == {}


def test_an_older_file_gains_the_identity_columns(tmp_path):
    import sqlite3

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
