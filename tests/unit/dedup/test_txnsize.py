"""TransactionSize: unbounded until a transaction times out, then halved and won back."""

from __future__ import annotations

from bridge.dedup.txnsize import TransactionSize


def test_unbounded_until_a_timeout() -> None:
    size = TransactionSize()
    size.committed(10_000)
    assert (size.limit, size.room(10_000, 256), size.full(10_000)) == (None, 256, False)


def test_a_timeout_bounds_to_half_what_the_transaction_had_sent() -> None:
    size = TransactionSize()
    assert size.timed_out(300)
    assert size.limit == 150
    assert (size.room(0, 256), size.room(100, 256), size.room(150, 256)) == (150, 50, 1)
    assert (size.full(149), size.full(150)) == (False, True)


def test_a_timeout_with_nothing_sent_or_above_the_bound_does_not_shrink_it() -> None:
    size = TransactionSize()
    assert not size.timed_out(0)
    assert size.limit is None
    size.timed_out(20)
    assert not size.timed_out(30)
    assert size.limit == 10


def test_never_below_one_record() -> None:
    size = TransactionSize()
    size.timed_out(1)
    assert size.limit == 1
    assert size.room(5, 256) == 1


def test_won_back_by_commits_that_fill_it_only() -> None:
    size = TransactionSize()
    size.timed_out(32)
    size.committed(3)
    assert size.limit == 16
    size.committed(16)
    assert size.limit == 18
    size.timed_out(1)
    size.committed(1)
    assert size.limit == 2
