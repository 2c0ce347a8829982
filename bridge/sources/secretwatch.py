"""Secrets read again from their files: a rotated Secret is taken without a restart.

The webhook secrets and the Pinecall API key; the Kafka passwords are not (the clients hold
them), so they need a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from bridge.config import (
    PinecallSettings,
    WebhookSettings,
    reloaded_api_key,
    reloaded_webhook,
    webhook_secret_warnings,
)
from bridge.configerror import ConfigError
from bridge.metrics import Metrics
from bridge.secretfiles import read_secret

log = logging.getLogger(__name__)
Label = Literal["webhook", "pinecall_api_key"]
LABELS: tuple[Label, ...] = ("webhook", "pinecall_api_key")
Result = Literal["reloaded", "invalid", "unreadable"]
RESULTS: tuple[Result, ...] = ("reloaded", "invalid", "unreadable")
T = TypeVar("T")


@dataclass(frozen=True)
class Read:
    """One read of the file: its text, or why it could not be read (naming no content)."""

    text: str | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision(Generic[T]):
    """What a changed file leads to: new settings to use, or the problems keeping the old."""

    result: Result | None  # None: the same secret (a newline added, the first poll)
    fresh: T | None = None
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Secret(Generic[T]):
    """A secret setting read again from its file: the settings holding it, and their checks."""

    label: Label  # secret_reloads_total's `secret`, and the log lines' subject
    reload: Callable[[T, str], T]  # the settings with the file's text, checked, or ConfigError
    values: Callable[[T], object]  # what a reload must change to be one
    reloaded: Callable[[T], str]  # the INFO line of a reload, naming no value
    kept: str  # the ERROR line's start when a value is refused
    warnings: Callable[[T], list[str]] = lambda _: []


def _webhook_values(webhook: WebhookSettings) -> list[str]:
    return [secret.get_secret_value() for secret in webhook.secrets]


def _api_key_value(api: PinecallSettings) -> str | None:
    return api.api_key.get_secret_value() if api.api_key is not None else None


WEBHOOK: Secret[WebhookSettings] = Secret(
    "webhook",
    reloaded_webhook,
    _webhook_values,
    lambda webhook: f"webhook secrets reloaded ({len(webhook.secrets)} secrets)",
    "webhook secrets not reloaded, the previous ones are kept",
    lambda webhook: webhook_secret_warnings(webhook.secrets),
)
API_KEY: Secret[PinecallSettings] = Secret(
    "pinecall_api_key",
    reloaded_api_key,
    _api_key_value,
    lambda _: "Pinecall API key reloaded: the next requests and connections carry the new key",
    "Pinecall API key not reloaded, the previous one is kept",
)


def decide(secret: Secret[T], current: T, read: Read) -> Decision[T]:
    """Swap to the file's value if it differs and passes the checks at load; else keep."""
    if read.text is None:
        return Decision("unreadable", problems=list(read.problems))
    try:
        fresh = secret.reload(current, read.text)
    except ConfigError as exc:
        return Decision("invalid", problems=exc.problems)
    if secret.values(fresh) == secret.values(current):
        return Decision(None)
    return Decision("reloaded", fresh=fresh)


def read_file(path: Path) -> Read:
    """The file's text now; through the kubelet's links, so a swapped `..data` is followed."""
    try:
        return Read(read_secret(path))
    except ConfigError as exc:
        return Read(None, tuple(exc.problems))


class Changes:
    """Passes on a read once it is settled (the poll before read the same) and differs from the
    last one passed on: one decision per change, none on a file caught mid-write."""

    def __init__(self) -> None:
        self._previous: Read | None = None
        self._last: Read | None = None

    def new(self, read: Read) -> bool:
        # A file rewritten in place (truncate, then write) can be read half-written; taken, the
        # half secret would answer every webhook 401 (final for Pinecall) until the next poll.
        # Two consecutive polls agreeing, not a re-read a moment later: a writer may pause for
        # longer than any short delay, while a whole poll period without a change means the
        # write is over. The cost is one period more per rotation, against the kubelet's minute.
        settled = read == self._previous
        self._previous = read
        if not settled or read == self._last:
            return False
        self._last = read
        return True


class SecretWatch(Generic[T]):
    """One secret's file: read at each `check`, its new value given to `use`, or refused."""

    def __init__(
        self,
        secret: Secret[T],
        path: Path,
        current: Callable[[], T],
        use: Callable[[T], None],
        metrics: Metrics,
    ) -> None:
        self.secret = secret
        self._path = path
        self._current = current
        self._use = use
        self._metrics = metrics
        self._changes = Changes()
        for result in RESULTS:  # at 0 from the start, for increase()
            metrics.secret_reloads.labels(secret.label, result)

    def check(self) -> Decision[T] | None:
        """One poll: None when the file is as before or not yet settled (read the same by two
        polls in a row), else what was decided (and done)."""
        # A small file on a tmpfs: read in the loop, as a thread would cost more than the read.
        read = read_file(self._path)
        if not self._changes.new(read):
            return None
        decision = decide(self.secret, self._current(), read)
        if decision.result is None:
            return decision
        self._metrics.secret_reloads.labels(self.secret.label, decision.result).inc()
        if decision.fresh is None:
            for problem in decision.problems:
                log.error(
                    f"{self.secret.kept}: {problem}",
                    extra={"path": str(self._path)},
                )
            return decision
        self._use(decision.fresh)
        log.info(self.secret.reloaded(decision.fresh), extra={"path": str(self._path)})
        for warning in self.secret.warnings(decision.fresh):
            log.warning(warning)
        return decision


async def watch(watches: Sequence[SecretWatch[Any]], every: float) -> None:
    """Check every watched file every `every` seconds, for ever."""
    while True:
        await asyncio.sleep(every)
        for each in watches:
            each.check()
