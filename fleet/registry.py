"""The fleet's record and source of truth: devices, rollouts, deployments, reports.

SQLite by default (one file), PostgreSQL (``postgresql://...``) when several
host processes share a fleet. Every write is a short transaction, so the
record survives a crash of the host between writes; a rollout resumes from it.

What it holds beyond history:
- ``rollouts``: each rollout's spec (variants, waves, policy) and state, so a
  crashed rollout continues where it stopped;
- ``artifacts``: the bytes of every variant a rollout publishes (by sha256),
  so a resume needs no files;
- ``devices.lock_rollout``: one rollout at a time per device;
- ``deployments.manifest``: the signed manifest sent, re-sent unchanged;
- ``devices.active_sha``: what each device runs, from its signed reports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fleet.db import Database
from fleet.rollout import Device, Outcome

_TABLES = {
    "devices": """CREATE TABLE IF NOT EXISTS devices (
        device_id   TEXT PRIMARY KEY,
        profile     TEXT NOT NULL,
        tags        TEXT NOT NULL DEFAULT '[]',
        runtime     TEXT,
        online      INTEGER NOT NULL DEFAULT 0,
        active_sha  TEXT,
        last_seen   DOUBLE PRECISION
    )""",
    "rollouts": """CREATE TABLE IF NOT EXISTS rollouts (
        rollout_id  TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        reason      TEXT,
        spec        TEXT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        updated_at  DOUBLE PRECISION NOT NULL
    )""",
    "artifacts": """CREATE TABLE IF NOT EXISTS artifacts (
        sha256      TEXT PRIMARY KEY,
        size        BIGINT NOT NULL,
        data        {blob} NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL
    )""",
    "deployments": """CREATE TABLE IF NOT EXISTS deployments (
        deployment_id TEXT PRIMARY KEY,
        rollout_id    TEXT,
        device_id     TEXT NOT NULL REFERENCES devices(device_id),
        model_sha256  TEXT NOT NULL,
        model_bytes   BIGINT NOT NULL,
        wave          INTEGER NOT NULL DEFAULT 0,
        outcome       TEXT NOT NULL DEFAULT 'pending',
        reason        TEXT,
        started_at    DOUBLE PRECISION NOT NULL,
        finished_at   DOUBLE PRECISION
    )""",
    "reports": """CREATE TABLE IF NOT EXISTS reports (
        id            {serial},
        report_id     TEXT,
        deployment_id TEXT NOT NULL,
        device_id     TEXT NOT NULL,
        state         TEXT NOT NULL,
        received_at   DOUBLE PRECISION NOT NULL,
        body          TEXT NOT NULL
    )""",
    # provenance: one row per step that made a file from another (prune, tune)
    "lineage": """CREATE TABLE IF NOT EXISTS lineage (
        id            {serial},
        kind          TEXT NOT NULL,
        source_sha256 TEXT NOT NULL,
        output_sha256 TEXT NOT NULL,
        created_at    DOUBLE PRECISION NOT NULL,
        body          TEXT NOT NULL
    )""",
    # device messages the intake gate refused, counted by cause (never stored themselves)
    "rejections": """CREATE TABLE IF NOT EXISTS rejections (
        cause         TEXT PRIMARY KEY,
        count         BIGINT NOT NULL,
        last_reason   TEXT,
        last_at       DOUBLE PRECISION NOT NULL
    )""",
    # latency observations: one per VERIFIED deployment (final report 'active' with a
    # device benchmark), the features of its model joined from model_features by sha256
    "observations": """CREATE TABLE IF NOT EXISTS observations (
        deployment_id  TEXT PRIMARY KEY,
        device_id      TEXT NOT NULL,
        profile        TEXT NOT NULL,
        model_sha256   TEXT NOT NULL,
        p50_ms         DOUBLE PRECISION NOT NULL,
        p90_ms         DOUBLE PRECISION NOT NULL,
        peak_memory_mb DOUBLE PRECISION,
        threads        INTEGER,
        runtime        TEXT,
        emulation      TEXT,
        received_at    DOUBLE PRECISION NOT NULL
    )""",
    "model_features": """CREATE TABLE IF NOT EXISTS model_features (
        sha256      TEXT PRIMARY KEY,
        features    TEXT NOT NULL,
        export      TEXT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL
    )""",
}
# columns added after the first release: (table, column, type); old files gain them on open
_COLUMNS = [
    ("devices", "active_deployment", "TEXT"),
    ("devices", "lock_rollout", "TEXT"),
    ("deployments", "manifest", "TEXT"),
    ("deployments", "release", "BIGINT"),
    ("reports", "report_id", "TEXT"),
    ("devices", "status_at", "DOUBLE PRECISION"),
    ("devices", "public_key", "TEXT"),  # enrolment: the device's Ed25519 public key (PEM)
    ("devices", "broker_user", "TEXT"),
    ("devices", "enrolled_at", "DOUBLE PRECISION"),
]
_INDEXES = [
    "CREATE INDEX IF NOT EXISTS reports_by_deployment ON reports(deployment_id)",
    "CREATE INDEX IF NOT EXISTS deployments_by_rollout ON deployments(rollout_id)",
    "CREATE INDEX IF NOT EXISTS deployments_by_device ON deployments(device_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS one_deployment_per_rollout_device "
    "ON deployments(rollout_id, device_id) WHERE rollout_id IS NOT NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS reports_once ON reports(report_id) "
    "WHERE report_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS lineage_by_output ON lineage(output_sha256)",
    "CREATE INDEX IF NOT EXISTS observations_by_profile ON observations(profile)",
]


class Registry:
    """Devices, rollouts, deployments and reports of one fleet."""

    def __init__(self, target: str | Path = "fleet.sqlite") -> None:
        self.path = target
        self.db = Database(target)
        self._migrate()

    @property
    def label(self) -> str:
        return self.db.label

    def _migrate(self) -> None:
        pg = self.db.postgres
        with self.db.tx():
            for ddl in _TABLES.values():
                self.db.execute(ddl.format(
                    blob="BYTEA" if pg else "BLOB",
                    serial="BIGSERIAL PRIMARY KEY" if pg else "INTEGER PRIMARY KEY AUTOINCREMENT",
                ))
            for table, column, kind in _COLUMNS:
                if column not in self._columns(table):
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for ddl in _INDEXES:
                self.db.execute(ddl)

    def _columns(self, table: str) -> set[str]:
        if self.db.postgres:
            rows = self.db.query(
                "SELECT column_name AS name FROM information_schema.columns "
                "WHERE table_name=? AND table_schema=current_schema()", (table,))
        else:
            rows = self.db.query(f"PRAGMA table_info({table})")
        return {r["name"] for r in rows}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # devices ---------------------------------------------------------------
    def upsert_device(self, device: Device, *, runtime: str | None = None,
                      online: bool | None = None, active_sha: str | None = None) -> None:
        self.upsert_devices([(device, runtime, online, active_sha)])

    def upsert_devices(
        self, rows: Iterable[tuple[Device, str | None, bool | None, str | None]]
    ) -> None:
        """Record devices (profile, tags, runtime, online, active model) in one transaction."""
        now = time.time()
        with self.db.tx():
            self.db.executemany(
                """INSERT INTO devices(device_id, profile, tags, runtime, online, active_sha,
                                       last_seen)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(device_id) DO UPDATE SET
                     profile=excluded.profile, tags=excluded.tags,
                     runtime=COALESCE(excluded.runtime, devices.runtime),
                     online=COALESCE(?, devices.online),
                     active_sha=COALESCE(excluded.active_sha, devices.active_sha),
                     last_seen=excluded.last_seen""",
                [
                    (d.device_id, d.profile, json.dumps(sorted(d.tags)), runtime,
                     int(bool(online)), sha, now, None if online is None else int(online))
                    for d, runtime, online, sha in rows
                ],
            )

    def note_devices(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """What known devices say now: (device id, online, active sha, deployment id[,
        status time]). A status older than the one recorded (a stale retained copy,
        by the device's own clock) changes nothing."""
        now = time.time()
        with self.db.tx():
            self.db.executemany(
                """UPDATE devices SET online=COALESCE(?, online),
                     active_sha=COALESCE(?, active_sha),
                     active_deployment=COALESCE(?, active_deployment), last_seen=?,
                     status_at=COALESCE(?, status_at)
                   WHERE device_id=? AND (CAST(? AS DOUBLE PRECISION) IS NULL OR status_at IS NULL
                          OR status_at <= ?)""",
                [(None if r[1] is None else int(r[1]), r[2], r[3], now,
                  r[4] if len(r) > 4 else None, r[0],
                  r[4] if len(r) > 4 else None, r[4] if len(r) > 4 else None)
                 for r in rows],
            )

    def status_times(self) -> dict[str, float]:
        """The device clock time of each device's newest status taken (to order statuses)."""
        return {r["device_id"]: r["status_at"] for r in self.db.query(
            "SELECT device_id, status_at FROM devices WHERE status_at IS NOT NULL")}

    def devices(self) -> list[Device]:
        return [
            Device(r["device_id"], r["profile"], frozenset(json.loads(r["tags"])))
            for r in self.device_rows()
        ]

    def device_rows(self) -> list[dict[str, Any]]:
        return self.db.query("SELECT * FROM devices ORDER BY device_id")

    # enrolment -------------------------------------------------------------
    def set_identity(self, device_id: str, profile: str, public_key: str | None,
                     broker_user: str | None) -> None:
        """Record an enrolled device: its public key (PEM) and broker user name.

        A device that is not yet known is added with ``profile``; re-enrolling
        replaces the key (the old one is no longer accepted).
        """
        with self.db.tx():
            self.db.execute(
                """INSERT INTO devices(device_id, profile, public_key, broker_user, enrolled_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT(device_id) DO UPDATE SET
                     profile=excluded.profile, public_key=excluded.public_key,
                     broker_user=excluded.broker_user, enrolled_at=excluded.enrolled_at""",
                (device_id, profile, public_key, broker_user, time.time()),
            )

    def revoke_identity(self, device_id: str) -> bool:
        """Forget a device's key and broker user; True if it was enrolled."""
        with self.db.tx():
            changed = self.db.execute(
                """UPDATE devices SET public_key=NULL, broker_user=NULL, enrolled_at=NULL
                   WHERE device_id=? AND public_key IS NOT NULL""", (device_id,))
        return changed == 1

    def public_key(self, device_id: str) -> str | None:
        """The enrolled device's public key (PEM), None when it is not enrolled."""
        rows = self.db.query("SELECT public_key FROM devices WHERE device_id=?", (device_id,))
        return rows[0]["public_key"] if rows else None

    def public_keys(self) -> dict[str, str]:
        """Every enrolled device's public key (PEM), by device id."""
        rows = self.db.query(
            "SELECT device_id, public_key FROM devices WHERE public_key IS NOT NULL")
        return {r["device_id"]: r["public_key"] for r in rows}

    # one rollout at a time per device ---------------------------------------
    def lock_devices(self, rollout_id: str, device_ids: Sequence[str]) -> dict[str, str]:
        """Lock devices for ``rollout_id``; returns the ones held by another rollout (id -> it).

        A lock whose rollout is no longer running (or was never recorded) is free.
        """
        with self.db.tx():
            self.db.executemany(
                "UPDATE devices SET lock_rollout=? WHERE device_id=? AND (lock_rollout IS NULL "
                "OR lock_rollout NOT IN (SELECT rollout_id FROM rollouts "
                "WHERE state IN ('running', 'aborting')))",
                [(rollout_id, d) for d in device_ids],
            )
            held = {r["device_id"]: r["lock_rollout"]
                    for r in self.db.query("SELECT device_id, lock_rollout FROM devices")}
        return {d: held[d] for d in device_ids if held.get(d) not in (None, rollout_id)}

    def unlock_devices(self, rollout_id: str, device_ids: Sequence[str] | None = None) -> None:
        """Free the devices ``rollout_id`` holds (all of them by default)."""
        with self.db.tx():
            if device_ids is None:
                self.db.execute(
                    "UPDATE devices SET lock_rollout=NULL WHERE lock_rollout=?", (rollout_id,))
            else:
                self.db.executemany(
                    "UPDATE devices SET lock_rollout=NULL WHERE lock_rollout=? AND device_id=?",
                    [(rollout_id, d) for d in device_ids],
                )

    # rollouts --------------------------------------------------------------
    def create_rollout(self, rollout_id: str, spec: dict[str, Any]) -> None:
        now = time.time()
        with self.db.tx():
            self.db.execute(
                "INSERT INTO rollouts(rollout_id, state, spec, created_at, updated_at) "
                "VALUES (?, 'running', ?, ?, ?)",
                (rollout_id, json.dumps(spec, sort_keys=True), now, now),
            )

    def rollout(self, rollout_id: str) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM rollouts WHERE rollout_id=?", (rollout_id,))
        return {**rows[0], "spec": json.loads(rows[0]["spec"])} if rows else None

    def rollouts(self, state: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM rollouts", ()
        if state is not None:
            query, args = query + " WHERE state=?", (state,)
        rows = self.db.query(query + " ORDER BY created_at", args)
        return [{**r, "spec": json.loads(r["spec"])} for r in rows]

    def set_rollout_spec(self, rollout_id: str, spec: dict[str, Any]) -> None:
        with self.db.tx():
            self.db.execute(
                "UPDATE rollouts SET spec=?, updated_at=? WHERE rollout_id=?",
                (json.dumps(spec, sort_keys=True), time.time(), rollout_id),
            )

    def set_rollout_state(self, rollout_id: str, state: str, reason: str = "") -> None:
        with self.db.tx():
            self.db.execute(
                "UPDATE rollouts SET state=?, reason=?, updated_at=? WHERE rollout_id=?",
                (state, reason, time.time(), rollout_id),
            )

    # artifacts -------------------------------------------------------------
    def put_artifact(self, sha256: str, data: bytes) -> None:
        with self.db.tx():
            self.db.execute(
                "INSERT INTO artifacts(sha256, size, data, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(sha256) DO NOTHING",
                (sha256, len(data), data, time.time()),
            )

    def artifact(self, sha256: str) -> bytes | None:
        rows = self.db.query("SELECT data FROM artifacts WHERE sha256=?", (sha256,))
        return bytes(rows[0]["data"]) if rows else None

    # deployments -----------------------------------------------------------
    def add_deployment(self, deployment_id: str, device_id: str, model_sha256: str,
                       model_bytes: int, *, rollout_id: str | None = None, wave: int = 0,
                       manifest: str | None = None, release: int | None = None) -> None:
        self.add_deployments([(deployment_id, device_id, model_sha256, model_bytes, rollout_id,
                               wave, manifest, release)])

    def add_deployments(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows of (deployment id, device id, sha256, bytes, rollout id, wave, manifest, release).

        A device gets at most one deployment per rollout (a unique index says so).
        """
        now = time.time()
        with self.db.tx():
            self.db.executemany(
                """INSERT INTO deployments(deployment_id, device_id, model_sha256, model_bytes,
                                           rollout_id, wave, manifest, release, started_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(*r, now) for r in rows],
            )

    def settle(self, rows: Iterable[tuple[str, Outcome, str] | tuple[str, Outcome, str, str]]
               ) -> None:
        """Record final outcomes (deployment id, outcome, reason[, device id]).

        A pending deployment takes any outcome. One the host decided without a
        report (timed out, offline, cancelled) takes a device-reported final
        outcome that arrives later: the device's word is the truth. With a
        device id, only that device's deployment is settled (a device speaks
        for its own deployments only).
        """
        now = time.time()
        args = []
        for row in rows:
            dep, o, reason = row[:3]
            device = row[3] if len(row) > 3 else None
            args.append((o.value, reason, now, dep, int(not o.revisable), device))
        with self.db.tx():
            self.db.executemany(
                "UPDATE deployments SET outcome=?, reason=?, finished_at=? "
                "WHERE deployment_id=? AND (outcome='pending' OR "
                "(? = 1 AND outcome IN ('timed_out', 'offline', 'cancelled'))) "
                "AND device_id = COALESCE(?, device_id)",
                args,
            )

    def in_flight(self, device_id: str, deployment_id: str) -> dict[str, Any] | None:
        """``deployment_id`` if it is ``device_id``'s and in flight: pending, or decided by
        the host without the device's word while its rollout runs (the device may still
        answer). What the intake asks before it stores or acts on a device's report."""
        rows = self.db.query(
            "SELECT d.* FROM deployments d LEFT JOIN rollouts r ON r.rollout_id = d.rollout_id "
            "WHERE d.deployment_id=? AND d.device_id=? AND (d.outcome='pending' OR "
            "(d.outcome IN ('timed_out', 'offline', 'cancelled') "
            "AND r.state IN ('running', 'aborting')))", (deployment_id, device_id))
        return rows[0] if rows else None

    def outcomes(self, rollout_id: str) -> dict[str, Outcome]:
        rows = self.db.query(
            "SELECT device_id, outcome FROM deployments WHERE rollout_id=?", (rollout_id,))
        return {r["device_id"]: Outcome(r["outcome"]) for r in rows}

    def rollout_deployments(self, rollout_id: str) -> list[dict[str, Any]]:
        return self.db.query(
            "SELECT * FROM deployments WHERE rollout_id=? ORDER BY wave, device_id",
            (rollout_id,))

    def deployments(self, device_id: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM deployments", ()
        if device_id is not None:
            query, args = query + " WHERE device_id=?", (device_id,)
        return self.db.query(query + " ORDER BY started_at, deployment_id", args)

    # reports ---------------------------------------------------------------
    def add_report(self, deployment_id: str, device_id: str, state: str, body: dict,
                   report_id: str | None = None) -> None:
        self.add_reports([(report_id, deployment_id, device_id, state, body)])

    def add_reports(self, rows: Iterable[tuple[str | None, str, str, str, dict]]) -> None:
        """Rows of (report id, deployment id, device id, state, body); repeats are ignored."""
        rows = list(rows)
        now = time.time()
        with self.db.tx():
            self._observe(rows, now)  # VERIFIED reports feed the latency models
            self.db.executemany(
                """INSERT INTO reports(report_id, deployment_id, device_id, state, received_at,
                                       body)
                   VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                [(rid, dep, dev, state, now, json.dumps(body, sort_keys=True))
                 for rid, dep, dev, state, body in rows],
            )

    def reports(self, deployment_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT * FROM reports WHERE deployment_id=? ORDER BY id", (deployment_id,))
        return [{**r, "body": json.loads(r["body"])} for r in rows]

    # lineage ---------------------------------------------------------------
    def add_lineage(self, kind: str, source_sha256: str, output_sha256: str,
                    body: dict[str, Any]) -> None:
        """Record that a ``kind`` step (prune, tune) made ``output_sha256`` from the source."""
        with self.db.tx():
            self.db.execute(
                "INSERT INTO lineage(kind, source_sha256, output_sha256, created_at, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (kind, source_sha256, output_sha256, time.time(),
                 json.dumps(body, sort_keys=True, default=str)),
            )

    def lineage(self, output_sha256: str) -> list[dict[str, Any]]:
        """The recorded steps that made ``output_sha256``, newest first."""
        rows = self.db.query(
            "SELECT * FROM lineage WHERE output_sha256=? ORDER BY id DESC", (output_sha256,))
        return [{**r, "body": json.loads(r["body"])} for r in rows]

    # the intake gate ---------------------------------------------------------
    def add_rejections(self, counts: dict[str, int], last_reason: dict[str, str]) -> None:
        """Add refused device messages to the counts by cause (with the latest reason)."""
        now = time.time()
        with self.db.tx():
            self.db.executemany(
                """INSERT INTO rejections(cause, count, last_reason, last_at)
                   VALUES (?, ?, ?, ?)
                   ON CONFLICT(cause) DO UPDATE SET count=rejections.count + excluded.count,
                     last_reason=excluded.last_reason, last_at=excluded.last_at""",
                [(c, n, last_reason.get(c), now) for c, n in sorted(counts.items()) if n],
            )

    def rejections(self) -> list[dict[str, Any]]:
        """The refused device messages by cause: cause, count, last_reason, last_at."""
        return self.db.query("SELECT * FROM rejections ORDER BY count DESC, cause")

    # latency observations ---------------------------------------------------
    def _observe(self, rows: Sequence[tuple[str | None, str, str, str, dict]], now: float
                 ) -> None:
        """Record the measurement of each VERIFIED report among ``rows``.

        VERIFIED: a final 'active' report (the device ran the model, passed its
        checks and keeps it) with a benchmark measured on the device's own CPU (not
        under an instruction-set emulator). The model and the device's profile come
        from the deployment the registry recorded, so a report speaks only for its
        own device's deployment; the model's features join later by its sha256.
        """
        args = []
        for _rid, dep, dev, state, body in rows:
            bench = body.get("benchmark") or {}
            lat = bench.get("latency_ms") or {}
            if (state != "active" or not body.get("final") or bench.get("cpu_emulator")
                    or not lat.get("p90")):
                continue
            runtime = bench.get("runtime") or {}
            args.append((
                float(lat.get("p50") or lat["p90"]), float(lat["p90"]),
                bench.get("peak_memory_mb"), bench.get("threads"),
                f"{runtime.get('name', '')} {runtime.get('version', '')}".strip() or None,
                bench.get("emulation") if bench.get("emulated") else None,
                now, dep, dev, body.get("model_sha256"),
            ))
        self.db.executemany(
            """INSERT INTO observations(deployment_id, device_id, profile, model_sha256,
                                        p50_ms, p90_ms, peak_memory_mb, threads, runtime,
                                        emulation, received_at)
               SELECT d.deployment_id, d.device_id, v.profile, d.model_sha256,
                      ?, ?, ?, ?, ?, ?, ?
               FROM deployments d, devices v
               WHERE d.deployment_id=? AND d.device_id=? AND v.device_id=d.device_id
                 AND d.model_sha256=COALESCE(?, d.model_sha256)
               ON CONFLICT(deployment_id) DO NOTHING""",
            args,
        )

    def observations(self, profile: str | None = None) -> list[dict[str, Any]]:
        """Latency observations (oldest first), with the model's ``features`` (None when the
        features of its model are not recorded yet) and ``export`` joined by sha256."""
        query = ("SELECT o.*, f.features, f.export FROM observations o "
                 "LEFT JOIN model_features f ON f.sha256=o.model_sha256")
        args: tuple[Any, ...] = ()
        if profile is not None:
            query, args = query + " WHERE o.profile=?", (profile,)
        rows = self.db.query(query + " ORDER BY o.received_at, o.deployment_id", args)
        return [{**r, "features": json.loads(r["features"]) if r["features"] else None}
                for r in rows]

    def put_model_features(self, sha256: str, features: dict[str, Any], export: str) -> None:
        """The latency model's features of one model (``ModelFeatures.to_dict()``)."""
        with self.db.tx():
            self.db.execute(
                "INSERT INTO model_features(sha256, features, export, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(sha256) DO NOTHING",
                (sha256, json.dumps(features, sort_keys=True), export, time.time()),
            )
    def final_reports(self) -> dict[str, dict[str, Any]]:
        """The last final report body of every deployment that has one, by deployment id."""
        rows = self.db.query("SELECT deployment_id, body FROM reports ORDER BY id")
        out = {}
        for r in rows:
            body = json.loads(r["body"])
            if body.get("final"):
                out[r["deployment_id"]] = body
        return out
