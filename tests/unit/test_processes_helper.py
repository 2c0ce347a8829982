"""tests.processes.tied_to_this_process: what it starts dies with the session, even a SIGKILLed
one, whose finalisers never run."""

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.workers.worker import prctl
from tests.polling import until
from tests.processes import process_gone, tied_to_this_process

REPO = Path(__file__).resolve().parents[2]

# A stand-in session: ties a long sleep to itself, writes its pid, then is SIGKILLed.
SESSION = """
import os, signal, sys
from pathlib import Path
from tests.processes import tied_to_this_process
Path(sys.argv[1]).write_text(str(tied_to_this_process(["sleep", "600"]).pid))
os.kill(os.getpid(), signal.SIGKILL)
"""


def sigkilled_session(tmp_path: Path) -> int:
    """Run SESSION; the pid of the sleep it tied to itself."""
    pidfile, errors = tmp_path / "sleep.pid", tmp_path / "stderr"
    # Output to files, not pipes: a surviving sleep would hold a pipe open, and run() wait on it.
    with errors.open("wb") as stderr:
        session = subprocess.run(
            [sys.executable, "-c", SESSION, str(pidfile)], cwd=REPO, stderr=stderr, check=False
        )
    assert session.returncode == -signal.SIGKILL, errors.read_text()
    return int(pidfile.read_text())


async def test_what_it_starts_dies_with_a_sigkilled_session(tmp_path: Path) -> None:
    sleeper = sigkilled_session(tmp_path)
    try:
        await until(lambda: process_gone(sleeper), within=10, what="the sleep outlived its session")
    finally:
        if not process_gone(sleeper):
            os.kill(sleeper, signal.SIGKILL)


def test_the_child_looks_nothing_up_after_the_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    # dlopen in the forked child of a threaded session may wait for ever on the loader's lock.
    parent, real = os.getpid(), ctypes.CDLL

    def in_the_parent_only(*args: object, **kwargs: object) -> ctypes.CDLL:
        if os.getpid() != parent:
            raise AssertionError("dlopen after the fork")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    prctl.cache_clear()  # as in a session that has tied no process yet
    monkeypatch.setattr(ctypes, "CDLL", in_the_parent_only)
    child = tied_to_this_process(["true"])
    assert child.wait(10) == 0
