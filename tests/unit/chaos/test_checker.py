"""The fault matrix's checker: lost, doubled, order and 5xx from a history."""

from __future__ import annotations

from typing import Any

from bridge.simulator.ledger import ledger_record
from chaos.checker import (
    History,
    call_log_history,
    check,
    feed_tail_losses,
    order_violations,
    producer_doubles,
)
from tests.entries import entry

SENT = {"CA_a": ["CA_a:1", "CA_a:2", "CA_a:3"], "CA_b": ["CA_b:1", "CA_b:2"]}


def history(read: list[tuple[str, str]], **answers: list[int]) -> History:
    default = {event: [200] for events in SENT.values() for event in events}
    default.update({k.replace("_", ":").replace("CA:", "CA_"): v for k, v in answers.items()})
    return History(sent=SENT, answers=default, read=read)


ALL_READ = [
    ("CA_a", "CA_a:1"),
    ("CA_b", "CA_b:1"),
    ("CA_a", "CA_a:2"),
    ("CA_a", "CA_a:3"),
    ("CA_b", "CA_b:2"),
]


def test_a_clean_run_holds_every_invariant() -> None:
    counts = check(history(ALL_READ))
    assert (counts.sent, counts.acknowledged, counts.lost, counts.doubled) == (5, 5, 0, 0)
    assert counts.order_violations == 0
    assert counts.failures == []


def test_an_acknowledged_event_missing_is_lost() -> None:
    counts = check(history([r for r in ALL_READ if r[1] != "CA_a:2"]))
    assert (counts.lost, counts.lost_ids) == (1, ("CA_a:2",))
    assert counts.failures == ["1 acknowledged event(s) lost"]


def test_an_unacknowledged_event_may_be_missing_or_present() -> None:
    # 503 then given up: absent is fine; a 503'd write that Kafka took late may be present too.
    absent = check(history([r for r in ALL_READ if r[1] != "CA_b:2"], CA_b_2=[503, 503]))
    present = check(history(ALL_READ, CA_b_2=[503, 0]))
    assert absent.lost == present.lost == 0
    assert (present.status_503, present.transport_errors) == (1, 1)
    assert absent.acknowledged == 4
    assert absent.failures == present.failures == []


def test_a_second_copy_is_doubled_not_an_order_violation() -> None:
    counts = check(history([*ALL_READ, ("CA_a", "CA_a:2")]))
    assert (counts.doubled, counts.doubled_ids) == (1, ("CA_a:2",))
    assert counts.order_violations == 0
    assert counts.failures == ["1 event(s) published more than once"]


def test_a_call_read_out_of_its_send_order_is_a_violation() -> None:
    swapped = [("CA_a", "CA_a:1"), ("CA_a", "CA_a:3"), ("CA_a", "CA_a:2"), ("CA_b", "CA_b:1")]
    assert order_violations(SENT, swapped) == 1
    # Other calls interleaved in between do not count.
    assert order_violations(SENT, ALL_READ) == 0
    assert check(history([*swapped, ("CA_b", "CA_b:2")])).failures == [
        "1 per-call order violation(s)"
    ]


def test_5xx_other_than_503_fails_even_when_nothing_is_lost() -> None:
    counts = check(history(ALL_READ, CA_a_1=[500, 200], CA_b_1=[502, 503, 200]))
    assert (counts.other_5xx, counts.status_503, counts.requests) == (2, 1, 8)
    assert counts.failures == ["2 5xx answer(s) other than 503"]


def test_a_record_of_an_event_never_sent_is_flagged() -> None:
    counts = check(history([*ALL_READ, ("CA_z", "CA_z:1")]))
    assert counts.unexpected == 1
    assert counts.failures == ["1 record(s) of events never sent"]


def test_producer_doubles_are_copies_beyond_the_requests() -> None:
    answers = {"e1": [503, 200], "e2": [200]}
    # e1: two requests may leave two copies; e2: one request, two copies: a producer double.
    assert producer_doubles(answers, {"e1": 2, "e2": 1}) == 0
    assert producer_doubles(answers, {"e1": 2, "e2": 2}) == 1
    assert producer_doubles(answers, {"e9": 1}) == 1


def test_feed_losses_are_tolerated_only_as_the_tail_of_a_cut_connection() -> None:
    sends = [(1, "a"), (1, "b"), (1, "c"), (2, "d"), (2, "e"), (3, "f")]
    # Connection 1 was cut: its tail c may die with it; nothing else may go missing.
    assert feed_tail_losses(sends, {"a", "b", "d", "e", "f"}, cut={1}) == ({1: 1}, [])
    # A hole before a frame that arrived is a loss, cut or not.
    assert feed_tail_losses(sends, {"a", "c", "d", "e", "f"}, cut={1}) == ({}, ["b"])
    # A loss on a connection nobody cut is a loss.
    assert feed_tail_losses(sends, {"a", "b", "c", "d", "f"}, cut={1}) == ({}, ["e"])
    # A whole cut connection that delivered nothing is all tail.
    assert feed_tail_losses(sends, {"d", "e", "f"}, cut={1}) == ({1: 3}, [])


def logged(call: str, seq: int, *channels: str, ephemeral: bool = False) -> dict[str, Any]:
    """The simulator's ledger record of one of its call logs' entries."""
    return ledger_record(entry(seq, call=call, ephemeral=ephemeral), channels or ("sse",))


def test_a_call_log_history_owes_every_durable_entry_in_seq_order() -> None:
    ledger = [
        logged("CA_a", 2),
        logged("CA_b", 1, "webhook", "sse"),
        logged("CA_a", 1),  # ledgered late: still owed first, by its seq
        logged("CA_a", 3, ephemeral=True),  # never published
        logged("CA_a", 4),
        {**logged("CA_b", 9, "webhook"), "id": "alert-digest"},  # an alert: webhook only
    ]
    read = [("CA_a", "CA_a:1"), ("CA_b", "CA_b:1"), ("CA_a", "CA_a:4"), ("CA_a", "CA_a:2")]
    history = call_log_history(ledger, read)
    assert history.sent == {"CA_a": ["CA_a:1", "CA_a:2", "CA_a:4"], "CA_b": ["CA_b:1"]}
    assert history.answers == {e: [200] for e in ("CA_a:1", "CA_a:2", "CA_a:4", "CA_b:1")}
    counts = check(history)
    assert (counts.sent, counts.acknowledged, counts.lost, counts.doubled) == (4, 4, 0, 0)
    assert counts.failures == ["1 per-call order violation(s)"]
    assert check(call_log_history(ledger, read[:2])).lost_ids == ("CA_a:2", "CA_a:4")
