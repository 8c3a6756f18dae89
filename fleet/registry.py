"""The fleet's record: devices, deployments and reports, in SQLite.

One file, standard library only. Every write is a short transaction, so the
record survives a crash of the host process between writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.rollout import Device, Outcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id   TEXT PRIMARY KEY,
    profile     TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    runtime     TEXT,
    online      INTEGER NOT NULL DEFAULT 0,
    active_sha  TEXT,
    last_seen   REAL,
    public_key  TEXT,
    broker_user TEXT,
    enrolled_at REAL
);
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT PRIMARY KEY,
    rollout_id    TEXT,
    device_id     TEXT NOT NULL REFERENCES devices(device_id),
    model_sha256  TEXT NOT NULL,
    model_bytes   INTEGER NOT NULL,
    wave          INTEGER NOT NULL DEFAULT 0,
    outcome       TEXT NOT NULL DEFAULT 'pending',
    reason        TEXT,
    started_at    REAL NOT NULL,
    finished_at   REAL
);
CREATE TABLE IF NOT EXISTS reports (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    state         TEXT NOT NULL,
    received_at   REAL NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_deployment ON reports(deployment_id);
CREATE INDEX IF NOT EXISTS deployments_by_rollout ON deployments(rollout_id);
"""

# columns added after the first release: (name, SQL type), added to an older file on open
_DEVICE_COLUMNS = (("public_key", "TEXT"), ("broker_user", "TEXT"), ("enrolled_at", "REAL"))


class Registry:
    """Devices, deployments and reports of one fleet."""

    def __init__(self, path: str | Path = "fleet.sqlite") -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(devices)")}
        with self._db:
            for name, sql_type in _DEVICE_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE devices ADD COLUMN {name} {sql_type}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db:
            yield self._db

    # devices
    def upsert_device(
        self,
        device: Device,
        *,
        runtime: str | None = None,
        online: bool | None = None,
        active_sha: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO devices(device_id, profile, tags, runtime, online, active_sha,
                                       last_seen)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(device_id) DO UPDATE SET
                     profile=excluded.profile, tags=excluded.tags,
                     runtime=COALESCE(excluded.runtime, devices.runtime),
                     online=COALESCE(?, devices.online),
                     active_sha=COALESCE(excluded.active_sha, devices.active_sha),
                     last_seen=excluded.last_seen""",
                (
                    device.device_id,
                    device.profile,
                    json.dumps(sorted(device.tags)),
                    runtime,
                    int(bool(online)),
                    active_sha,
                    time.time(),
                    None if online is None else int(online),
                ),
            )

    def devices(self) -> list[Device]:
        rows = self._db.execute("SELECT * FROM devices ORDER BY device_id").fetchall()
        return [
            Device(r["device_id"], r["profile"], frozenset(json.loads(r["tags"]))) for r in rows
        ]

    def set_identity(self, device_id: str, profile: str, public_key: str | None,
                     broker_user: str | None) -> None:
        """Record an enrolled device: its public key (PEM) and broker user name.

        A device that is not yet known is added with ``profile``; re-enrolling
        replaces the key (the old one is no longer accepted).
        """
        with self._tx() as db:
            db.execute(
                """INSERT INTO devices(device_id, profile, public_key, broker_user, enrolled_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT(device_id) DO UPDATE SET
                     profile=excluded.profile, public_key=excluded.public_key,
                     broker_user=excluded.broker_user, enrolled_at=excluded.enrolled_at""",
                (device_id, profile, public_key, broker_user, time.time()),
            )

    def revoke_identity(self, device_id: str) -> bool:
        """Forget a device's key and broker user; True if it was enrolled."""
        with self._tx() as db:
            cur = db.execute(
                """UPDATE devices SET public_key=NULL, broker_user=NULL, enrolled_at=NULL
                   WHERE device_id=? AND public_key IS NOT NULL""", (device_id,))
            return cur.rowcount == 1

    def public_key(self, device_id: str) -> str | None:
        """The enrolled device's public key (PEM), None when it is not enrolled."""
        row = self._db.execute(
            "SELECT public_key FROM devices WHERE device_id=?", (device_id,)).fetchone()
        return row["public_key"] if row else None

    def public_keys(self) -> dict[str, str]:
        """Every enrolled device's public key (PEM), by device id."""
        rows = self._db.execute(
            "SELECT device_id, public_key FROM devices WHERE public_key IS NOT NULL")
        return {r["device_id"]: r["public_key"] for r in rows}

    def device_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM devices ORDER BY device_id")]

    # deployments
    def add_deployment(
        self,
        deployment_id: str,
        device_id: str,
        model_sha256: str,
        model_bytes: int,
        *,
        rollout_id: str | None = None,
        wave: int = 0,
    ) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO deployments(deployment_id, rollout_id, device_id, model_sha256,
                                           model_bytes, wave, started_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (
                    deployment_id,
                    rollout_id,
                    device_id,
                    model_sha256,
                    model_bytes,
                    wave,
                    time.time(),
                ),
            )

    def finish_deployment(self, deployment_id: str, outcome: Outcome, reason: str = "") -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE deployments SET outcome=?, reason=?, finished_at=? WHERE deployment_id=?",
                (outcome.value, reason, time.time(), deployment_id),
            )
            if cur.rowcount != 1:
                raise KeyError(f"no deployment {deployment_id!r} in {self.path}")

    def outcomes(self, rollout_id: str) -> dict[str, Outcome]:
        rows = self._db.execute(
            "SELECT device_id, outcome FROM deployments WHERE rollout_id=?", (rollout_id,)
        )
        return {r["device_id"]: Outcome(r["outcome"]) for r in rows}

    def deployments(self, device_id: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM deployments", ()
        if device_id is not None:
            query, args = query + " WHERE device_id=?", (device_id,)
        return [dict(r) for r in self._db.execute(query + " ORDER BY started_at", args)]

    # reports
    def add_report(self, deployment_id: str, device_id: str, state: str, body: dict) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO reports(deployment_id, device_id, state, received_at, body)
                   VALUES (?, ?, ?, ?, ?)""",
                (deployment_id, device_id, state, time.time(), json.dumps(body, sort_keys=True)),
            )

    def reports(self, deployment_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM reports WHERE deployment_id=? ORDER BY id", (deployment_id,)
        )
        return [{**dict(r), "body": json.loads(r["body"])} for r in rows]
