"""Processes in tests: are the ones a test did not start itself (a supervisor's workers) gone,
and ones it starts tied to the session's life."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bridge.workers.worker import die_with_parent, prctl


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (exited, not yet reaped by its parent or init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def tied_to_this_process(command: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start `command`, SIGTERMed by Linux once the calling thread's process is gone.

    A finaliser misses a SIGKILLed session: a `sleep 600` outlived it by up to 10 minutes.
    """
    parent = os.getpid()
    prctl()  # looked up here: the child, forked from a threaded session, only calls it

    def die_with_session() -> None:
        # The session was gone before the child asked: nobody would send the signal.
        if not die_with_parent(parent):
            os._exit(1)

    # PR_SET_PDEATHSIG follows the forking thread: call this from the main one (as fixtures do).
    return subprocess.Popen(command, preexec_fn=die_with_session)
