"""Log lines that can fire once per event, record, request, frame or call-log entry: thinned.

A Kafka outage at thousands of events/s must not become thousands of lines/s. The first line of
a kind is always logged; then at most one every `every` seconds, which says how many like it were
held back since the one before (fields `suppressed` and `suppressed_s`). What is still held back
when the process stops is said then (`flush_all`). Only lines are thinned: metrics count each.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

EVERY = 10.0
K = TypeVar("K", bound=Hashable)
# What tells apart the problems one message stands for (an HTTP status, an error's class).
Kind = str | int | None


@dataclass(frozen=True)
class Held:
    """Lines held back since the last one logged of their kind, and how long ago that one was."""

    count: int
    seconds: float

    def fields(self) -> dict[str, Any]:
        """The fields an admitted line carries: none when nothing was held back before it."""
        return {"suppressed": self.count, "suppressed_s": round(self.seconds, 1)} if self else {}

    def __bool__(self) -> bool:
        return self.count > 0


class Throttle(Generic[K]):
    """Which of a run of like lines to log, by key: the first, then at most one per `every` s.

    Keys come from a fixed set (messages), never from input: the state is one entry a key.
    """

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._logged_at: dict[K, float] = {}
        self._held: dict[K, int] = {}

    def admit(self, key: K) -> Held | None:
        """None: hold this line back (counted). Else log it, saying what was held back before it."""
        now = self._clock()
        last = self._logged_at.get(key)
        if last is not None and now < last + self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._logged_at[key] = now
        return Held(self._held.pop(key, 0), 0.0 if last is None else now - last)

    def drain(self) -> list[tuple[K, Held]]:
        """What is held back and not said yet, by key; from now on it counts as said."""
        now = self._clock()
        held = [(key, Held(n, now - self._logged_at[key])) for key, n in self._held.items()]
        self._held.clear()
        return held


def say_held(logger: logging.Logger, level: int, msg: str, held: Held) -> None:
    """The line for lines held back that no later one of their kind has told of."""
    logger.log(
        level,
        "%s: %d more like this in the last %.0f s",
        msg,
        held.count,
        held.seconds,
        extra=held.fields(),
    )


class Flushable(Protocol):
    def flush(self) -> None: ...

    def forget(self) -> None: ...


# Every throttle in the process, for `flush_all` at stop (weak: a replaced filter may go).
_THROTTLES: weakref.WeakSet[Flushable] = weakref.WeakSet()


def register(throttle: Flushable) -> None:
    _THROTTLES.add(throttle)


def flush_all() -> None:
    """Say what every throttle still holds back: at stop, so no count is lost."""
    for throttle in list(_THROTTLES):
        throttle.flush()


class LogThrottle:
    """A logger whose lines are thinned by level, message and `kind`; used as the logger is.

    One per module, next to its logger: a flood is thinned across calls, partitions and
    connections alike. `kind` (a status, an error's class: a fixed set, never input) tells
    apart problems a message shares, so one of them does not hold back the other's first line.
    """

    def __init__(
        self,
        logger: logging.Logger,
        every: float = EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._every = every
        self._clock = clock
        self._throttle: Throttle[tuple[int, str, Kind]] = Throttle(every, clock)
        register(self)

    def debug(self, msg: str, *, extra: dict[str, Any] | None = None, kind: Kind = None) -> None:
        self._log(logging.DEBUG, msg, extra, None, kind)

    def info(self, msg: str, *, extra: dict[str, Any] | None = None, kind: Kind = None) -> None:
        self._log(logging.INFO, msg, extra, None, kind)

    def warning(self, msg: str, *, extra: dict[str, Any] | None = None, kind: Kind = None) -> None:
        self._log(logging.WARNING, msg, extra, None, kind)

    def error(self, msg: str, *, extra: dict[str, Any] | None = None, kind: Kind = None) -> None:
        self._log(logging.ERROR, msg, extra, None, kind)

    def exception(
        self, msg: str, *, extra: dict[str, Any] | None = None, kind: Kind = None
    ) -> None:
        self._log(logging.ERROR, msg, extra, True, kind)

    def _log(
        self, level: int, msg: str, extra: dict[str, Any] | None, exc_info: Any, kind: Kind
    ) -> None:
        # A level that is off is neither logged nor counted: nothing to say at stop either.
        if not self._logger.isEnabledFor(level):
            return
        held = self._throttle.admit((level, msg, kind))
        if held is None:
            return
        fields = {**extra, **held.fields()} if extra else held.fields()
        # stacklevel 3: the line names the caller of debug/info/..., not this module.
        self._logger.log(level, msg, extra=fields, exc_info=exc_info, stacklevel=3)

    def flush(self) -> None:
        for (level, msg, kind), held in self._throttle.drain():
            say_held(self._logger, level, msg if kind is None else f"{msg} ({kind})", held)

    def forget(self) -> None:
        """Start afresh, as if nothing had been logged (a new logging configuration, a test)."""
        self._throttle = Throttle(self._every, self._clock)


def forget_all() -> None:
    """Every throttle starts afresh: what it held back is dropped unsaid."""
    for throttle in list(_THROTTLES):
        throttle.forget()
