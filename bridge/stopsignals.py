"""The signals that stop the daemon gracefully (drain, then exit): SIGTERM, SIGINT, and SIGHUP.

SIGHUP's default action kills at once, losing what is in flight; there is nothing to reload
(secret files are re-read as they change), so a hangup stops as SIGTERM does.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

# Stop signals that came before the event loop's handlers, as PID 1 (see hold_until_handled).
_held: list[signal.Signals] = []


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM and SIGINT, and SIGHUP unless this process started with it ignored (nohup).

    Call it before installing handlers: a handled signal is no longer seen as ignored.
    """
    # nohup (or a parent) ignoring SIGHUP asked for the process to outlive its terminal.
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, signal.SIGINT, *hangup)


def hold_until_handled() -> None:
    """As PID 1 (a container's entrypoint), keep a stop signal that comes before the loop's
    handlers for `held_stop` (a tool's: `interrupt_on_stop`): the kernel drops one PID 1 has no
    handler for, so a pod deleted during its start-up (its imports) ran on, serving, until killed
    at its grace period's end.

    Elsewhere the default action ends a process that has started nothing yet: left alone. So
    is SIGINT, whose KeyboardInterrupt reaches PID 1 too (and stops a tool run there).
    """
    if os.getpid() != 1:
        return
    for sig in stop_signals():
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _hold)


def _hold(signum: int, _: FrameType | None) -> None:
    _held.append(signal.Signals(signum))


def interrupt_on_stop() -> None:
    """A tool (any command but `run`) as PID 1: a stop signal held since start-up, or one to come
    that it does not handle itself, interrupts it as Ctrl-C does, as its default action would."""
    # Held, it was never acted on: the tool ran on (a `tail`, a `redrive`) until SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is _hold:
            signal.signal(sig, signal.default_int_handler)
    if held_stop() is not None:
        raise KeyboardInterrupt


def held_stop() -> signal.Signals | None:
    """The first stop signal held since start-up (hold_until_handled), if any, once."""
    held = _held[0] if _held else None
    _held.clear()
    return held
