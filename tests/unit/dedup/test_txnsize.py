"""TransactionSize: unbounded until a transaction times out, then halved and won back."""

from __future__ import annotations

from bridge.dedup.txnsize import TransactionSize, timeout_warning


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
    size.timed_out(1)  # no larger than the 16 just committed: not for its size
    size.timed_out(1)
    size.committed(1)
    assert size.limit == 2


def test_a_timeout_no_larger_than_a_commit_since_the_last_leaves_the_bound_once() -> None:
    """A vanished coordinator: a 3-record transaction timed out after 107 records committed in
    one. Bounded to 1 record, the stage worked a failover's backlog off for 20 s."""
    size = TransactionSize()
    size.committed(107)
    assert not size.timed_out(3)
    assert size.limit is None
    assert size.timed_out(3)  # again, nothing committed between: a throttle, its size
    assert size.limit == 1


def test_a_bound_is_kept_through_a_timeout_of_a_size_that_fitted_since() -> None:
    size = TransactionSize()
    size.timed_out(300)
    size.committed(150)
    assert size.limit == 168
    assert not size.timed_out(0)  # nothing sent: spends nothing of what fitted
    assert not size.timed_out(100)
    assert size.limit == 168
    assert size.timed_out(100)
    assert size.limit == 50


def test_a_timeout_with_nothing_known_missing_guesses_a_throttle_or_a_failover() -> None:
    # The ingest topic is the consumer's, not the transaction's sends: not named as the cause.
    line = timeout_warning(["ingest"], {"events", "alerts"})
    assert "a throttled cluster, or brokers failing over?" in line
    assert "ingest" not in line


def test_a_timeout_with_an_output_topic_missing_names_it_instead_of_guessing() -> None:
    line = timeout_warning(["ingest", "events"], {"events", "alerts"})
    assert "its output topic events is missing" in line
    assert "throttled" not in line
    both = timeout_warning(["events", "alerts"], {"events", "alerts"})
    assert "its output topics alerts, events are missing" in both
