"""A topic's authorized operations (Metadata v8) read as whether this user may write it."""

from __future__ import annotations

from bridge.sink.authorized import NOT_ASKED, WRITE, may_not_write

READ, DESCRIBE = 3, 8


def test_operations_without_write_are_refused_and_unknown_ones_are_not() -> None:
    assert may_not_write((1 << READ) | (1 << DESCRIBE))
    assert not may_not_write((1 << WRITE) | (1 << DESCRIBE))
    assert not may_not_write(NOT_ASKED), "a broker that did not say refuses nothing here"
