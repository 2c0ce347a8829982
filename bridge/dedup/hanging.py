"""Hanging transactions on the output topics: a last stable offset that stays put. Pure.

A read_committed reader stops at a partition's last stable offset (LSO), the first offset of
its oldest open transaction. The dedup stage's transactions end within the commit interval, and
the broker aborts one whose producer died after the transaction timeout; an LSO that stays put
with records beyond it (the high watermark) is a transaction nobody will end, such as one whose
abort markers were never written (README, "Guarantees"). Readers of that partition wait for
good until it is aborted by hand.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition


@dataclass(frozen=True, slots=True)
class Held:
    """A partition whose stable offset has not moved for `seconds` with records beyond it."""

    partition: TopicPartition
    stable: int
    high: int
    seconds: float


class HangWatch:
    """Follows each partition's stable offset between reads; says how long it has been held."""

    def __init__(self) -> None:
        self._since: dict[TopicPartition, tuple[int, float]] = {}

    def observe(
        self,
        now: float,
        stable: Mapping[TopicPartition, int],
        high: Mapping[TopicPartition, int],
        unread: Collection[str] = (),
    ) -> list[Held]:
        """The partitions held since an earlier read; `stable` and `high` read at `now`.

        The partitions of the `unread` topics keep their clocks: a stable offset only grows, so
        one found unchanged after a failed read was held all along (a read that fails now and
        then, as a failing-over leader's may, must not keep the hang from ever being reported).
        """
        held: list[Held] = []
        for tp, lso in stable.items():
            hw = high.get(tp)
            if hw is None or lso >= hw:
                self._since.pop(tp, None)
                continue
            first = self._since.get(tp)
            if first is None or first[0] != lso:
                self._since[tp] = (lso, now)
                continue
            held.append(Held(tp, lso, hw, now - first[1]))
        for gone in self._since.keys() - stable.keys():
            if gone.topic not in unread:
                del self._since[gone]
        return held


def longest_by_topic(held: list[Held], topics: list[str]) -> dict[str, float]:
    """Per topic, the longest any of its partitions has been held (0: none is)."""
    longest = dict.fromkeys(topics, 0.0)
    for h in held:
        longest[h.partition.topic] = max(longest.get(h.partition.topic, 0.0), h.seconds)
    return longest
