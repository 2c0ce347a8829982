"""What Kafka refuses every member of a group until an operator acts, said plainly. Pure.

Shared by the dedup stage and the feed lease (both group members): the wait between tries while
a refusal lasts, and a session timeout outside the brokers' `group.min/max.session.timeout.ms`,
which aiokafka reports naming neither the setting nor the bounds. Also which connection set-up
failures are Kafka refusing the client's credentials (its SASL password, its TLS files).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    SaslAuthenticationFailed,
)

# The longest wait between two attempts while Kafka refuses: an ACL or a setting changed is
# taken up within it.
REFUSED_MAX_WAIT = 30
# The brokers' bounds on a group member's session timeout, and Kafka's own defaults for them.
MIN_SESSION_TIMEOUT_MS = "group.min.session.timeout.ms"
MAX_SESSION_TIMEOUT_MS = "group.max.session.timeout.ms"
KAFKA_SESSION_TIMEOUT_BOUNDS_MS = {MIN_SESSION_TIMEOUT_MS: 6_000, MAX_SESSION_TIMEOUT_MS: 1_800_000}


def refused_wait(refused: int) -> float:
    """Seconds to wait after the `refused`-th refusal in a row: 1 s, doubling to
    REFUSED_MAX_WAIT."""
    return float(min(2 ** min(refused - 1, 16), REFUSED_MAX_WAIT))


def session_refusal(session_timeout_ms: int, group: str, bounds: Mapping[str, int | None]) -> str:
    """What to change when the brokers refuse `group` a member with the session timeout.

    `bounds`: the brokers' group.min/max.session.timeout.ms, each None if it could not be read."""
    limits = [
        f"{key} ({value} ms)"
        if value is not None
        else f"{key} (Kafka's default {KAFKA_SESSION_TIMEOUT_BOUNDS_MS[key]} ms; unread here)"
        for key, value in bounds.items()
    ]
    return (
        f"the brokers refuse group {group!r} a member with the session timeout:"
        f" BRIDGE_DEDUP__SESSION_TIMEOUT_MS ({session_timeout_ms} ms) is outside their"
        f" {' to '.join(limits)}. Set BRIDGE_DEDUP__SESSION_TIMEOUT_MS within them (still above"
        " BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS), or change the brokers' bounds; the group takes"
        " no member meanwhile"
    )


# SASL refused (a wrong or revoked password, a mechanism the listener lacks), or the TLS handshake
# failed (a certificate, key or CA the other side does not accept): the credentials, not the path.
_AUTHENTICATION = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ssl.SSLError,
)
# TLS errors that are the link's, not the credentials': the peer gone mid-handshake or mid-read
# (a broker restarting, a dropped link), the socket failing under it.
_LINK = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def refused_authentication(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is Kafka refusing the client's credentials."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _AUTHENTICATION) and not isinstance(current, _LINK):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
