"""What backfill and redrive show as they run: a rich bar with a running count."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


class CountedBar:
    """One task of a rich progress bar, with a running count in its last column."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar = bar
        self._task = task
        self._count = 0

    def total(self, total: int) -> None:
        self._bar.update(self._task, total=total)

    def completed(self, done: int) -> None:
        self._bar.update(self._task, completed=done)

    def describe(self, text: str) -> None:
        self._bar.update(self._task, description=text)

    def advance(self) -> None:
        self._bar.advance(self._task)

    def count(self, more: int) -> None:
        self._count += more
        self._bar.update(self._task, count=self._count)


@contextlib.contextmanager
def counted_bar(
    console: Console, description: str, total: int | None, *, unit: str, counted: str
) -> Iterator[CountedBar]:
    """A bar of `total` `unit`s (None: not known yet), and how many were `counted` beside it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{unit}, {{task.fields[count]}} {counted}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        yield CountedBar(bar, bar.add_task(description, total=total, count=0))
