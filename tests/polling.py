"""One poll with a deadline, for states that raise no event (a file on disk, a log line)."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(ready: Callable[[], bool], timeout: float, failure: str, every: float = 0.02) -> None:
    """Return as soon as ``ready()`` holds; fail with ``failure`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, failure
        time.sleep(every)
