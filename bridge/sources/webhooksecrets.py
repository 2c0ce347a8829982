"""Webhook secrets read again from their file: a rotated Secret is taken without a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bridge.config import WebhookSettings, reloaded_webhook, webhook_secret_warnings
from bridge.configerror import ConfigError
from bridge.metrics import Metrics
from bridge.secretfiles import read_secret

log = logging.getLogger(__name__)
SECRET_LABEL = "webhook"
Result = Literal["reloaded", "invalid", "unreadable"]
RESULTS: tuple[Result, ...] = ("reloaded", "invalid", "unreadable")


@dataclass(frozen=True)
class Read:
    """One read of the file: its text, or why it could not be read (naming no content)."""

    text: str | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What a changed file leads to: new settings to use, or the problems keeping the old."""

    result: Result | None  # None: the same secrets (a newline added, the first poll)
    webhook: WebhookSettings | None = None
    problems: list[str] = field(default_factory=list)


def decide(current: WebhookSettings, read: Read) -> Decision:
    """Swap to the file's secrets if they differ and pass the checks at load; else keep."""
    if read.text is None:
        return Decision("unreadable", problems=list(read.problems))
    try:
        fresh = reloaded_webhook(current, read.text)
    except ConfigError as exc:
        return Decision("invalid", problems=exc.problems)
    if _values(fresh) == _values(current):
        return Decision(None)
    return Decision("reloaded", webhook=fresh)


def _values(webhook: WebhookSettings) -> list[str]:
    return [secret.get_secret_value() for secret in webhook.secrets]


def read_file(path: Path) -> Read:
    """The file's text now; through the kubelet's links, so a swapped `..data` is followed."""
    try:
        return Read(read_secret(path))
    except ConfigError as exc:
        return Read(None, tuple(exc.problems))


class Changes:
    """Passes on a read only when it differs from the one before: one decision per change."""

    def __init__(self) -> None:
        self._last: Read | None = None

    def new(self, read: Read) -> bool:
        if read == self._last:
            return False
        self._last = read
        return True


class WebhookSecretsWatch:
    """Reads the file every `every` seconds and gives the handler its new secrets, or refuses."""

    def __init__(
        self,
        path: Path,
        current: Callable[[], WebhookSettings],
        use: Callable[[WebhookSettings], None],
        metrics: Metrics,
        every: float,
    ) -> None:
        self._path = path
        self._current = current
        self._use = use
        self._metrics = metrics
        self._every = every
        self._changes = Changes()
        for result in RESULTS:  # at 0 from the start, for increase()
            metrics.secret_reloads.labels(SECRET_LABEL, result)

    def check(self) -> Decision | None:
        """One poll: None when the file is as before, else what was decided (and done)."""
        # A small file on a tmpfs: read in the loop, as a thread would cost more than the read.
        read = read_file(self._path)
        if not self._changes.new(read):
            return None
        decision = decide(self._current(), read)
        if decision.result is None:
            return decision
        self._metrics.secret_reloads.labels(SECRET_LABEL, decision.result).inc()
        if decision.webhook is None:
            for problem in decision.problems:
                log.error(
                    f"webhook secrets not reloaded, the previous ones are kept: {problem}",
                    extra={"path": str(self._path)},
                )
            return decision
        self._use(decision.webhook)
        count = len(decision.webhook.secrets)
        log.info(f"webhook secrets reloaded ({count} secrets)", extra={"path": str(self._path)})
        for warning in webhook_secret_warnings(decision.webhook.secrets):
            log.warning(warning)
        return decision

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            self.check()
