"""Descriptors for tests: every one of the process taken (EMFILE), one of a file with no name
holding given bytes, one not open."""

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


def unnamed_file_holding(content: bytes) -> int:
    """A descriptor of a file with no name holding `content`, its offset at the end."""
    descriptor = os.memfd_create("test")
    os.write(descriptor, content)
    return descriptor


def not_open() -> int:
    """A descriptor number this process has not open (just closed: nothing took it since)."""
    descriptor = os.open(os.devnull, os.O_RDONLY)
    os.close(descriptor)
    return descriptor
