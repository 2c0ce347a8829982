import hashlib
import os
import random
import subprocess
import sys
import tracemalloc
from array import array
from typing import cast
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import dedupstep
from bench.dedupstep import _OldSeenWindow
from bridge.dedup import SeenWindow, digest
from bridge.dedup import window as window_module
from bridge.dedup.window import drop_expired_in
from tests import fuzz  # noqa: F401  (the Hypothesis profiles)

TTL = 10.0


def key(event_id: str) -> int:
    return digest(event_id)


def held(window: SeenWindow) -> dict[int, float]:
    """Every id the window holds, its last-seen time: its dicts merged."""
    return {k: at for shard in window._shards for k, at in shard.items()}


def test_new_then_duplicate() -> None:
    window = SeenWindow(TTL, 100)
    assert window.observe(key("a"), 1000.0)
    assert not window.observe(key("a"), 1000.0)
    assert window.observe(key("b"), 1000.0)
    assert len(window) == 2


def test_ttl_is_exact_by_append_time() -> None:
    # A copy appended exactly TTL after the first is still a duplicate; a moment later it is not.
    at_edge = SeenWindow(TTL, 100)
    at_edge.observe(key("a"), 1000.0)
    assert not at_edge.observe(key("a"), 1000.0 + TTL)
    past_edge = SeenWindow(TTL, 100)
    past_edge.observe(key("a"), 1000.0)
    assert past_edge.observe(key("a"), 1000.0 + TTL + 0.001)


@pytest.mark.parametrize("ttl", [0.1, 0.3, 0.57, 1.7, 4.35, 900.0])
def test_the_ttl_edge_is_exact_for_a_ttl_no_float_holds_exactly(ttl: float) -> None:
    # Append times are whole ms from Kafka, divided by 1000: a float difference a hair off the
    # TTL (0.1 s: in about 2 of 5 sightings) made a copy exactly TTL after its first new.
    ttl_ms = round(ttl * 1000)
    for first in range(1_767_225_600_000, 1_767_225_600_000 + 500):
        at_edge, past_edge = SeenWindow(ttl, 100), SeenWindow(ttl, 100)
        at_edge.observe(key("a"), first / 1000)
        assert not at_edge.observe(key("a"), (first + ttl_ms) / 1000), first
        past_edge.observe(key("a"), first / 1000)
        assert past_edge.observe(key("a"), (first + ttl_ms + 1) / 1000), first


def test_expiry_follows_other_records_times_not_the_wall_clock() -> None:
    window = SeenWindow(TTL, 100)
    window.observe(key("a"), 1000.0)
    window.observe(key("b"), 1000.0 + TTL)
    assert key("a") in window
    window.observe(key("c"), 1000.0 + TTL + 0.5)
    assert key("a") not in window
    assert len(window) == 2  # a was forgotten when stream time passed its TTL


def test_a_sighting_refreshes_the_window() -> None:
    window = SeenWindow(TTL, 100)
    assert window.observe(key("a"), 0.0)
    assert not window.observe(key("a"), 6.0)
    # 15 s after the first copy but 9 s after the last: still a duplicate, and refreshed again.
    assert not window.observe(key("a"), 15.0)
    assert not window.observe(key("a"), 25.0)
    assert window.observe(key("a"), 35.5)


def test_stale_queue_slots_of_a_refreshed_id_do_not_evict_it() -> None:
    window = SeenWindow(TTL, 100)
    window.observe(key("a"), 0.0)
    window.observe(key("a"), 8.0)
    window.observe(key("b"), 12.0)  # past a's first sighting's TTL, not its second's
    assert key("a") in window
    assert not window.observe(key("a"), 17.0)


def test_a_clock_stepping_back_does_not_rewind_the_window() -> None:
    window = SeenWindow(TTL, 100)
    window.observe(key("a"), 100.0)
    assert window.observe(key("b"), 50.0)  # the broker clock stepped back: counted at 100
    assert window.stream_time == 100.0
    assert not window.observe(key("b"), 105.0)
    # b's sighting stands at 100, not 50, so it is remembered until 110...
    assert not window.observe(key("b"), 109.0)
    window.observe(key("c"), 121.0)
    assert key("a") not in window
    # ...and an id that expired is not brought back by a record stamped in the past.
    assert window.observe(key("a"), 99.0)


def test_cap_evicts_oldest_first_and_counts_it() -> None:
    window = SeenWindow(1000.0, 3)
    for n, event_id in enumerate("abcd"):
        assert window.observe(key(event_id), float(n))
    assert len(window) == 3
    assert window.evicted_early == 1
    assert key("a") not in window
    assert all(key(e) in window for e in "bcd")
    assert window.observe(key("a"), 4.0)  # forgotten early: a copy now counts as new
    assert window.evicted_early == 2


def test_cap_skips_a_refreshed_id() -> None:
    window = SeenWindow(1000.0, 2)
    window.observe(key("a"), 0.0)
    window.observe(key("b"), 1.0)
    window.observe(key("a"), 2.0)
    window.observe(key("c"), 3.0)  # evicts b, the oldest by last sighting, not a
    assert key("a") in window
    assert key("c") in window
    assert key("b") not in window
    assert window.evicted_early == 1


def test_an_id_seen_again_at_the_same_time_is_not_evicted_at_once_by_the_cap() -> None:
    # Stream time stands still within a millisecond, or while a broker clock that stepped back
    # catches up. a's second sighting at 0 left a queue slot that outlived a's eviction by the
    # cap (for b); a back at 0 was then evicted at once by that slot, in place of b, and its next
    # copy output again.
    window = SeenWindow(TTL, 1)
    assert [window.observe(key(e), 0.0) for e in "aaba"] == [True, False, True, True]
    assert key("a") in window
    assert key("b") not in window
    assert not window.observe(key("a"), 0.0)


def test_expiry_within_the_ttl_is_not_counted_as_early() -> None:
    window = SeenWindow(TTL, 2)
    window.observe(key("a"), 0.0)
    window.observe(key("b"), 1.0)
    window.observe(key("c"), 20.0)  # a and b expired by time, not by the cap
    assert len(window) == 1
    assert window.evicted_early == 0


def test_long_streams_stay_bounded_and_correct() -> None:
    window = SeenWindow(100.0, 1_000_000)
    for n in range(20_000):
        assert window.observe(key(f"id-{n}"), float(n))
    assert len(window) == 101  # ids from 19_899 to 19_999
    assert not window.observe(key("id-19899"), 19_999.0)
    assert window.observe(key("id-19898"), 19_999.0)
    assert window.evicted_early == 0


def test_copies_of_a_few_ids_keep_the_queue_bounded() -> None:
    # A retry storm: 100k copies of 10 ids within one TTL. Each sighting queued a slot until
    # the TTL passed, whatever the cap on ids (48 MB for 2M copies).
    window = SeenWindow(900.0, 1_000)
    most = 0
    for n in range(100_000):
        window.observe(key(f"id-{n % 10}"), 1_000.0 + n / 1_000)
        most = max(most, len(window._times) - window._head)
    assert len(window) == 10
    # A pass starts past 2 x 10 + 4096 slots and, examining _COMPACT_STEP a sighting, ends
    # before the sightings meanwhile add a 63rd of that.
    assert most <= (2 * 10 + 4_096 + 1) * 64 // 63 + 1


def test_at_steady_state_the_queue_holds_at_most_a_third_more_slots_than_live_ids() -> None:
    # Each id once, at a steady rate: the consumed head was cut off only past half the queue, so
    # the arrays (24 bytes a slot) grew to twice the live ids before each compaction.
    live = int(TTL * 1000)  # one a ms: append times are whole ms
    window = SeenWindow(TTL, 10 * live)
    most = 0
    for i in range(3 * live):
        window.observe(key(f"evt-{i}"), 1000.0 + i / 1000)
        if i >= live:
            most = max(most, len(window._times) - 4 * len(window) // 3)
    assert len(window) == live + 1
    assert most <= 4_096 + 1


class KeepsEverySighting(SeenWindow):
    def _drop_stale(self) -> None:
        return None


@pytest.mark.parametrize("cap", [1_000_000, 25])
def test_dropping_stale_slots_changes_no_decision(cap: int) -> None:
    rng = random.Random(cap)
    lean, full = SeenWindow(TTL, cap), KeepsEverySighting(TTL, cap)
    t = 0.0
    for _ in range(40_000):
        t += rng.choice((0.0, 0.0, 0.0001, 0.001, 0.002))  # thousands within a TTL
        k, at = key(f"CA_{rng.randrange(40)}"), t + rng.choice((0.0, 0.0, -3.0))
        assert lean.observe(k, at) == full.observe(k, at)
    assert lean.evicted_early == full.evicted_early
    assert held(lean) == held(full)
    queued = [len(w._times) - w._head for w in (lean, full)]
    # Without a cap to trim it, the queue of the window that drops stale slots is the shorter.
    assert queued[0] < queued[1] if cap > 1_000 else queued[0] <= queued[1]


def test_a_replay_from_ttl_before_the_last_record_decides_like_the_original() -> None:
    # What restore relies on: rebuilding from [t_last - TTL, t_last] gives the same decisions.
    rng = random.Random(8)
    stream: list[tuple[int, float]] = []
    t = 0.0
    for _ in range(5_000):
        t += rng.choice((0.0, 0.001, 0.05, 0.4))
        stream.append((key(f"CA_{rng.randrange(300)}:{rng.randrange(5)}"), t))
    split = 3_000
    original = SeenWindow(TTL, 1_000_000)
    for k, at in stream[:split]:
        original.observe(k, at)
    last = stream[split - 1][1]
    restored = SeenWindow(TTL, 1_000_000)
    for k, at in stream[:split]:
        if at >= last - TTL:
            restored.observe(k, at)
    assert [original.observe(k, at) for k, at in stream[split:]] == [
        restored.observe(k, at) for k, at in stream[split:]
    ]


@pytest.mark.parametrize("cap", [1, 3, 8])
def test_a_replay_decides_like_the_original_past_the_cap_and_with_clock_steps(cap: int) -> None:
    # As restore replays: every record from the first appended at or after the TTL before the
    # last decided one (offsets_for_times), a record stamped earlier after it included. The
    # original's oldest ids, outside the replay, fill its window and are forgotten first.
    rng = random.Random(cap)
    keys = [key(f"CA_{n}") for n in range(6)]
    for _ in range(300):
        stream: list[tuple[int, float]] = []
        ms = 1_000_000  # append times are whole milliseconds: a copy exactly a TTL later too
        for _ in range(120):
            ms += rng.choice((0, 1, 500, 1_000, 3_333, 10_000))
            at = (ms + rng.choice((0, 0, 0, -1_000, -10_000))) / 1000
            stream.append((rng.choice(keys), at))
        split = rng.randrange(1, 80)
        original = SeenWindow(TTL, cap)
        for k, at in stream[:split]:
            original.observe(k, at)
        last = stream[split - 1][1]
        start = next(i for i, (_, at) in enumerate(stream) if at >= last - TTL)
        restored = SeenWindow(TTL, cap)
        for k, at in stream[start:split]:
            restored.observe(k, at)
        assert [original.observe(k, at) for k, at in stream[split:]] == [
            restored.observe(k, at) for k, at in stream[split:]
        ]


@pytest.mark.parametrize("expiring", [False, True], ids=["growing", "steady"])
def test_size_estimate_is_what_the_window_allocates(expiring: bool) -> None:
    # What deploy/README.md's memory figures (and pinecall_bridge_dedup_window_bytes) rest on:
    # tracemalloc counts requested sizes, the estimate the allocator's blocks, a little more.
    n = 20_000
    tracemalloc.start()
    try:
        window = SeenWindow(n / 1000 if expiring else 1e9, 10 * n)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n * (3 if expiring else 1)):
            # Steady: n new ids per TTL (one a ms) for three TTLs, so n live at the end.
            window.observe(key(f"evt-{i}"), 1000.0 + i / 1000)
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(window) == n + (1 if expiring else 0)
    assert traced <= window.size_bytes() <= traced * 1.15
    assert 120 <= window.size_bytes() / len(window) <= 260, "the runbook's bytes per id"


@pytest.mark.parametrize(("ttl", "size"), [(0, 1), (-1, 1), (1, 0)])
def test_refuses_nonsense(ttl: float, size: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        SeenWindow(ttl, size)


def test_digest_is_128_bit_blake2b() -> None:
    # RFC 7693's BLAKE2b with a 16-byte digest; the empty-string vector is published.
    assert digest("") == 0xCAE66941D9EFBD404E4D88758EA67670
    assert digest("CA_1:1") == 0x65EE87D523B92A6AD60EFFE7124AEC58
    assert digest("CA_1:1") != digest("CA_1:2")
    expected = hashlib.blake2b("é".encode(), digest_size=16).digest()
    assert digest("é") == int.from_bytes(expected, "big")


def test_digest_is_the_same_in_another_process() -> None:
    ids = ["CA_1:1", "dlq:" + "ab" * 32, "CA_ünïcode:7"]
    code = (
        "import sys; from bridge.dedup import digest; "
        "print(' '.join(str(digest(i)) for i in sys.argv[1:]))"
    )
    for seed in ("1", "2"):  # unlike hash(), the digest does not depend on the hash seed
        out = subprocess.run(
            [sys.executable, "-c", code, *ids],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.split()
        assert [int(x) for x in out] == [digest(i) for i in ids]


class Reference:
    """The window's rules the slow, obvious way: a dict of each id's last sighting."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl, self.max = ttl, max_entries
        # id → (last-seen time, order of its first sighting at that time)
        self.last: dict[int, tuple[float, int]] = {}
        self.stream_time = float("-inf")
        self.sightings = 0
        self.evicted_early = 0

    def __contains__(self, k: int) -> bool:
        seen = self.last.get(k)
        return seen is not None and seen[0] >= self.stream_time - self.ttl

    def observe(self, k: int, at: float) -> bool:
        now = self.stream_time = max(at, self.stream_time)
        horizon = now - self.ttl
        self.last = {i: seen for i, seen in self.last.items() if seen[0] >= horizon}
        previous = self.last.get(k)
        self.sightings += 1
        if previous is None or previous[0] != now:
            self.last[k] = (now, self.sightings)
        while len(self.last) > self.max:
            # Oldest by last-seen time; of those seen last at one time, the first seen then.
            del self.last[min(self.last, key=self.last.__getitem__)]
            self.evicted_early += 1
        return previous is None


@pytest.mark.parametrize("step", [2, 3, 64])
@pytest.mark.parametrize("compact_after", [2, 4096])
@pytest.mark.parametrize("cap", [1, 2, 3, 7, 1_000])
def test_decides_as_a_reference_model_over_random_streams(
    cap: int, compact_after: int, step: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Equal times, the clock stepping back, jumps of exactly the TTL and of several; with a tiny
    # compaction threshold the queue is shifted and its stale slots dropped all the time, and
    # with a small step a pass's garbage sits between the slots kept and those unread for long.
    monkeypatch.setattr(window_module, "_COMPACT_AFTER", compact_after)
    monkeypatch.setattr(window_module, "_COMPACT_STEP", step)
    rng = random.Random(cap * 10_000 + compact_after * 100 + step)
    keys = [key(f"CA_{n}") for n in range(8)]
    for _ in range(100):
        window, reference = SeenWindow(TTL, cap), Reference(TTL, cap)
        t = 1000.0
        for _ in range(120):
            t += rng.choice((0.0, 0.0, 0.0, 0.001, 0.5, TTL, TTL, 3 * TTL, -TTL / 2))
            k = rng.choice(keys)
            if rng.random() < 0.2:
                assert (k in window) == (k in reference)
                continue
            at = t + rng.choice((0.0, 0.0, 0.0, -1.0, -TTL))
            assert window.observe(k, at) == reference.observe(k, at)
            assert window.stream_time == reference.stream_time
            assert window.evicted_early == reference.evicted_early
            assert_queued_in_order(window)
        assert set(held(window)) == set(reference.last)


def assert_queued_in_order(window: SeenWindow) -> None:
    """Every remembered id's latest sighting is queued, once, in time order; no pass's garbage."""
    head, end = window._head, len(window._times)
    kept, read = (window._kept, window._read) if window._read >= 0 else (end, end)
    assert head <= kept <= read <= end
    slots = [*range(head, kept), *range(read, end)]
    times = [window._times[i] for i in slots]
    assert times == sorted(times)
    ids = held(window)
    latest = [
        (k, when)
        for i, when in zip(slots, times, strict=True)
        if ids.get(k := (window._high[i] << 64) | window._low[i]) == when
    ]
    assert sorted(latest) == sorted(ids.items())
    assert len(window) == len(ids)  # counted as the dicts change, not summed


# A sighting: which of a dozen ids, how many ms stream time moves (0, 1, exactly the TTL, past
# it, an idle gap of many TTLs, back), and how many ms before stream time the record was stamped;
# or only asking `in`, or the stage's poll dropping expired ids.
_sightings = st.lists(
    st.tuples(
        st.integers(0, 11),
        st.sampled_from((0, 0, 1, 500, 10_000, 25_000, 100_000, -5_000)),
        st.sampled_from((0, 0, -1, -1_000, -10_000)),
        st.sampled_from(("observe",) * 6 + ("ask", "poll")),
    ),
    min_size=100,
    max_size=400,
)


def live(window: SeenWindow) -> set[int]:
    """The ids the window remembers within the TTL: those expired not yet dropped left out."""
    return {k for k, at in held(window).items() if at >= window.stream_time - window._ttl}


@given(
    st.integers(1, 8),
    st.integers(0, 6),
    st.integers(2, 5),
    st.integers(0, 3),
    st.integers(1, 4),
    _sightings,
)
def test_decides_as_the_reference_model_whatever_the_pass_dropping_stale_slots_is_at(
    cap: int,
    compact_after: int,
    step: int,
    expire_step: int,
    poll: int,
    sightings: list[tuple[int, int, int, str]],
) -> None:
    # Passes start after a few stale slots and examine a few a sighting, so evictions by time
    # and by the cap meet a pass's kept slots, its garbage and its unread slots in every order.
    # Append times are whole ms, decided as such (the window's half ms over the TTL). Idle gaps
    # expire more ids than a sighting drops (none at a step of 0): those held past their TTL
    # must decide nothing, nor count against the cap, until a sighting or a poll drops them.
    keys = [key(f"CA_{n}") for n in range(12)]
    with (
        mock.patch.object(window_module, "_COMPACT_AFTER", compact_after),
        mock.patch.object(window_module, "_COMPACT_STEP", step),
        mock.patch.object(window_module, "_EXPIRE_STEP", expire_step),
    ):
        window, reference = SeenWindow(TTL, cap), Reference(TTL + window_module._HALF_MS, cap)
        ms = 1_000_000
        for n, moved, stamped, action in sightings:
            ms += moved
            if action == "ask":
                assert (keys[n] in window) == (keys[n] in reference)
                continue
            if action == "poll":
                assert window.drop_expired(poll) <= poll
            else:
                at = (ms + stamped) / 1000
                assert window.observe(keys[n], at) == reference.observe(keys[n], at)
            assert window.stream_time == reference.stream_time
            assert window.evicted_early == reference.evicted_early
            assert live(window) == set(reference.last)
            assert len(window) <= cap
            assert_queued_in_order(window)
        while window.drop_expired(poll):
            assert_queued_in_order(window)
        assert set(held(window)) == set(reference.last)  # held past their TTL, then dropped


@pytest.mark.parametrize(
    ("compact_after", "step", "cap", "sightings"),
    [
        # The cap evicts c, then the slots the pass kept are gone: the eviction must go on at
        # those it has not read. In its garbage lay a copy it moved of b's sighting at 502 (b
        # since evicted by the cap and seen again then): taken for b's latest, it forgot b, not e.
        (0, 4, 2, "d0 c0 b0 c2 b2 b502 a502 e502 b502 d507 b507"),
        # Stream time jumps past every slot, the pass's unread ones too: it goes on from the head.
        (0, 4, 8, "a0 c999 a999 c6500 d6500 c6501 d6501 e16500 a329008 c329008 d329009"),
        # The consumed head is cut off the arrays while a pass runs: its places move with it.
        (
            0,
            3,
            5,
            "f0 e1000 c1000 a1000 f1000 d1000 c6002 a6503 c6503 d6503 e6503 b6503 f6503 d99999",
        ),
    ],
)
def test_evictions_meet_a_running_pass_as_the_reference_model_decides(
    compact_after: int, step: int, cap: int, sightings: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(window_module, "_COMPACT_AFTER", compact_after)
    monkeypatch.setattr(window_module, "_COMPACT_STEP", step)
    window, reference = SeenWindow(TTL, cap), Reference(TTL + window_module._HALF_MS, cap)
    for sighting in sightings.split():
        k, at = key(sighting[0]), (1_000_000 + int(sighting[1:])) / 1000
        assert window.observe(k, at) == reference.observe(k, at), sighting
        assert held(window).keys() == reference.last.keys(), sighting
        assert_queued_in_order(window)


class CountingTimes(array):  # type: ignore[type-arg]
    """A queue's times that count the slots read: each slot examined reads its time once."""

    reads = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        CountingTimes.reads += 1
        return super().__getitem__(index)


def test_no_sighting_examines_more_than_a_bounded_number_of_slots() -> None:
    # Ids seen three times each (webhook, feed, call log), a new one a ms. Dropping the stale
    # slots in one pass examined the whole queue in one sighting (1.8M slots, 1.3 s, at 600k
    # live ids): the event loop held, and the webhooks and probes of the process with it.
    live = 5_000
    window = SeenWindow(live / 1000, 10 * live)
    window._times = CountingTimes("d")
    most = queued = 0
    for i in range(3 * live):
        for n, at in ((i, i), (i - 200, i + 0.3), (i - 400, i + 0.6)):  # copies 0.2, 0.4 s late
            if n >= 0:
                before = CountingTimes.reads
                window.observe(key(f"evt-{n}"), 1000.0 + at / 1000)
                most = max(most, CountingTimes.reads - before)
                queued = max(queued, len(window._times) - window._head)
    # A pass's step (_COMPACT_STEP), and the one or two slots stream time expires, and the next.
    assert most <= 64 + 3
    assert len(window) == live + 401  # and the 400 newest are seen again within the TTL
    # Stale slots were dropped all along: 45k sightings, at most 3 slots an id within the TTL.
    assert queued <= (2 * len(window) + 4_096 + 1) * 64 // 63 + 1


def test_the_first_sighting_after_an_idle_gap_past_the_ttl_examines_a_bounded_few_slots() -> None:
    # The first record after an idle gap longer than the TTL dropped the whole window in one
    # sighting (0.28 s of CPU at 600k ids seen three times): the event loop held meanwhile.
    live_ids = 5_000
    window = SeenWindow(live_ids / 1000, 10 * live_ids)
    window._times = CountingTimes("d")
    for i in range(live_ids):
        window.observe(key(f"evt-{i}"), 1000.0 + i / 1000)
    gap_end = 1000.0 + 2 * live_ids / 1000 + 60.0
    before = CountingTimes.reads
    assert window.observe(key("after"), gap_end)
    # A step of expiry, the slot it stops at; no pass runs (each id was seen once).
    assert CountingTimes.reads - before <= window_module._EXPIRE_STEP + 1
    # An id expired but still held is new, as it was once dropped; and held no longer.
    last = key(f"evt-{live_ids - 1}")
    assert last in held(window)
    assert last not in window
    assert window.observe(last, gap_end)
    # The stage's polls drop the rest a bounded step at a time, the other window's too.
    other = SeenWindow(1.0, 10)
    other.observe(key("x"), 0.0)
    other.observe(key("y"), 5.0)
    polls = 0
    while len(window) + len(other) > 3:
        before = CountingTimes.reads
        drop_expired_in([window, other], 1_000)
        assert CountingTimes.reads - before <= 1_000 + 1
        polls += 1
    assert polls == 5  # 4,872 expired slots left (64 a sighting): 1,000 a poll, then x's
    assert set(held(window)) == {key("after"), last}
    assert set(held(other)) == {key("y")}


def test_no_sighting_rebuilds_more_than_a_small_share_of_the_ids_dicts() -> None:
    # CPython rebuilds a dict whose entries table is used up (by deleted keys, at steady state)
    # in the one insert that finds it so: with every id in one dict that was ~30 ms at 600k ids,
    # the event loop held. The rebuild allocates the new table while the old one is still
    # held, so a sighting's transient allocation shows how much of the ids it moved at once.
    live = 20_000
    window = SeenWindow(live / 1000, 10 * live)
    keys = [key(f"evt-{i}") for i in range(3 * live)]  # growth, then two TTLs of expiry
    most = 0
    tracemalloc.start()
    try:
        for i, k in enumerate(keys):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            window.observe(k, 1000.0 + i / 1000)
            most = max(most, tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    assert len(window) == live + 1
    # One dict: a sighting allocated 38% of the window's bytes at once; a 16th of the ids: ~3%.
    assert most <= window.size_bytes() / 16


# Ids for the differential test: digests, and ids that share their low 64 bits (so their dict and
# their queue's `_low`) but not their high ones, the widest ones too.
_DIFF_KEYS = [key(f"CA_{n}") for n in range(16)] + [
    (high << 64) | low for high in (0, 1, (1 << 64) - 1) for low in (5, (1 << 64) - 1)
]


@pytest.mark.parametrize(
    ("compact_after", "step", "expire_step"),
    [(4096, 64, 64), (2, 3, 2), (0, 2, 0)],
    ids=["as-shipped", "small-steps", "expiry-by-polls"],
)
@pytest.mark.parametrize(("seed", "cap"), [(1, 1), (2, 3), (3, 8), (4, 20), (5, 1_000)])
def test_decides_and_holds_exactly_as_the_one_dict_window_it_replaced(
    seed: int,
    cap: int,
    compact_after: int,
    step: int,
    expire_step: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The split over dicts changed where an id is kept and how the ids are counted, nothing
    # else: any step where the two disagree, in a decision or in what they hold, is a drift.
    # Small steps: passes dropping stale slots meet evictions; at an expire step of 0 expired
    # ids stay held until a poll drops them.
    for module in (window_module, dedupstep):  # the copy bound the constants at its import
        monkeypatch.setattr(module, "_COMPACT_AFTER", compact_after)
        monkeypatch.setattr(module, "_COMPACT_STEP", step)
        monkeypatch.setattr(module, "_EXPIRE_STEP", expire_step)
    rng = random.Random(seed)
    ttl = 0.03
    # Two partitions' windows each, as the stage polls them together (`drop_expired_in`).
    new = [SeenWindow(ttl, cap) for _ in range(2)]
    old = [_OldSeenWindow(ttl, cap) for _ in range(2)]
    decisions: set[bool] = set()
    ms = 1_000_000
    for n in range(3_000):
        # Mostly a ms or none, now and then back; rarely exactly the TTL, a ms past it, or three.
        ms += (
            rng.choice((0, 0, 0, 1, 1, 2, 3, -2))
            if rng.random() < 0.97
            else rng.choice((30, 31, 90))
        )
        # A few hot ids (a retry storm) leave the stale slots that start passes.
        i, k = rng.randrange(2), rng.choice(_DIFF_KEYS[:3] if rng.random() < 0.4 else _DIFF_KEYS)
        action = rng.random()
        if action < 0.6:
            at = (ms - rng.choice((0, 0, 0, 1, 4))) / 1000
            decided = new[i].observe(k, at)
            assert decided == old[i].observe(k, at), n
            decisions.add(decided)
        elif action < 0.8:
            assert (k in new[i]) == (k in old[i]), n
        elif action < 0.93:
            limit = rng.randrange(4)
            assert new[i].drop_expired(limit) == old[i].drop_expired(limit), n
        else:
            limit = rng.randrange(1, 6)
            drop_expired_in(new, limit)
            # It only calls each window's `drop_expired`, which the copy has as it was.
            drop_expired_in(cast("list[SeenWindow]", old), limit)
        for now, then in zip(new, old, strict=True):
            assert len(now) == len(then) == sum(map(len, now._shards)), n
            assert now.evicted_early == then.evicted_early, n
            assert now.stream_time == then.stream_time, n
            assert held(now) == then._last, n
            assert (now._head, now._kept, now._read) == (then._head, then._kept, then._read), n
            queued = (now._high, now._low, now._times)
            assert queued == (then._high, then._low, then._times), n
    # The stream did what it is for: new ids and duplicates; the small caps evicted.
    assert decisions == {True, False}
    assert (sum(w.evicted_early for w in new) > 0) == (cap <= 8)
