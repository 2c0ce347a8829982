"""Group assignment that leaves partitions where they are: a sticky, balanced assignor.

Every rebalance under aiokafka's default (round robin) can move every partition: for the dedup
stage that is a restore per moved partition, for the feed lease a reconnect. Here each member
reports the partitions it owns, keeps them as far as balance allows, and only the rest move.
`keep_and_balance` is the pure decision; `StickyAssignor` adapts it to aiokafka's interface.
`group_metadata` reads a member's generation and ids, for the dedup stage's commits and the feed
lease's claim, from aiokafka privates (checked against aiokafka 0.14.0):
``AIOKafkaConsumer._coordinator``: ``GroupCoordinator.generation`` (-1 outside a generation),
``.member_id`` ("" when unknown), ``._group_instance_id``, ``.group_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from bridge import jsoncodec

log = logging.getLogger(__name__)
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class Claim:
    """What a member owned, since when (ms, its wall clock), and from which group generation:
    a newer claim beats an older one."""

    partitions: tuple[int, ...] = ()
    since: int = 0
    # The generation that assigned them (None: unknown, or a release before 2026-12-06). One
    # counter for the whole group, where `since` is each member's own clock: a zombie's clock
    # ahead (or the owner's stepped back) by more than its time out of the group made it newer.
    generation: int | None = None


def keep_and_balance(
    partitions: Iterable[int], claims: Mapping[str, Claim]
) -> dict[str, list[int]]:
    """Each member's partitions: balanced to within one, keeping what each owns where it can.

    Two members claim one partition when one was cut off and the group moved on (a zombie
    rejoining): the newer claim keeps it, so the partition does not move back.
    """
    members = sorted(claims)
    if not members:
        return {}
    wanted = sorted(set(partitions))
    base, extra = divmod(len(wanted), len(members))
    newness = _newness(claims)
    # Members that own more (then newer claims) get the extra slots, so fewer partitions move.
    by_load = sorted(
        members,
        key=lambda m: (-len(set(claims[m].partitions) & set(wanted)), _negated(newness[m]), m),
    )
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_load)}
    result: dict[str, list[int]] = {m: [] for m in members}
    taken: set[int] = set()
    for member in sorted(members, key=lambda m: (_negated(newness[m]), m)):
        for partition in sorted(set(claims[member].partitions)):
            if (
                partition in wanted
                and partition not in taken
                and len(result[member]) < quota[member]
            ):
                result[member].append(partition)
                taken.add(partition)
    free = [p for p in wanted if p not in taken]
    for member in by_load:
        while len(result[member]) < quota[member] and free:
            result[member].append(free.pop(0))
    return {m: sorted(ps) for m, ps in result.items()}


def _newness(claims: Mapping[str, Claim]) -> dict[str, tuple[int, int]]:
    """Each member's claim as a sortable age, larger newer: by generation, then `since`, when
    every member claiming something says its generation; by `since` alone otherwise (a release
    that says none takes part: mid-rollout, the clocks decide as they did)."""
    by_generation = all(c.generation is not None for c in claims.values() if c.partitions)
    return {
        m: (c.generation if by_generation and c.generation is not None else 0, c.since)
        for m, c in claims.items()
    }


def _negated(newness: tuple[int, int]) -> tuple[int, int]:
    return (-newness[0], -newness[1])


class StickyAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """An instance per consumer: `claim()` tells the group what this member owns, since when;
    `assigned_over` is the partition count the leader's last assignment covered."""

    name = "pinecall-sticky"
    version = 0

    def __init__(self, claim: Callable[[], Claim], group: str = "") -> None:
        self._claim = claim
        self.group_id = group  # only to name it in what is logged
        # None: unknown (no assignment yet, or a leader of a release that says none).
        self.assigned_over: int | None = None

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        claim = self._claim()
        data: dict[str, Any] = {"owned": sorted(claim.partitions), "since": claim.since}
        if claim.generation is not None:  # a new field: a release before it ignores it
            data["generation"] = claim.generation
        return ConsumerProtocolMemberMetadata(self.version, list(topics), jsoncodec.dumps(data))

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        # The bridge's members subscribe to one topic each: partitions are numbers in it. Two
        # deployments sharing a group (one BRIDGE_DEDUP__GROUP, topics apart) each get their own
        # topic's partitions, and it is said: refusing the mix stalled the whole group.
        subscribers: dict[str, list[str]] = {}
        for member, meta in members.items():
            for topic in sorted(set(meta.subscription)):
                subscribers.setdefault(topic, []).append(member)
        if len(subscribers) > 1:
            log.error(
                "group %r is shared by members subscribed to different topics (%s): two"
                " deployments on one Kafka cluster need a BRIDGE_DEDUP__GROUP each; each topic's"
                " partitions go to its own subscribers",
                self.group_id or "?",
                "; ".join(f"{t}: {len(m)} member(s)" for t, m in sorted(subscribers.items())),
                extra={"group": self.group_id, "topics": sorted(subscribers)},
            )
        plans: dict[str, list[tuple[str, list[int]]]] = {m: [] for m in members}
        over: dict[str, int] = {}
        for topic, names in subscribers.items():
            partitions = cluster.partitions_for_topic(topic) or set()
            claims = {m: parse_claim(members[m].user_data) for m in names}
            for member, owned in keep_and_balance(partitions, claims).items():
                plans[member].append((topic, owned))
                # The count the plan covers, for each member's GrowthWatch: its own metadata may
                # lag the leader's (it refreshes on its own schedule) and see as new what was
                # assigned. Assignment user data a release before it ignores.
                over[member] = len(partitions)
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version,
                plans[member],
                jsoncodec.dumps({"partitions": over[member]}) if member in over else b"",
            )
            for member in members
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Keep the partition count the assignment covered; what a member owns is read from its
        owner at the next join."""
        self.assigned_over = parse_assigned_over(assignment.user_data)


def parse_claim(user_data: bytes | None) -> Claim:
    """A member's claim from its join metadata; anything unreadable claims nothing."""
    try:
        data = jsoncodec.loads(user_data or b"{}")
    except ValueError:
        return Claim()
    if not isinstance(data, dict):
        return Claim()
    owned, since = data.get("owned"), data.get("since")
    # true is no number, though a Python int: read as one, it claimed partition 1 (or since 1).
    partitions = tuple(p for p in owned if type(p) is int) if isinstance(owned, list) else ()
    found = data.get("generation")
    # Kafka's generations are never negative.
    generation = found if type(found) is int and found >= 0 else None
    return Claim(partitions, since if type(since) is int else 0, generation)


def parse_assigned_over(user_data: bytes | None) -> int | None:
    """The partition count an assignment's leader covered; None when it says none."""
    try:
        data = jsoncodec.loads(user_data or b"{}")
    except ValueError:
        return None
    found = data.get("partitions") if isinstance(data, dict) else None
    return found if type(found) is int and found >= 0 else None


def leave_when_stopped(consumer: Any) -> None:
    """Make the consumer's stop send LeaveGroup, which aiokafka 0.14 skips for a static member.

    A stop (SIGTERM: a rolling update, a scale-in) must hand the partitions on at once, not after
    the session timeout; only a crash keeps them for a restart with the same instance id. Takes
    one aiokafka private, as in 0.12 to 0.14 (pyproject's range; tests/unit/test_groups.py pins
    it): ``GroupCoordinator._group_instance_id``, which
    ``_maybe_leave_group`` reads at the stop (the stage's last commit has been sent by then).
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None:
        coordinator._group_instance_id = None


def rejoin(consumer: Any) -> None:
    """Make the consumer rejoin its group (a rebalance), as aiokafka's leader does when a topic
    grows. Takes one aiokafka private, as in 0.12 to 0.14 (pinned as above): ``request_rejoin``."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None:
        coordinator.request_rejoin()


@dataclass
class GrowthWatch:
    """Whether the subscribed topic has more partitions than the last assignment knew of, for
    longer than the leader takes to rebalance for them. A static leader restarted within its
    session is answered as a follower (aiokafka's JoinGroup v5: no KIP-814), so no member
    watched: partitions added meanwhile were owned by nobody until some other rebalance.
    The rejoin rebalances a stable group: the restarted member is still the coordinator's
    leader, and another member's claim changed since its join (a follower joining with
    unchanged metadata is only handed the current assignment: tests/integration/test_groups.py).
    """

    grace: float  # seconds: past the leader's metadata refresh and its rebalance
    # The partition count the last assignment covered (the leader's, else this member's own).
    known: int | None = None
    since: float | None = None  # when a larger count was first seen

    def assigned(self, count: int | None) -> None:
        self.known, self.since = count, None

    def due(self, count: int | None, now: float) -> bool:
        """True once per growth the group has not rebalanced for within the grace."""
        if count is None or self.known is None or count <= self.known:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        if now - self.since < self.grace:
            return False
        self.assigned(count)  # one rejoin per growth; its assignment resets this anyway
        return True


# aiokafka's default, made explicit: how long the coordinator waits for members to rejoin.
REBALANCE_TIMEOUT_MS = 30_000


def member_options(client: Mapping[str, Any]) -> dict[str, Any]:
    """A group member's client options: its request timeout outlasts the rebalance timeout.

    The coordinator may hold a JoinGroup answer for the whole rebalance timeout; a request that
    times out first marks the coordinator dead and rejoins, as Kafka's Java consumer avoids.
    """
    asked = int(client.get("request_timeout_ms", 40_000))
    return {
        **client,
        "rebalance_timeout_ms": REBALANCE_TIMEOUT_MS,
        "request_timeout_ms": max(asked, REBALANCE_TIMEOUT_MS + 5_000),
    }


@dataclass(frozen=True)
class GroupMetadata:
    """Who commits: the group, and the member's generation and ids in it."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None


def group_metadata(consumer: AIOKafkaConsumer, group_id: str) -> GroupMetadata | None:
    """The consumer's current generation and member id (None while it is in no generation)."""
    coordinator = getattr(consumer, "_coordinator", None)
    own_group = getattr(coordinator, "group_id", None)
    if own_group is None:
        return None  # not started, or a consumer without a group
    if own_group != group_id:
        raise ValueError(f"the consumer is in group {own_group!r}, not {group_id!r}")
    generation = getattr(coordinator, "generation", None)
    member_id = getattr(coordinator, "member_id", None)
    if generation is None or member_id is None:
        if "consumer" not in _warned:
            _warned.add("consumer")
            log.warning(
                "aiokafka's group coordinator has no generation/member_id",
                extra={"aiokafka_private": "consumer"},
            )
        return None
    if not isinstance(generation, int) or generation < 0:
        return None
    if not isinstance(member_id, str) or not member_id:
        return None
    instance = getattr(coordinator, "_group_instance_id", None)
    return GroupMetadata(group_id, generation, member_id, instance or None)
