"""What the dedup stage needs from Kafka that only an operator can give, said plainly. Pure.

A refused transactional id, consumer group, read of the ingest topic or write of an output topic,
or a transaction timeout above the brokers' `transaction.max.timeout.ms`, fails at every retry
until an ACL or a setting changes: aiokafka's error names neither the ACL (resource type, name or
prefix, operation) nor the setting.
"""

from __future__ import annotations

from aiokafka.errors import (
    GroupAuthorizationFailedError,
    InvalidTransactionTimeout,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from bridge.config import DedupSettings
from bridge.sink.acls import ACLS

# Kafka's own default for transaction.max.timeout.ms.
KAFKA_MAX_TRANSACTION_TIMEOUT_MS = 900_000
REFUSALS = (InvalidTransactionTimeout, TransactionalIdAuthorizationFailed)


class DedupRefusedError(Exception):
    """Kafka refuses the dedup stage something a retry cannot cure; the message says what."""


def refusal(
    exc: BaseException,
    settings: DedupSettings,
    transactional_id: str,
    brokers_max_timeout_ms: int | None = None,
) -> str | None:
    """What to change for `exc`, or None if it is no refusal of the operator's to cure.

    `brokers_max_timeout_ms`: the brokers' transaction.max.timeout.ms, if it could be read."""
    if isinstance(exc, InvalidTransactionTimeout):
        known = (
            brokers_max_timeout_ms is not None
            and brokers_max_timeout_ms < settings.transaction_timeout_ms
        )
        theirs = (
            f" ({brokers_max_timeout_ms} ms)"
            if known
            else f" (Kafka's default {KAFKA_MAX_TRANSACTION_TIMEOUT_MS} ms;"
            " this cluster's is lower)"
        )
        at_most = f"{brokers_max_timeout_ms} ms" if known else "transaction.max.timeout.ms"
        return (
            "the brokers refuse the dedup stage's transaction timeout:"
            f" BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS ({settings.transaction_timeout_ms} ms) is above"
            f" their transaction.max.timeout.ms{theirs}. Lower"
            f" BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS to at most {at_most} (keeping"
            f" BRIDGE_DEDUP__COMMIT_INTERVAL_MS ({settings.commit_interval_ms}) below it), or raise"
            " the brokers' transaction.max.timeout.ms"
        )
    if isinstance(exc, TransactionalIdAuthorizationFailed):
        return (
            f"Kafka refuses the dedup stage its transactional id {transactional_id!r}: the"
            " principal needs an ACL allowing Write and Describe on TransactionalId with the prefix"
            f" {settings.group + '-dedup-'!r} ({ACLS})"
        )
    if isinstance(exc, GroupAuthorizationFailedError):
        return (
            f"Kafka refuses the dedup stage its consumer group {settings.group!r}"
            " (BRIDGE_DEDUP__GROUP): the principal needs an ACL allowing Read on Group"
            f" {settings.group!r} ({ACLS})"
        )
    if isinstance(exc, TopicAuthorizationFailedError):
        # Raised by the stage's fetches (one topic) or its offset commits (a set of them).
        topics = refused_topics(exc) or ["BRIDGE_TOPICS__INGEST"]
        named = ", ".join(repr(t) for t in topics)
        acls = ", ".join(f"Read on Topic {t!r}" for t in topics)
        return (
            f"Kafka refuses the dedup stage a read of the ingest topic {named}: the principal"
            f" needs an ACL allowing {acls} ({ACLS}); its events wait there meanwhile"
        )
    return None


def refused_topics(exc: BaseException | None) -> list[str]:
    """The topics a TopicAuthorizationFailedError names (aiokafka gives one, or a set of them)."""
    if not isinstance(exc, TopicAuthorizationFailedError) or not exc.args:
        return []
    named = exc.args[0]
    return sorted(named) if isinstance(named, set | frozenset) else [str(named)]


def write_refusal(topics: list[str]) -> str:
    """What to change when Kafka refuses the stage's transaction a write to output `topics`."""
    acls = ", ".join(f"Write on Topic {t!r}" for t in topics)
    return (
        f"Kafka refuses the dedup stage a write to the output topic{'s' if len(topics) > 1 else ''}"
        f" {', '.join(repr(t) for t in topics)}: the principal needs an ACL allowing {acls}"
        f" (Write implies the Describe its metadata needs; {ACLS}); each transaction writing"
        " there fails, and its events wait in the ingest topic meanwhile"
    )
