import functools
import random
from collections import deque
from collections.abc import Mapping

import pytest

from bridge.partitioning import key_hash, partition_for
from bridge.sources.calllog import roster as roster_module
from bridge.sources.calllog.calllist import MAX_PAGES, PAGE_LIMIT
from bridge.sources.calllog.roster import Roster, Start, partition_of


def own(
    roster: Roster,
    partition: int,
    live: dict[str, int],
    ended: Mapping[str, float],
    hashes: Mapping[str, int] | None = None,
) -> list[Start]:
    """`roster.take_over`, all its steps at once: the calls it starts."""
    takeover = roster.take_over(partition, live, ended, hashes)
    starts: list[Start] = []
    while not takeover.done:
        starts.extend(takeover.step())
    return starts


def has_ended(roster: Roster, call: str) -> bool:
    """`call` is taken as ended: remembered, or an ended call of a takeover under way."""
    return call in roster._ended or any(takeover.ends(call) for takeover in roster._taking)


def calls_in(partition: int, n: int, partitions: int = 6) -> list[str]:
    found = [f"CA_{i}" for i in range(10_000) if partition_of(f"CA_{i}", partitions) == partition]
    return found[:n]


def test_partition_of_is_the_producers_choice() -> None:
    # The producer's partitioner for keyed records is deterministic: murmur2 of the key.
    for call in ("CA_1", "CA_8f4a2c", "x" * 300, "ü"):
        assert partition_of(call, 12) == partition_for(call.encode(), list(range(12)), [0])


def test_partition_of_matches_kafkas_murmur2_vectors() -> None:
    # Kafka's UtilsTest: murmur2("21") = -973932308, murmur2("foobar") = -790332482; the
    # partitioner takes the positive part (& 0x7fffffff) modulo the partition count.
    assert partition_of("21", 997) == (-973932308 & 0x7FFFFFFF) % 997
    assert partition_of("foobar", 1000) == (-790332482 & 0x7FFFFFFF) % 1000


def test_only_owned_calls_are_followed() -> None:
    roster = Roster(6, capacity=10)
    mine, other = calls_in(1, 1)[0], calls_in(2, 1)[0]
    assert own(roster, 1, {}, {}) == []
    assert roster.offer(mine) == [Start(mine, 0)]
    assert roster.offer(other) == []
    assert roster.offer(mine) == []  # already followed


def test_excess_calls_wait_in_arrival_order() -> None:
    roster = Roster(6, capacity=2)
    a, b, c, d = calls_in(0, 4)
    own(roster, 0, {}, {})
    assert roster.offer(a) + roster.offer(b) == [Start(a, 0), Start(b, 0)]
    assert roster.offer(c, 4) == []
    assert roster.offer(d) == []
    assert roster.offer(c, 7) == []  # a later offer can only move the resume point on
    assert list(roster.waiting) == [c, d]
    assert roster.finished(a, ended=True) == [Start(c, 7)]
    assert roster.finished(b, ended=False) == [Start(d, 0)]
    assert roster.offer(a) == []  # ended: a late notice does not restart it
    assert not has_ended(roster, b)


def test_takeover_follows_live_calls_from_their_progress() -> None:
    roster = Roster(6, capacity=10)
    live, done = calls_in(3, 2)
    assert own(roster, 3, {live: 12}, {done: 0.0}) == [Start(live, 12)]
    assert has_ended(roster, done)
    assert roster.offer(done) == []


def test_losing_a_partition_stops_its_calls_and_empties_its_queue() -> None:
    roster = Roster(6, capacity=2)
    a1, a2, a3 = calls_in(0, 3)
    b1 = calls_in(1, 1)[0]
    own(roster, 0, {}, {})
    own(roster, 1, {}, {})
    roster.offer(a1)
    roster.offer(b1)
    roster.offer(a2)
    roster.offer(a3)
    assert sorted(roster.keep_only({0})) == [b1]
    assert roster.refill() == [Start(a2, 0)]
    assert sorted(roster.lose(0)) == sorted([a1, a2])
    assert not roster.following
    assert not roster.waiting
    assert roster.finished(a1, ended=False) == []  # its follower ending later changes nothing


def test_keep_only_the_same_partitions_stops_nothing() -> None:
    roster = Roster(6, capacity=2)
    a = calls_in(0, 1)[0]
    own(roster, 0, {a: 1}, {})
    assert roster.keep_only({0, 5}) == []
    assert roster.following == {a: 0}


def test_ended_calls_are_remembered_boundedly() -> None:
    roster = Roster(1, capacity=1, remember_ended=2)
    for call in ("a", "b", "c"):
        roster.finished(call, ended=True)
    assert not has_ended(roster, "a")
    assert has_ended(roster, "c")


def test_every_ended_call_one_sweep_can_list_is_remembered() -> None:
    # One sweep lists up to MAX_PAGES pages of PAGE_LIMIT calls, and `wanted` offers each one that
    # ended within the dedup window again: one forgotten was read from its start at every sweep.
    roster = Roster(1, capacity=1)
    own(roster, 0, {}, {})
    listed = [f"CA_{n}" for n in range(MAX_PAGES * PAGE_LIMIT)]
    for call in listed:
        assert roster.offer(call) == [Start(call, 0)]
        roster.finished(call, ended=True)
    for call in listed:
        assert roster.offer(call, until=float("inf")) == [], call
    assert not roster.following
    assert not roster.waiting


@pytest.mark.parametrize("partitions", [1, 3, 12])
def test_every_call_has_one_owner(partitions: int) -> None:
    rosters = [Roster(partitions, capacity=1000) for _ in range(2)]
    for p in range(partitions):
        own(rosters[p % 2], p, {}, {})
    for i in range(200):
        call = f"CA_{i}"
        assert len([r for r in rosters if r.offer(call)]) == 1


def test_past_ten_waiting_per_slot_a_call_is_dropped_and_counted() -> None:
    dropped: list[str] = []
    roster = Roster(6, capacity=2, on_drop=dropped.append)
    calls = calls_in(0, 23)
    own(roster, 0, {}, {})
    for call in calls:
        roster.offer(call)
    assert list(roster.following) == calls[:2]
    assert list(roster.waiting) == calls[2:22]  # 10 per slot, in arrival order
    assert dropped == calls[22:]
    assert roster.missed
    assert roster.offer(calls[22]) == []  # announced again: dropped again, never queued
    assert dropped == [calls[22]] * 2
    assert roster.finished(calls[0], ended=True) == [Start(calls[2], 0)]
    assert roster.offer(calls[22]) == []  # a slot in the queue is free again
    assert list(roster.waiting)[-1] == calls[22]


def test_starts_handed_back_wait_first_in_the_queue_bound_as_offered() -> None:
    # The source did not launch them (it stops, or a launch raised): their slots are free again,
    # and an ended call still expires once its time passes, wherever it was started from.
    now = [1_000.0]
    expired: list[str] = []
    roster = Roster(
        6, capacity=3, on_expire=expired.append, clock=lambda: now[0], ticks=lambda: now[0]
    )
    busy, a, b, c, waited = calls_in(0, 5)
    own(roster, 0, {}, {})
    offered = roster.offer(busy) + roster.offer(a, 3) + roster.offer(b, until=1_050.0)
    assert roster.offer(c, until=1_050.0) == []
    filled = roster.finished(busy, ended=True)
    assert filled == [Start(c, 0)]
    assert roster.offer(waited) == []
    roster.handed_back([*offered, *filled])  # busy: no longer followed, not queued
    assert not roster.following
    assert list(roster.waiting) == [a, b, c, waited]
    now[0] = 1_060.0
    assert roster.refill() == [Start(a, 3), Start(waited, 0)]
    assert expired == [b, c]


def test_starts_handed_back_over_and_over_never_grow_the_queue_past_its_cap() -> None:
    # A launch that raises for every call (a bug) hands each start back, its slot free again:
    # each new call was started past the queue, handed back ahead of it, and kept, without end.
    dropped: list[str] = []
    roster = Roster(6, capacity=1, on_drop=dropped.append)
    own(roster, 0, {}, {})
    calls = calls_in(0, 15)
    for call in calls:
        roster.handed_back(roster.offer(call))
    assert roster.max_waiting == 10
    assert list(roster.waiting) == calls[:10]  # in arrival order, the first retried first
    assert dropped == calls[10:]
    assert roster.missed  # the call list is read again once the queue drains


def test_a_call_offered_until_a_time_is_not_started_past_it() -> None:
    # The call list offers an ended call only while re-reading it cannot double it; the queue
    # can hold it for longer than the list's skew allowance.
    now = [1_000.0]
    expired: list[str] = []
    roster = Roster(
        6, capacity=1, on_expire=expired.append, clock=lambda: now[0], ticks=lambda: now[0]
    )
    busy, a, b, c, d = calls_in(0, 5)
    own(roster, 0, {}, {})
    assert roster.offer(busy) == [Start(busy, 0)]
    assert roster.offer(a, until=1_100.0) == []
    assert roster.offer(b, until=1_050.0) == []
    assert roster.offer(b, 4) == []  # a notice or takeover of it: no bound any more
    assert roster.offer(c, until=1_050.0) == []
    assert roster.offer(d, until=1_000.0) == []
    now[0] = 1_060.0
    assert roster.finished(busy, ended=True) == [Start(a, 0)]
    assert roster.finished(a, ended=True) == [Start(b, 4)]
    assert roster.finished(b, ended=True) == []  # c and d: past their time
    assert expired == [c, d]
    assert not roster.waiting
    assert roster.offer(c, until=1_050.0) == []  # offered again, late: not started either
    assert expired == [c, d, c]
    assert roster.offer(c, until=1_100.0) == [Start(c, 0)]


def test_a_takeover_never_starts_a_call_its_records_say_ended() -> None:
    # The partition comes back while a is followed and b, then c, wait; its records say a and b
    # ended. a's slot, freed once its follower stops, must not start b, whatever order the ended
    # set iterates in: b would be read again from seq 0. Many rosters, as a set's order varies
    # with the string hash seed: each order is met.
    calls = calls_in(0, 60)
    for a, b, c in zip(calls[0::3], calls[1::3], calls[2::3], strict=True):
        roster = Roster(6, capacity=1)
        own(roster, 0, {}, {})
        assert roster.offer(a) == [Start(a, 0)]
        assert roster.offer(b) + roster.offer(c) == []
        assert own(roster, 0, {}, dict.fromkeys((a, b), 0.0)) == []
        assert roster.finished(a, ended=True) == [Start(c, 0)]
        assert roster.following == {c: 0}
        assert not roster.waiting
        assert has_ended(roster, a)
        assert has_ended(roster, b)


def test_a_takeover_starts_a_call_that_waited_from_where_its_records_got_to() -> None:
    # b waited, announced (from seq 0), while another member read it to seq 7; the partition
    # comes back with a ended: b takes a's slot (once a's follower stops) from seq 7, not from
    # the announcement's 0.
    roster = Roster(6, capacity=1)
    a, b = calls_in(0, 2)
    own(roster, 0, {}, {})
    assert roster.offer(a) == [Start(a, 0)]
    assert roster.offer(b) == []
    assert own(roster, 0, {b: 7}, {a: 0.0}) == []
    assert roster.finished(a, ended=True) == [Start(b, 7)]


def test_a_takeover_starts_a_listed_call_its_records_show_live_past_the_lists_bound() -> None:
    # b waited as an ended call the list found, bounded by the dedup window; the partition's
    # records show it live at seq 7, so reading on from there needs no window: it is not expired.
    now = [1_000.0]
    expired: list[str] = []
    roster = Roster(6, capacity=1, on_expire=expired.append, clock=lambda: now[0])
    a, b = calls_in(0, 2)
    own(roster, 0, {}, {})
    assert roster.offer(a) == [Start(a, 0)]
    assert roster.offer(b, 0, until=1_010.0) == []
    now[0] = 1_020.0
    assert own(roster, 0, {b: 7}, {a: 0.0}) == []
    assert roster.finished(a, ended=True) == [Start(b, 7)]
    assert expired == []


def test_a_waiting_call_announced_live_is_bounded_once_its_end_is_known() -> None:
    # a was announced live and waits; the notice of its end (or the list's ended row) then
    # comes: it must not start past the window that notice gives, whichever came first (b).
    now = [1_000.0]
    expired: list[str] = []
    roster = Roster(
        6, capacity=1, on_expire=expired.append, clock=lambda: now[0], ticks=lambda: now[0]
    )
    busy, a, b, c = calls_in(0, 4)
    own(roster, 0, {}, {})
    assert roster.offer(busy) == [Start(busy, 0)]
    assert roster.offer(a) == []
    assert roster.offer(a, until=1_050.0) == []
    assert roster.offer(b, until=1_050.0) == []
    assert roster.offer(b) == []  # the list's row read while it was live: still ended
    assert roster.offer(c) == []
    now[0] = 1_060.0
    assert roster.finished(busy, ended=True) == [Start(c, 0)]
    assert expired == [a, b]


def test_the_ended_call_forgotten_first_is_the_one_that_ended_first() -> None:
    # c was read long after it ended (it waited, or was taken over): it is forgotten before a
    # and b, which ended since and whose notices may still come within their windows.
    roster = Roster(1, capacity=1, remember_ended=2, clock=lambda: 1_000.0)
    roster.finished("a", ended=True, at=900.0)
    roster.finished("b", ended=True)  # no end known: now
    roster.finished("c", ended=True, at=100.0)
    assert [call for call in "abc" if has_ended(roster, call)] == ["a", "b"]
    roster.finished("d", ended=True, at=5_000.0)  # a clock ahead of ours: taken as now
    assert [call for call in "abcd" if has_ended(roster, call)] == ["b", "d"]


def test_a_takeovers_ended_calls_are_remembered_by_their_own_ends() -> None:
    # Dated "now", the calls a takeover found ended outlasted b, which ended after them: b was
    # forgotten first, and the next sweep read it again from its start.
    roster = Roster(1, capacity=1, remember_ended=2, clock=lambda: 1_000.0)
    roster.finished("b", ended=True, at=900.0)
    own(roster, 0, {}, {"a": 100.0})
    roster.finished("c", ended=True, at=950.0)
    assert [call for call in "abc" if has_ended(roster, call)] == ["b", "c"]


def unhashable(key: bytes | None, partitions: list[int], available: list[int]) -> int:
    raise AssertionError("a call's murmur2 computed again")


def test_a_takeover_hashes_no_call_the_restore_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each ended call's murmur2 (pure Python) was computed at the takeover, in one go: the loop
    # held 100-450 ms at 20,000-40,000 ended calls. The restore computes each as it reads them.
    live, *ended = calls_in(2, 30)
    moved = calls_in(3, 1)[0]  # its records in partition 2, its key now elsewhere: a grown topic
    hashes = {call: key_hash(call.encode()) for call in [live, moved, *ended]}
    roster = Roster(6, capacity=10)
    monkeypatch.setattr(roster_module, "partition_for", unhashable)
    ends = dict.fromkeys([moved, *ended], 100.0)
    assert own(roster, 2, {live: 4}, ends, hashes) == [Start(live, 4)]
    assert roster.following == {live: 2}
    assert all(has_ended(roster, call) for call in ended)
    assert not has_ended(roster, moved)


@pytest.mark.parametrize("seed", range(20))
def test_a_takeover_remembers_the_calls_that_ended_last_past_the_bound(seed: int) -> None:
    # A takeover's ended calls are remembered at once (one heap ordering, not a push and a trim
    # each): past the bound, those kept are still the latest ends, a call known to have ended
    # later than its records say keeping the later end, and an end ahead of our clock taken as now.
    rng = random.Random(seed)
    calls = calls_in(0, 40)
    clock = [1_000.0]
    roster = Roster(6, capacity=1, remember_ended=15, clock=lambda: clock[0])
    own(roster, 0, {}, {})
    for call in rng.sample(calls, 12):
        roster.finished(call, ended=True, at=rng.choice((900.0, 950.0, 990.0)))
    known = dict(roster._ended)
    clock[0] = 2_000.0
    ended = {call: rng.choice((800.0, 950.0, 1_500.0, 2_500.0)) for call in rng.sample(calls, 20)}
    for call, at in ended.items():
        known[call] = max(min(at, 2_000.0), known.get(call, 0.0))
    latest = sorted(known.items(), key=lambda pair: (pair[1], pair[0]))[-15:]
    own(roster, 0, {}, ended)
    assert roster._ended == dict(latest)


def test_takeovers_ending_the_same_calls_again_keep_the_end_heap_bounded() -> None:
    # Each takeover of a partition ends every ended call its records show, again: a pair
    # pushed per call and takeover, over weeks of rebalances, unless stale pairs are dropped.
    roster = Roster(1, capacity=1, remember_ended=100)
    ended = {f"CA_{n}": 0.0 for n in range(100)}
    for _ in range(50):
        own(roster, 0, {}, ended)
        roster.lose(0)
    assert all(has_ended(roster, call) for call in ended)
    assert len(roster._ends) <= 2 * 100


def stepping(monkeypatch: pytest.MonkeyPatch, step: int, n: int) -> tuple[Roster, str, list[str]]:
    """A roster of 10 slots taking over in steps of `step` calls, and `n` calls of partition 0:
    the first for a takeover to show live, the rest ended."""
    monkeypatch.setattr(roster_module, "TAKEOVER_STEP", step)
    live, *ended = calls_in(0, n)
    return Roster(6, capacity=10), live, ended


def test_a_takeover_runs_in_steps_of_a_bounded_number_of_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 40,000 ended calls taken over at once held the event loop 40-95 ms. Counted, not timed:
    # each step remembers at most TAKEOVER_STEP of them, and the calls are taken as ended from
    # the start.
    roster, live, ended = stepping(monkeypatch, 4, 11)
    takeover = roster.take_over(0, {live: 3}, dict.fromkeys(ended, 100.0))
    assert all(has_ended(roster, call) for call in ended)
    remembered = [len(roster._ended)]
    starts: list[Start] = []
    while not takeover.done:
        starts.extend(takeover.step())
        remembered.append(len(roster._ended))
    assert remembered == [0, 0, 4, 8, 10, 10, 10]  # the queue's resume points; 4, 4, 2; live
    assert starts == [Start(live, 3)]
    assert not roster._taking


def scenario(seed: int) -> tuple[Roster, int, dict[str, int], dict[str, float]]:
    """A roster with calls followed and waiting, some of which a takeover shows live or ended."""
    rng = random.Random(seed)
    calls = calls_in(0, 30)
    clock = [1_000.0]
    roster = Roster(6, capacity=3, remember_ended=8, clock=lambda: clock[0], ticks=lambda: clock[0])
    own(roster, 0, {}, {})
    for call in rng.sample(calls, 8):
        roster.finished(call, ended=True, at=rng.uniform(900.0, 1_000.0))
    for call in calls:
        if rng.random() < 0.5 and not has_ended(roster, call):
            roster.offer(call, rng.randrange(3), rng.choice((None, 2_000.0)))
    clock[0] = 1_100.0
    rest = [call for call in calls if rng.random() < 0.7]
    live = {call: rng.randrange(1, 9) for call in rest[: len(rest) // 3]}
    ended = {call: rng.uniform(800.0, 1_200.0) for call in rest[len(rest) // 3 :]}
    ended.update(dict.fromkeys(calls_in(1, 2), 1_050.0))  # another partition's: left alone
    return roster, 0, live, ended


@pytest.mark.parametrize("seed", range(30))
def test_a_takeover_in_small_steps_decides_as_one_in_a_single_step(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = []
    for step in (10**9, 1, 2, 3):
        monkeypatch.setattr(roster_module, "TAKEOVER_STEP", step)
        roster, partition, live, ended = scenario(seed)
        starts = own(roster, partition, live, ended)
        state = (roster.following, list(roster.waiting.items()), roster._until, roster._ended)
        outcomes.append((starts, state))
    assert outcomes[1:] == outcomes[:1] * 3


def test_an_ended_call_offered_while_its_takeover_is_under_way_is_not_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A notice of its end, or the call list, between two steps: its log is not read from 0.
    monkeypatch.setattr(roster_module, "TAKEOVER_STEP", 1)
    first, last = calls_in(0, 2)
    roster = Roster(6, capacity=10)
    takeover = roster.take_over(0, {}, {first: 100.0, last: 100.0})
    takeover.step()
    assert roster._ended == {first: 100.0}
    assert roster.offer(last) == []
    while not takeover.done:
        takeover.step()
    assert roster.offer(last) == []
    assert not roster.following


def test_a_slot_freed_while_a_takeover_is_under_way_starts_no_call_it_shows_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A follower ends by itself between two steps: the call that waited longest is one the
    # takeover's later step shows ended; the next one starts instead.
    monkeypatch.setattr(roster_module, "TAKEOVER_STEP", 1)
    busy, first, waited, then = calls_in(0, 4)
    roster = Roster(6, capacity=1)
    own(roster, 0, {}, {})
    assert roster.offer(busy) == [Start(busy, 0)]
    assert roster.offer(waited) == []
    assert roster.offer(then) == []
    takeover = roster.take_over(0, {}, {first: 100.0, waited: 100.0})
    takeover.step()
    assert roster.finished(busy, ended=False) == [Start(then, 0)]
    while not takeover.done:
        takeover.step()
    assert roster.following == {then: 0}
    assert not roster.waiting


def test_a_live_call_offered_while_its_takeover_is_under_way_resumes_from_its_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A notice or the call list before the takeover's step offers it: not read from its start.
    roster, live, ended = stepping(monkeypatch, 1, 3)
    takeover = roster.take_over(0, {live: 7}, dict.fromkeys(ended, 100.0))
    takeover.step()
    assert roster.offer(live) == [Start(live, 7)]
    starts = []
    while not takeover.done:
        starts.extend(takeover.step())
    assert starts == []
    assert roster.following == {live: 0}


def test_a_slot_freed_before_a_takeovers_step_reaches_a_queued_call_resumes_it_from_its_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The partition comes back (a full restore) while a and b wait: a announced (from seq 0), b
    # listed as ended and bounded by the window, both live to seq 7 and 9 in its records. A
    # follower ends before the takeover's first steps reach them: a starts from 7, not its whole
    # log again, and b is not expired (its records lift the bound), as after the whole takeover.
    monkeypatch.setattr(roster_module, "TAKEOVER_STEP", 1)
    now = [1_000.0]
    expired: list[str] = []
    roster = Roster(
        6, capacity=1, on_expire=expired.append, clock=lambda: now[0], ticks=lambda: now[0]
    )
    busy, a, b, *others = calls_in(0, 8)
    own(roster, 0, {}, {})
    assert roster.offer(busy) == [Start(busy, 0)]
    assert roster.offer(a) + roster.offer(b, 0, until=1_010.0) == []
    now[0] = 1_020.0
    takeover = roster.take_over(0, {**dict.fromkeys(others, 1), a: 7, b: 9}, {})
    takeover.step()
    assert roster.finished(busy, ended=False) == [Start(a, 7)]
    assert roster.finished(a, ended=False) == [Start(b, 9)]
    assert expired == []


def test_a_call_announced_ended_long_ago_while_its_takeover_is_under_way_is_not_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its records show it live (a resume point needs no window): counted as dropped and said
    # "not read again", then started by the takeover's next step, it was neither.
    monkeypatch.setattr(roster_module, "TAKEOVER_STEP", 1)
    expired: list[str] = []
    roster = Roster(6, capacity=10, on_expire=expired.append, clock=lambda: 1_000.0)
    first, live = calls_in(0, 2)
    takeover = roster.take_over(0, {first: 1, live: 7}, {})
    takeover.step()
    assert roster.offer(live, 0, until=900.0) == [Start(live, 7)]
    assert expired == []


@functools.cache
def some_calls() -> tuple[list[str], list[str]]:
    """30 calls of partition 0 of 6 and 5 of partition 1, found once (murmur2 is pure Python)."""
    return calls_in(0, 30), calls_in(1, 5)


def interleaved(seed: int) -> list[tuple[str, object]]:
    """A takeover stepped with a follower ending, an offer, a refill, its partition lost and
    taken over again between its steps: what starts or expires unlike after the whole, and
    more followers running at once than the roster's slots."""
    rng = random.Random(seed)
    calls, others = some_calls()
    now = [1_000.0]
    expired: list[str] = []
    roster = Roster(
        6,
        capacity=rng.randint(1, 5),
        on_expire=expired.append,
        clock=lambda: now[0],
        ticks=lambda: now[0],
    )
    own(roster, 1, {}, {})
    if rng.random() < 0.7:  # handed back and restored whole: its calls followed and queued
        own(roster, 0, {}, {})
    for call in calls + others:
        if rng.random() < 0.5:
            until = rng.choice((None, 1_010.0, 2_000.0))
            roster.offer(call, rng.randrange(3) if until is None else 0, until)
    now[0] = 1_020.0
    rest = [call for call in calls if rng.random() < 0.8]
    split = rng.randrange(len(rest) + 1)
    records = ({c: rng.randrange(1, 9) for c in rest[:split]}, dict.fromkeys(rest[split:], 900.0))
    queue = deque([roster.take_over(0, *records)])
    takeovers = 1
    wrong: list[tuple[str, object]] = []
    # The calls whose followers run: started, and not yet stopped by themselves or retired.
    running = set(roster.following)

    def judge(starts: list[Start]) -> None:
        live, ended = records  # the latest takeover's: the others' are older
        running.update(start.call for start in starts)
        if len(running) > roster.capacity:
            wrong.append(("followed past the slots", sorted(running)))
        for start in starts:
            if partition_of(start.call, 6) == 0 and 0 not in roster.owned:
                wrong.append(("started unowned", start))
            elif queue and start.call in ended:
                wrong.append(("started ended", start))
            elif queue and start.after < live.get(start.call, 0):
                wrong.append(("started behind its records", start))

    while queue:
        judge(queue[0].step())
        if queue[0].done:
            queue.popleft()
        for _ in range(rng.randrange(4) if queue else 0):
            what = rng.random()
            if what < 0.35 and running:
                call = rng.choice(sorted(running))
                running.discard(call)
                judge(roster.finished(call, ended=rng.random() < 0.5, at=950.0))
            elif what < 0.6:
                until = rng.choice((None, 1_010.0, 2_000.0))
                judge(roster.offer(rng.choice(calls + others), 0, until))
            elif what < 0.7:
                judge(roster.refill())
            elif what < 0.8 and 0 in roster.owned:
                running.difference_update(
                    roster.lose(0) if rng.random() < 0.5 else roster.keep_only({1})
                )
                judge(roster.refill())
            elif what < 0.9 and 0 not in roster.owned and takeovers < 3:
                takeovers += 1
                live = {
                    c: s + rng.randrange(3) for c, s in records[0].items() if rng.random() < 0.8
                }
                gone = [c for c in records[0] if c not in live]
                ended = {**records[1], **dict.fromkeys(gone, 1_000.0)}
                records = (live, ended)
                queue.append(roster.take_over(0, live, ended))
    wrong += [("expired", call) for call in expired if call in records[0]]
    return wrong


@pytest.mark.parametrize("seed", range(200))
def test_whatever_comes_between_a_takeovers_steps_it_starts_calls_as_the_whole_would(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roster_module, "TAKEOVER_STEP", random.Random(seed).choice((1, 2, 3)))
    assert interleaved(seed) == []


class SteppingClocks:
    """A wall clock an operator (NTP, a resumed VM) can step, and a monotonic one it cannot."""

    def __init__(self, at: float) -> None:
        self.wall, self.ticks = at, 50.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.ticks += seconds

    def step(self, seconds: float) -> None:
        self.wall += seconds


@pytest.mark.parametrize(
    ("step", "waited", "starts"), [(3600.0, 10.0, True), (-3600.0, 60.0, False)]
)
def test_a_wall_clock_step_neither_expires_nor_extends_an_ended_call_waiting(
    step: float, waited: float, starts: bool
) -> None:
    # The wait in the queue is timed on the monotonic clock: a step forward expired every ended
    # call waiting (its entries only the call log carries, lost), and a step back started them
    # past the dedup window (everything published of them, published again).
    clocks = SteppingClocks(1_000.0)
    expired: list[str] = []
    roster = Roster(
        6,
        capacity=1,
        on_expire=expired.append,
        clock=lambda: clocks.wall,
        ticks=lambda: clocks.ticks,
    )
    busy, ended = calls_in(0, 2)
    own(roster, 0, {}, {})
    assert roster.offer(busy) == [Start(busy, 0)]
    assert roster.offer(ended, until=1_050.0) == []  # 50 s of the window left
    clocks.step(step)
    clocks.advance(waited)
    assert roster.finished(busy, ended=True) == ([Start(ended, 0)] if starts else [])
    assert expired == ([] if starts else [ended])


class QueueModel:
    """What the roster promises outside a takeover's steps, kept simply: at most `capacity`
    followed, the rest first in first out (a start handed back first again), an ended call not
    started past its bound, a full queue dropping the call offered (once no slot is free), a
    partition's calls gone with it, a takeover's ended calls out of the queue (a followed one
    keeping its slot until its follower stops) and its live ones offered from their records."""

    def __init__(self, capacity: int, max_waiting: int) -> None:
        self.capacity, self.max_waiting = capacity, max_waiting
        self.owned: set[int] = set()
        self.following: set[str] = set()
        self.queue: list[tuple[str, int, float | None]] = []  # call, after, until
        self.ended: set[str] = set()
        self.expired: list[str] = []
        self.dropped: list[str] = []

    def offer(self, call: str, after: int, until: float | None, now: float) -> list[Start]:
        if call in self.following or call in self.ended or partition_of(call, 6) not in self.owned:
            return []
        for n, (queued, was, bound) in enumerate(self.queue):
            if queued == call:
                after = max(was, after)
                if after > 0:
                    bound = None
                elif until is not None:
                    bound = until if bound is None else max(bound, until)
                self.queue[n] = (call, after, bound)
                return []
        if until is not None and now > until:
            self.expired.append(call)
            return []
        starts = self.fill(now)
        if len(self.following) < self.capacity and not self.queue:
            self.following.add(call)
            return [*starts, Start(call, after, until)]
        if len(self.queue) >= self.max_waiting:
            self.dropped.append(call)
        else:
            self.queue.append((call, after, until))
        return starts

    def take_over(
        self, partition: int, live: dict[str, int], ended: dict[str, float], now: float
    ) -> list[Start]:
        self.owned.add(partition)
        for call in live:  # the queued calls' resume points first
            if any(queued == call for queued, _, _ in self.queue):
                self.offer(call, live[call], None, now)
        self.queue = [q for q in self.queue if q[0] not in ended]
        self.ended |= set(ended)
        return [start for call in live for start in self.offer(call, live[call], None, now)]

    def fill(self, now: float) -> list[Start]:
        starts = []
        while self.queue and len(self.following) < self.capacity:
            call, after, until = self.queue.pop(0)
            if until is not None and now > until:
                self.expired.append(call)
                continue
            self.following.add(call)
            starts.append(Start(call, after, until))
        return starts

    def finished(self, call: str, ended: bool, now: float) -> list[Start]:
        if ended:
            self.ended.add(call)
        if call not in self.following:
            return []
        self.following.discard(call)
        return self.fill(now)

    def handed_back(self, starts: list[Start]) -> None:
        back = [(s.call, s.after, s.until) for s in starts if s.call in self.following]
        self.following -= {call for call, _, _ in back}
        self.queue[:0] = back
        while len(self.queue) > self.max_waiting:
            self.dropped.append(self.queue.pop()[0])

    def lose(self, partition: int) -> None:
        self.owned.discard(partition)
        self.following = {c for c in self.following if partition_of(c, 6) != partition}
        self.queue = [q for q in self.queue if partition_of(q[0], 6) != partition]


def queue_run(seed: int) -> None:
    """Random offers, finishes, hand-backs (a launch raising partway), expiries and partition
    changes, the roster's every answer and state compared with the model's."""
    rng = random.Random(seed)
    calls = some_calls()[0][:12] + some_calls()[1]
    now = [1_000.0]
    expired: list[str] = []
    dropped: list[str] = []
    capacity = rng.randint(1, 4)
    roster = Roster(
        6,
        capacity,
        on_drop=dropped.append,
        on_expire=expired.append,
        clock=lambda: now[0],
        ticks=lambda: now[0],
    )
    roster.max_waiting = rng.randint(1, 6)
    model = QueueModel(capacity, roster.max_waiting)
    for partition in (0, 1):
        own(roster, partition, {}, {})
        model.owned.add(partition)
    for _ in range(120):
        what = rng.random()
        if what < 0.45:
            call, after = rng.choice(calls), rng.randrange(3)
            until = rng.choice((None, None, now[0] - 1, now[0] + 5, now[0] + 30))
            got, want = roster.offer(call, after, until), model.offer(call, after, until, now[0])
        elif what < 0.7 and model.following:
            call, ended = rng.choice(sorted(model.following)), rng.random() < 0.3
            got, want = roster.finished(call, ended=ended), model.finished(call, ended, now[0])
        elif what < 0.8:
            partition = rng.choice((0, 1))
            if partition in model.owned and rng.random() < 0.6:
                roster.lose(partition) if rng.random() < 0.5 else roster.keep_only({1 - partition})
                model.lose(partition)
                got, want = [], []
            else:
                # Taken over, or restored whole while owned (revoked, then assigned back): its
                # records show some of its calls live, some ended, followed ones included.
                theirs = [c for c in calls if partition_of(c, 6) == partition]
                mine = rng.sample(theirs, rng.randint(0, len(theirs) // 2))
                split = rng.randrange(len(mine) + 1)
                live = {call: rng.randrange(1, 5) for call in mine[:split]}
                ends = dict.fromkeys(mine[split:], now[0] - 5)
                got = own(roster, partition, live, ends)
                want = model.take_over(partition, live, ends, now[0])
            got, want = got + roster.refill(), want + model.fill(now[0])
        else:
            now[0] += rng.choice((1.0, 10.0))
            got, want = roster.refill(), model.fill(now[0])
        assert [(s.call, s.after, s.until) for s in got] == [
            (s.call, s.after, s.until) for s in want
        ]
        if got and rng.random() < 0.4:  # the source's launch raised at one of them
            back = got[rng.randrange(len(got)) :]
            roster.handed_back(back)
            model.handed_back(back)
        assert set(roster.following) == model.following
        assert len(roster.following) <= capacity
        assert list(roster.waiting.items()) == [(c, a) for c, a, _ in model.queue]
        assert roster._until == {c: u for c, _, u in model.queue if u is not None}
        assert len(roster.waiting) <= roster.max_waiting
        assert (expired, dropped) == (model.expired, model.dropped)


@pytest.mark.parametrize("seed", range(200))
def test_the_queue_is_first_in_first_out_bounded_and_expiring_as_a_simple_model(seed: int) -> None:
    queue_run(seed)


def test_a_takeover_that_ends_a_followed_call_keeps_its_slot_until_its_follower_stops() -> None:
    # A revoked partition assigned back and restored whole while its calls are followed: its
    # records say a ended, but a's follower reads on until it finds the end itself. b started in
    # a's slot meanwhile made two streams of one slot: more followed than `max_calls`.
    roster = Roster(6, capacity=1)
    a, b, c = calls_in(0, 3)
    own(roster, 0, {}, {})
    assert roster.offer(a) == [Start(a, 0)]
    assert roster.offer(b) + roster.offer(c) == []
    assert own(roster, 0, {}, dict.fromkeys((a, c), 0.0)) == []
    assert roster.following == {a: 0}
    assert list(roster.waiting) == [b]
    assert has_ended(roster, a)  # a late notice does not restart it, however its follower ends
    assert roster.finished(a, ended=False) == [Start(b, 0)]
    assert roster.offer(a) == []


def test_a_full_queue_with_a_slot_free_starts_a_call_before_dropping_one() -> None:
    # A start handed back (a launch raised) frees its slot and waits first in a queue now full:
    # the next offer dropped its call before the fill that made room for it, counted and said
    # as a full queue (and the call list read again) for nothing.
    dropped: list[str] = []
    roster = Roster(6, capacity=1, on_drop=dropped.append)
    roster.max_waiting = 2
    own(roster, 0, {}, {})
    a, b, c, d = calls_in(0, 4)
    assert roster.offer(a) == [Start(a, 0)]
    assert roster.offer(b) == []
    roster.handed_back([Start(a, 0)])
    assert list(roster.waiting) == [a, b]  # full, a slot free
    assert roster.offer(c) == [Start(a, 0)]
    assert list(roster.waiting) == [b, c]
    assert dropped == []
    assert not roster.missed
    assert roster.offer(d) == []  # full, no slot free: dropped
    assert dropped == [d]


def test_losing_a_partition_ends_its_takeover_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its steps had nothing left to do for a partition gone (its calls not owned): they offered,
    # remembered and looked up every call of its records all the same, and held every offer and
    # fill to their records until the last.
    roster, live, ended = stepping(monkeypatch, 1, 6)
    kept = roster.take_over(1, {}, {})
    takeover = roster.take_over(0, {live: 3}, dict.fromkeys(ended, 100.0))
    takeover.step()
    assert roster.lose(0) == []
    assert takeover.done
    assert roster._taking == [kept]
    assert takeover.step() == []
    assert roster._ended == {}
