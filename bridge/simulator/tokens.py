"""Short-lived WebSocket tokens: issue, check, expire. Pure (the clock is given)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Literal

TokenStatus = Literal["valid", "unknown", "expired"]


class TokenStore:
    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        make: Callable[[], str] = lambda: secrets.token_urlsafe(24),
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._make = make
        self._expiry: dict[str, float] = {}
        self.issued = 0

    def issue(self) -> str:
        now = self._clock()
        # Forget tokens long dead, so a long benchmark does not grow the store without bound.
        self._expiry = {t: at for t, at in self._expiry.items() if at + self._ttl > now}
        token = self._make()
        self._expiry[token] = now + self._ttl
        self.issued += 1
        return token

    def status(self, token: str | None) -> TokenStatus:
        expires = self._expiry.get(token) if token else None
        if expires is None:
            return "unknown"
        return "valid" if self._clock() < expires else "expired"

    def remaining(self, token: str) -> float:
        """Seconds until the token expires (0 when it has or is unknown)."""
        return max(0.0, self._expiry.get(token, 0.0) - self._clock())

    def expire_all(self) -> None:
        now = self._clock()
        self._expiry = dict.fromkeys(self._expiry, now)
