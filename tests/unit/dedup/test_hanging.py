"""Hanging transactions: a stable offset held with records beyond it, and for how long."""

from __future__ import annotations

from aiokafka import TopicPartition

from bridge.dedup.hanging import HangWatch, Held, longest_by_topic

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)


def test_caught_up_partitions_are_never_held() -> None:
    watch = HangWatch()
    for now in (0.0, 30.0, 60.0):
        assert watch.observe(now, {A0: 5, B0: 0}, {A0: 5, B0: 0}) == []


def test_a_stable_offset_that_moves_is_a_transaction_ending_on_time() -> None:
    watch = HangWatch()
    # Always a transaction open beyond the stable offset, and it always moves.
    for n, now in enumerate((0.0, 30.0, 60.0, 90.0)):
        assert watch.observe(now, {A0: 10 * n}, {A0: 10 * n + 3}) == []


def test_a_held_stable_offset_is_timed_from_the_read_that_first_saw_it() -> None:
    watch = HangWatch()
    assert watch.observe(100.0, {A0: 7, A1: 2}, {A0: 9, A1: 2}) == []
    # The high watermark grows (the bridge writes on), the stable offset stays.
    assert watch.observe(130.0, {A0: 7, A1: 2}, {A0: 15, A1: 4}) == [Held(A0, 7, 15, 30.0)]
    assert watch.observe(160.0, {A0: 7, A1: 4}, {A0: 21, A1: 4}) == [Held(A0, 7, 21, 60.0)]
    # Aborted by hand: the stable offset jumps, and the clock starts over if it is held again.
    assert watch.observe(190.0, {A0: 21}, {A0: 22}) == []
    assert watch.observe(220.0, {A0: 21}, {A0: 30}) == [Held(A0, 21, 30, 30.0)]


def test_a_partition_gone_from_a_read_is_forgotten() -> None:
    watch = HangWatch()
    watch.observe(0.0, {A0: 1}, {A0: 2})
    assert watch.observe(10.0, {B0: 0}, {B0: 0}) == []
    # Seen again later: a first sighting, not held since the first read.
    assert watch.observe(20.0, {A0: 1}, {A0: 2}) == []
    assert watch.observe(25.0, {A0: 1}, {A0: 2}) == [Held(A0, 1, 2, 5.0)]


def test_a_partition_without_a_high_watermark_says_nothing() -> None:
    watch = HangWatch()
    watch.observe(0.0, {A0: 1}, {A0: 2})
    assert watch.observe(10.0, {A0: 1}, {}) == []
    assert watch.observe(20.0, {A0: 1}, {A0: 2}) == []


def test_the_longest_held_partition_of_each_topic_and_zero_for_the_rest() -> None:
    held = [Held(A0, 1, 2, 30.0), Held(A1, 4, 9, 75.0)]
    assert longest_by_topic(held, ["a", "b"]) == {"a": 75.0, "b": 0.0}
    assert longest_by_topic([], ["a"]) == {"a": 0.0}


def test_a_read_that_misses_a_topic_leaves_its_held_partitions_clocks_running() -> None:
    watch = HangWatch()
    assert watch.observe(0.0, {A0: 7, B0: 1}, {A0: 9, B0: 2}) == []
    # Topic a could not be read (a leader moving, a throttled broker): unknown, not forgotten.
    assert watch.observe(30.0, {B0: 1}, {B0: 2}, unread={"a"}) == [Held(B0, 1, 2, 30.0)]
    # Its stable offset never moved (it only ever grows): held since the first read all along.
    assert watch.observe(60.0, {A0: 7, B0: 1}, {A0: 12, B0: 2}) == [
        Held(A0, 7, 12, 60.0),
        Held(B0, 1, 2, 60.0),
    ]
