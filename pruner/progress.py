"""Progress for long work: a tqdm bar on a terminal, plain lines in a log or a pipe.

A bar redraws itself with carriage returns, which a log file keeps as one
long line of frames; when stderr is not a terminal each update that moves
past another quarter of the work is one line instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any


class PlainProgress:
    """The part of tqdm's interface the commands use, printing whole lines."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", disable: bool = False, initial: int = 0,
                 **_: Any) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.n, self.postfix, self._shown = initial, "", -1

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        quarter = 4 * self.n // self.total if self.total else self.n
        if not self.disable and quarter > self._shown:
            self._shown = quarter
            of = f"/{self.total}" if self.total else ""
            extra = f" ({self.postfix})" if self.postfix else ""
            print(f"{self.desc}: {self.n}{of} {self.unit}{extra}", file=sys.stderr, flush=True)

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """tqdm on a terminal, else PlainProgress; the same arguments."""
    if not kwargs.get("disable") and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return PlainProgress(iterable, **kwargs)
