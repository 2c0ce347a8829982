"""Every descriptor of the test's process taken, under a real open-files limit (EMFILE)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def _take_every_descriptor(held: list[int]) -> None:
    """Open /dev/null into `held` until the open-files limit refuses (EMFILE)."""
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))


@contextmanager
def every_descriptor_taken() -> Iterator[None]:
    """Every descriptor of this process taken, under an open-files limit lowered to just above
    those it holds; all given back, and the limit restored, after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
        with pytest.raises(OSError, match="Too many open files"):
            _take_every_descriptor(held)
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
