"""How many output records a dedup transaction may hold: bounded only after one timed out."""

from __future__ import annotations

from collections.abc import Collection, Iterable

# Won back per commit that filled the bound: an eighth, so a throttle that eased is followed
# within tens of commits, and one that did not times out again rarely.
_GROWTH = 8


class TransactionSize:
    """Unbounded until a transaction times out, then half what that one held.

    A throttled cluster (a client quota), or one whose brokers fail over (a crashed leader or
    transaction coordinator), sends slower than the transaction step's timeout allows for a
    whole backlog: every attempt timed out and started over from the same offset, for good.
    A transaction no larger than one committed since the last timeout was not lost for its
    size (a vanished coordinator's EndTxn): the first such timeout leaves the bound. Pure.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        # The largest transaction committed since the last timeout: a size known to fit.
        self._fitted = 0

    def room(self, sent: int, most: int) -> int:
        """How many more records to fetch for a transaction that has sent `sent`: 1 at least."""
        return most if self.limit is None else max(1, min(most, self.limit - sent))

    def full(self, sent: int) -> bool:
        """Whether a transaction that has sent `sent` records should commit now."""
        return self.limit is not None and sent >= self.limit

    def timed_out(self, sent: int) -> bool:
        """A transaction that had sent `sent` records timed out; True if the bound shrank."""
        if sent <= 0:
            return False  # nothing of it to send: its size was not what took too long
        fitted, self._fitted = self._fitted, 0
        if sent <= fitted:
            # Bounded to 1-2 records after a 3-record one timed out with a vanished coordinator,
            # the stage took 20 s after the failover to work off the webhooks retried meanwhile.
            # Only once: a second timeout with no commit between (a throttle begun) shrinks.
            return False
        limit = max(1, sent // 2)
        if self.limit is not None and limit >= self.limit:
            return False
        self.limit = limit
        return True

    def committed(self, sent: int) -> None:
        """A transaction of `sent` records committed: one that filled the bound raises it."""
        self._fitted = max(self._fitted, sent)
        if self.limit is not None and sent >= self.limit:
            self.limit += max(1, self.limit // _GROWTH)


def timeout_warning(missing: Iterable[str], outputs: Collection[str]) -> str:
    """The line for a transaction that timed out, naming the likely cause where one is known:
    an output topic the topic check found missing (`missing`, of all the bridge's topics)."""
    gone = sorted(set(missing) & set(outputs))
    if not gone:
        return (
            "a dedup transaction timed out; bounding them in records"
            " (a throttled cluster, or brokers failing over?)"
        )
    # A send to a deleted topic waits for its metadata until the transaction times out, at every
    # retry: guessing a quota or a failover sent the SRE looking at the wrong thing.
    many = len(gone) > 1
    return (
        "a dedup transaction timed out; bounding them in records. Likely cause: its output"
        f" topic{'s' if many else ''} {', '.join(gone)} {'are' if many else 'is'} missing"
        ' (deleted while running? topic_problem{problem="missing"}): its events wait in the ingest'
        " topic until it exists again"
    )
