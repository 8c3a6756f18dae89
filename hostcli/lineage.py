"""Lineage for the fleet record: what prune and tune made, from what, and how.

``prune`` and ``tune`` call ``record`` when given ``--db``; the console's model
page reads it back (source model digest -> prune run -> tuner choice -> artifact).
"""

from __future__ import annotations

import os
from typing import Any


def wanted(db: str | None) -> bool:
    """Record into ``db``: a postgresql:// URL, or a fleet record file that exists."""
    from fleet.db import is_postgres_url

    return bool(db) and (is_postgres_url(db) or os.path.isfile(db))


def record(db: str, rows: list[tuple[str, str, str, dict[str, Any]]]) -> str:
    """Rows of (kind, source sha256, output sha256, facts); returns the record's label."""
    from fleet.registry import Registry

    with Registry(db) as registry:
        for kind, source, output, body in rows:
            registry.add_lineage(kind, source, output, body)
        return registry.label
