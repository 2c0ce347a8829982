"""The signals that stop the daemon gracefully (drain, then exit): SIGTERM, SIGINT, and SIGHUP.

SIGHUP's default action kills at once, losing what is in flight; there is nothing to reload
(secret files are re-read as they change), so a hangup stops as SIGTERM does.
"""

from __future__ import annotations

import signal


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM and SIGINT, and SIGHUP unless this process started with it ignored (nohup).

    Call it before installing handlers: a handled signal is no longer seen as ignored.
    """
    # nohup (or a parent) ignoring SIGHUP asked for the process to outlive its terminal.
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, signal.SIGINT, *hangup)
