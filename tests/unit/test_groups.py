from __future__ import annotations

import importlib.metadata
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.protocol.group import LeaveGroupRequest

from bridge import groups
from bridge.groups import (
    REBALANCE_TIMEOUT_MS,
    Claim,
    GroupMetadata,
    GrowthWatch,
    StickyAssignor,
    group_metadata,
    keep_and_balance,
    leave_when_stopped,
    member_options,
    parse_assigned_over,
    parse_claim,
    rejoin,
)
from tests.wireformat import BREAKS_ROLLING_UPGRADES


def test_a_new_member_takes_only_what_balance_needs() -> None:
    plan = keep_and_balance(
        range(6), {"a": Claim((0, 1, 2), 1), "b": Claim((3, 4, 5), 1), "c": Claim()}
    )
    assert sorted(len(ps) for ps in plan.values()) == [2, 2, 2]
    # a and b each give one partition up; everything else stays where its state is
    assert set(plan["a"]) <= {0, 1, 2}
    assert set(plan["b"]) <= {3, 4, 5}
    assert sorted(p for ps in plan.values() for p in ps) == list(range(6))


def test_a_leaving_member_hands_its_partitions_to_the_others_only() -> None:
    plan = keep_and_balance(range(6), {"a": Claim((0, 1), 1), "b": Claim((2, 3), 1)})
    assert {0, 1} <= set(plan["a"])
    assert {2, 3} <= set(plan["b"])
    assert sorted(plan["a"] + plan["b"]) == list(range(6))


def test_a_newer_claim_wins_a_partition_two_members_claim() -> None:
    # The zombie ("a", older) still claims 0 after the group gave it to "b".
    plan = keep_and_balance([0], {"a": Claim((0,), 100), "b": Claim((0,), 200)})
    assert plan == {"a": [], "b": [0]}


def test_a_zombies_clock_ahead_does_not_win_back_what_the_group_gave_on() -> None:
    # "a" owned every partition until it was cut off (generation 4); the group gave them all to
    # "b" (generation 6). "a" rejoins with its old claim, its clock 30 s ahead (SKEW_ALLOWANCE
    # allows 60): by `since` it was the newer, took the extra slot, and two partitions moved
    # (a restore each) where balance needs one.
    zombie = Claim((0, 1, 2), since=1_000_030_000, generation=4)
    owner = Claim((0, 1, 2), since=1_000_015_000, generation=6)
    assert keep_and_balance(range(3), {"a": zombie, "b": owner}) == {"a": [2], "b": [0, 1]}


def test_claims_without_a_generation_are_ordered_by_their_clocks_as_before() -> None:
    # Mid-rollout a release that writes no generation claims too: `since` decides for all.
    plan = keep_and_balance([0], {"a": Claim((0,), 200, generation=4), "b": Claim((0,), 100)})
    assert plan == {"a": [0], "b": []}
    # A member claiming nothing says no generation either: it does not count.
    plan = keep_and_balance(
        [0, 1], {"a": Claim((0, 1), 200, 4), "b": Claim((0,), 100, 6), "c": Claim()}
    )
    assert plan["b"] == [0]


def test_the_lease_stays_with_its_holder_whoever_joins() -> None:
    for newcomer in ("0-first-by-name", "zz-last-by-name"):
        plan = keep_and_balance([0], {"m-holder": Claim((0,), 5), newcomer: Claim()})
        assert plan["m-holder"] == [0]


def test_claims_of_partitions_that_no_longer_exist_are_ignored() -> None:
    assert keep_and_balance([0, 1], {"a": Claim((7, 8), 1)}) == {"a": [0, 1]}
    assert keep_and_balance([0], {}) == {}


def test_unreadable_claims_claim_nothing() -> None:
    assert parse_claim(b"not json") == Claim()
    assert parse_claim(b"[1, 2]") == Claim()
    assert parse_claim(None) == Claim()
    assert parse_claim(b'{"owned": [1, "x", 2], "since": 9}') == Claim((1, 2), 9)
    # JSON's true and false are no partitions (nor times), though Python's bool is an int.
    assert parse_claim(b'{"owned": [true, 2, false], "since": 9}') == Claim((2,), 9)
    assert parse_claim(b'{"owned": [2], "since": true}') == Claim((2,), 0)
    for generation in (b'"5"', b"true", b"-1", b"1.5", b"null"):
        claim = b'{"owned": [1], "since": 9, "generation": ' + generation + b"}"
        assert parse_claim(claim) == Claim((1,), 9)


def test_the_assignor_round_trips_claims_through_join_metadata() -> None:
    a = StickyAssignor(lambda: Claim((1,), 10))
    b = StickyAssignor(lambda: Claim((0,), 10))
    members: dict[str, ConsumerProtocolMemberMetadata] = {
        "a": a.metadata(["t"]),
        "b": b.metadata(["t"]),
    }
    cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0, 1})
    assignment = a.assign(cluster, members)
    assert assignment["a"].assignment == [("t", [1])]
    assert assignment["b"].assignment == [("t", [0])]


def test_each_member_learns_the_partition_count_the_leaders_assignment_covered() -> None:
    # A member's own metadata may not show partitions added yet: the leader's count does.
    leader, member = StickyAssignor(lambda: Claim()), StickyAssignor(lambda: Claim())
    cluster = SimpleNamespace(partitions_for_topic=lambda topic: set(range(6)))
    plan = leader.assign(cluster, {"a": leader.metadata(["t"]), "b": member.metadata(["t"])})
    learned = []
    # The second from a leader of a release before it, which says none: unknown, the member's
    # own metadata serves.
    for given in (plan["b"], ConsumerProtocolMemberAssignment(0, plan["b"].assignment, b"")):
        member.on_assignment(given)
        learned.append(member.assigned_over)
    assert learned == [6, None]
    for damaged in (b"x", b"[]", b'{"partitions": "6"}', b'{"partitions": -1}', b"true"):
        assert parse_assigned_over(damaged) is None


def test_the_group_protocol_is_pinned_for_rolling_upgrades() -> None:
    # Old and new pods join one group during a rollout: a renamed assignor is refused by the
    # coordinator (no protocol common to all members), and claims an old leader cannot read move
    # every partition; the leader may be either version, so both sides are pinned.
    pinned = ("pinecall-sticky", 0)
    assert (StickyAssignor.name, StickyAssignor.version) == pinned, BREAKS_ROLLING_UPGRADES
    written = StickyAssignor(lambda: Claim((2, 0), 17)).metadata(["t"]).user_data
    assert written == b'{"owned":[0,2],"since":17}', BREAKS_ROLLING_UPGRADES
    assert parse_claim(b'{"owned":[0,2],"since":17,"newer":true}') == Claim((0, 2), 17)
    # A new field only (an older leader ignores it, as above), written when known.
    written = StickyAssignor(lambda: Claim((2, 0), 17, 5)).metadata(["t"]).user_data
    assert written == b'{"owned":[0,2],"since":17,"generation":5}', BREAKS_ROLLING_UPGRADES
    assert parse_claim(written) == Claim((0, 2), 17, 5)
    # The assignment's user data, which a release before it ignores (empty there).
    cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0, 1, 2})
    assignor = StickyAssignor(lambda: Claim())
    [given] = assignor.assign(cluster, {"a": assignor.metadata(["t"])}).values()
    assert given.user_data == b'{"partitions":3}', BREAKS_ROLLING_UPGRADES


def test_a_members_requests_outlast_the_rebalance_timeout() -> None:
    # The coordinator may hold JoinGroup for the rebalance timeout: 30 s would time it out.
    options = member_options({"bootstrap_servers": ["k:9092"], "request_timeout_ms": 30_000})
    assert options["bootstrap_servers"] == ["k:9092"]
    assert options["request_timeout_ms"] > options["rebalance_timeout_ms"] == REBALANCE_TIMEOUT_MS
    assert member_options({"request_timeout_ms": 60_000})["request_timeout_ms"] == 60_000


async def test_aiokafkas_privates_make_a_static_members_stop_leave_and_a_rejoin_happen() -> None:
    """leave_when_stopped and rejoin take aiokafka privates: an upgrade that drops or renames them
    would turn every clean stop (a rollout, a scale-in) into partitions stalled for a session,
    and leave partitions added after a static leader's restart owned by nobody."""
    aiokafka = f"aiokafka {importlib.metadata.version('aiokafka')}"
    consumer = AIOKafkaConsumer(group_id="g", group_instance_id="pod-one")
    sent: list[Any] = []

    async def bootstrap() -> None:
        """No broker: the stop's requests are only recorded."""

    async def send(node_id: int, request: Any, **kwargs: Any) -> None:
        sent.append(request)

    consumer._client.bootstrap = bootstrap
    consumer._client.send = send
    await consumer.start()
    try:
        coordinator = getattr(consumer, "_coordinator", None)
        assert isinstance(coordinator, GroupCoordinator), (
            f"{aiokafka}: the consumer keeps no GroupCoordinator at `_coordinator`, which"
            " leave_when_stopped (bridge/groups.py) changes"
        )
        assert getattr(coordinator, "_group_instance_id", None) == "pod-one", (
            f"{aiokafka}: GroupCoordinator keeps the group.instance.id elsewhere than"
            " `_group_instance_id`, which leave_when_stopped (bridge/groups.py) clears"
        )
        joined = SimpleNamespace(assignment=object())  # a subscription with its assignment
        assert not coordinator.need_rejoin(joined)
        try:
            rejoin(consumer)
        except AttributeError as exc:
            raise AssertionError(f"{aiokafka}: rejoin (bridge/groups.py) fails: {exc}") from exc
        assert coordinator.need_rejoin(joined), f"{aiokafka}: rejoin (bridge/groups.py) did not"
        # As a join leaves it: in a generation, with a member id and a known coordinator.
        coordinator.generation, coordinator.member_id, coordinator.coordinator_id = 7, "m-1", 0
        leave_when_stopped(consumer)
    finally:
        await consumer.stop()
    leaves = [r for r in sent if isinstance(r, LeaveGroupRequest)]
    assert len(leaves) == 1, (
        f"{aiokafka}: a static member's stop sent {sent!r}, no LeaveGroup, after"
        " leave_when_stopped (bridge/groups.py): its partitions would wait out its session"
    )


def test_a_growth_no_rebalance_followed_asks_for_one_rejoin_after_the_grace() -> None:
    watch = GrowthWatch(grace=15.0)
    watch.assigned(6)
    assert not watch.due(6, 0.0)
    assert not watch.due(8, 10.0)  # first seen: the leader, if it watches, rebalances now
    assert not watch.due(8, 24.0)
    assert watch.due(8, 25.0)
    assert not watch.due(8, 100.0)  # once per growth


def test_a_growth_the_group_rebalanced_for_asks_for_nothing() -> None:
    watch = GrowthWatch(grace=15.0)
    assert not watch.due(8, 0.0)  # no assignment yet: nothing known to compare with
    watch.assigned(6)
    assert not watch.due(8, 1.0)
    watch.assigned(8)  # the leader's rebalance took them on
    assert not watch.due(8, 30.0)
    assert not watch.due(None, 60.0)  # the topic's metadata unknown for now


GROUP = "dedup"


def consumer(**coordinator: Any) -> Any:
    return SimpleNamespace(_coordinator=SimpleNamespace(**coordinator))


def test_group_metadata_reads_the_joined_consumer() -> None:
    joined = consumer(group_id=GROUP, generation=7, member_id="member-1", _group_instance_id=None)
    assert group_metadata(joined, GROUP) == GroupMetadata(GROUP, 7, "member-1")
    static = consumer(group_id=GROUP, generation=2, member_id="m", _group_instance_id="pod-3")
    assert group_metadata(static, GROUP) == GroupMetadata(GROUP, 2, "m", "pod-3")


@pytest.mark.parametrize(
    "outside",
    [
        consumer(group_id=GROUP, generation=-1, member_id="", _group_instance_id=None),
        consumer(group_id=GROUP, generation=-1, member_id="member-1"),
        consumer(group_id=GROUP, generation=3, member_id=""),
        SimpleNamespace(_coordinator=None),
        SimpleNamespace(),
        consumer(group_id=None),  # aiokafka's NoGroupCoordinator: no generation at all
    ],
)
def test_group_metadata_is_none_outside_a_generation(outside: Any) -> None:
    assert group_metadata(outside, GROUP) is None


def test_group_metadata_warns_when_aiokafka_keeps_no_generation(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(groups, "_warned", set())
    assert group_metadata(consumer(group_id=GROUP), GROUP) is None
    assert "no generation" in caplog.text


def test_group_metadata_refuses_another_group() -> None:
    with pytest.raises(ValueError, match="other"):
        group_metadata(consumer(group_id="other", generation=1, member_id="m"), GROUP)
