"""Whether a topic can take acks=all writes, judged from its metadata and the brokers that
answer. Pure.

A partition takes a write once its leader and at least min.insync.replicas of its in-sync
replicas are up. The ISR the metadata reports is not enough on its own: without a controller
quorum (two of three nodes down) nothing can shrink it, so a dead broker stays "in sync" and the
one left answers metadata as if all were well. Hence the brokers are also tried, from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionState:
    """A partition as the metadata reports it; `leader` -1 when it has none."""

    leader: int
    isr: tuple[int, ...]


def brokers_to_try(partitions: Iterable[PartitionState]) -> set[int]:
    """Every leader and in-sync replica of the partitions."""
    nodes: set[int] = set()
    for p in partitions:
        nodes.update(node for node in (p.leader, *p.isr) if node >= 0)
    return nodes


def takes_writes(partition: PartitionState, up: Set[int], min_insync: int) -> bool:
    """Its leader is up, and so are at least `min_insync` of its in-sync replicas.

    Not every one: a replica that just died stays in the ISR until the controller fences it
    (seconds), and that brief stall of acks=all is not an outage.
    """
    if partition.leader < 0 or partition.leader not in up:
        return False
    return sum(1 for node in partition.isr if node in up) >= min_insync


@dataclass(frozen=True, slots=True)
class Writability:
    """How many of a topic's partitions can take writes now."""

    writable: int
    partitions: int

    @property
    def ready(self) -> bool:
        """Some partition takes writes, or the metadata has none to judge by (yet).

        One partition that cannot (no leader, say) while others can is not an outage: every pod
        sees the same cluster, so unready over it would take them all out of the Service over
        a fraction of the calls.
        """
        return self.partitions == 0 or self.writable > 0


def writability(partitions: Iterable[PartitionState], up: Set[int], min_insync: int) -> Writability:
    """The topic's partitions judged by takes_writes."""
    states = list(partitions)
    writable = sum(1 for p in states if takes_writes(p, up, min_insync))
    return Writability(writable, len(states))
