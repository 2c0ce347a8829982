"""What asyncio reports to the running loop's exception handler while a test runs."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def loop_reports() -> Iterator[list[str]]:
    """Collect the running loop's reports ("Future exception was never retrieved", "Exception in
    callback", "Task was destroyed but it is pending!"), garbage collected on leaving.

    Each report is kept as text: a context's exception or future would hold what it names (a
    producer's batches) past the collection that should report it.
    """
    reports: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reports.append(_described(context)))
    try:
        yield reports
        # asyncio reports a future or task as it is collected: what the test dropped, now.
        gc.collect()
    finally:
        loop.set_exception_handler(None)


def _described(context: dict[str, Any]) -> str:
    """A report's message and the repr of what it names, for the failing assertion to show."""
    named = (f"{key}={context[key]!r}" for key in ("exception", "future", "task") if key in context)
    return "; ".join([context["message"], *named])
