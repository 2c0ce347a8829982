"""Which signals stop the daemon gracefully: SIGHUP too, unless it was ignored at the start."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from bridge.stopsignals import stop_signals


@pytest.fixture
def hangup_disposition() -> Iterator[None]:
    """Restore this process's SIGHUP disposition after the test changed it."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


def test_a_hangup_stops_as_sigterm_does(hangup_disposition: None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    assert stop_signals() == (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def test_a_hangup_ignored_at_the_start_stays_ignored(hangup_disposition: None) -> None:
    # nohup: the process was asked to outlive its terminal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    assert stop_signals() == (signal.SIGTERM, signal.SIGINT)
