"""One small SQL door for the registry: SQLite (embedded default) or PostgreSQL.

SQLite suits one host process; PostgreSQL (psycopg 3) suits several host
processes sharing one fleet. Statements are written once with ``?``
placeholders; the PostgreSQL side rewrites them to ``%s``. Every write runs in
a short transaction (``with db.tx():``), so a crash leaves whole writes only.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import ConfigError

Row = dict[str, Any]


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


class Database:
    """A connection to SQLite (a file path) or PostgreSQL (a postgresql:// URL)."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self.postgres = is_postgres_url(target)
        self._lock = threading.RLock()
        self._depth = 0
        if self.postgres:
            try:
                import psycopg
                from psycopg.rows import dict_row
            except ImportError:
                raise ConfigError(
                    "a postgresql:// registry needs psycopg 3: pip install 'paoding-edge[host]'"
                ) from None
            try:
                self._pg = psycopg.connect(self.target, row_factory=dict_row, autocommit=True)
            except psycopg.OperationalError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
                raise ConfigError(f"cannot open registry {_safe(self.target)}: {first}") from None
        else:
            try:
                self._sq = sqlite3.connect(self.target, check_same_thread=False, timeout=30)
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open registry {self.target}: {exc}") from None
            self._sq.row_factory = sqlite3.Row
            self._sq.isolation_level = None  # explicit BEGIN/COMMIT in tx()
            self._sq.execute("PRAGMA journal_mode=WAL")
            self._sq.execute("PRAGMA synchronous=NORMAL")

    @property
    def label(self) -> str:
        return _safe(self.target)

    def close(self) -> None:
        (self._pg if self.postgres else self._sq).close()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    @contextmanager
    def tx(self) -> Iterator[Database]:
        """A transaction; nested blocks join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                if self.postgres:
                    with self._pg.transaction():
                        yield self
                else:
                    self._sq.execute("BEGIN IMMEDIATE")
                    try:
                        yield self
                    except BaseException:
                        self._sq.execute("ROLLBACK")
                        raise
                    self._sq.execute("COMMIT")
            finally:
                self._depth = 0

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._lock:
            if self.postgres:
                cur = self._pg.execute(self._sql(sql), tuple(args))
            else:
                cur = self._sq.execute(sql, tuple(args))
            return cur.rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if not rows:
            return
        with self._lock:
            if self.postgres:
                with self._pg.cursor() as cur:
                    cur.executemany(self._sql(sql), rows)
            else:
                self._sq.executemany(sql, rows)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            if self.postgres:
                return list(self._pg.execute(self._sql(sql), tuple(args)).fetchall())
            return [dict(r) for r in self._sq.execute(sql, tuple(args)).fetchall()]


def _safe(target: str) -> str:
    """The target without a password."""
    if "://" in target and "@" in target:
        scheme, rest = target.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return target
