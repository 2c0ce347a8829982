"""Which signals stop the daemon gracefully: SIGHUP too, unless it was ignored at the start."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from bridge.stopsignals import held_stop, hold_until_handled, interrupt_on_stop, stop_signals


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


def test_as_pid_1_a_stop_signal_before_the_loops_handlers_is_held_once(
    stop_dispositions: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel drops a signal PID 1 has no handler for: a pod deleted mid-start ran on.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: stays ignored
    interrupt = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(os, "getpid", lambda: 1)
    hold_until_handled()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == interrupt  # KeyboardInterrupt reaches PID 1 too
    signal.raise_signal(signal.SIGTERM)
    assert held_stop() == signal.SIGTERM
    assert held_stop() is None


def test_elsewhere_nothing_is_held(stop_dispositions: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    hold_until_handled()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_tool_as_pid_1_is_interrupted_by_a_stop_signal_held_or_to_come(
    as_pid_1: None, sig: signal.Signals
) -> None:
    # Held for a `run` that never came, it was never acted on: the tool (a `tail`) ran on.
    hold_until_handled()
    signal.raise_signal(sig)
    with pytest.raises(KeyboardInterrupt):
        interrupt_on_stop()
    assert held_stop() is None
    with pytest.raises(KeyboardInterrupt):  # as its default action would end it elsewhere
        signal.raise_signal(sig)


def test_a_tool_elsewhere_keeps_its_dispositions(stop_dispositions: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    hold_until_handled()
    interrupt_on_stop()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
