"""Progress for long work: a rich bar on a terminal, plain log lines (about every 10%) otherwise,
so DVC logs and CI output stay readable."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from rich.progress import track as rich_track

        yield from rich_track(items, description=description, total=total, transient=False)
        return
    start, next_report = time.monotonic(), 0.1
    for done, item in enumerate(items, 1):
        yield item
        if total and done / total >= next_report - 1e-9:
            log(f"{description}: {done}/{total} ({done / total:.0%}, {time.monotonic() - start:.1f}s)")
            next_report = min(1.0, next_report + 0.1) if done < total else 2.0
