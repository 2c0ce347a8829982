"""What the parent tells a worker process, through one environment variable of its own, files
in the pod's runtime directory, and the `.env` variables on an inherited descriptor."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

# Which stages a process runs: both (the default, and every worker unless the dedup stage has a
# process of its own, BRIDGE_DEDUP__OWN_PROCESS), or one of them.
Stages = Literal["both", "ingest", "dedup"]

# Not BRIDGE_*: it is no setting, and `unknown_variables` would warn about it.
ENV = "PINECALL_BRIDGE_WORKER"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRole:
    """Worker `index` of `count`; `restarts`: how often the parent restarted this one before."""

    index: int
    count: int
    runtime_dir: Path
    parent_pid: int
    restarts: int = 0
    # The pod's last worker runs the dedup stage alone, the others only the ingest stage.
    dedup_process: bool = False
    # The descriptor, inherited, of the `.env` variables the parent read (`dotenv_descriptor`).
    dotenv_fd: int | None = None

    @property
    def stages(self) -> Stages:
        """The stages this worker runs."""
        return stages_of(self.index, self.count, self.dedup_process)

    @property
    def serving(self) -> list[str]:
        """The `worker` labels of the workers serving the port: theirs is the pod's readiness."""
        return [
            str(i)
            for i in range(self.count)
            if stages_of(i, self.count, self.dedup_process) != "dedup"
        ]

    def socket(self, index: int) -> Path:
        """The unix socket on which worker `index` serves its own probes and metrics."""
        return self.runtime_dir / f"worker-{index}.sock"

    @property
    def stop_by_file(self) -> Path:
        """Where the parent writes the pod's stop deadline at its first stop signal."""
        return stop_by_file(self.runtime_dir)

    @property
    def sockets(self) -> dict[str, Path]:
        """Every worker's socket, by the `worker` label value."""
        return {str(i): self.socket(i) for i in range(self.count)}

    def env(self) -> dict[str, str]:
        fields = asdict(self)
        fields["runtime_dir"] = str(self.runtime_dir)
        return {ENV: json.dumps(fields)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        """The role of this process, or None when it is no worker (the usual, single process)."""
        raw = environ.get(ENV)
        if not raw:
            return None
        fields = json.loads(raw)
        dotenv_fd = fields.get("dotenv_fd")
        return cls(
            index=int(fields["index"]),
            count=int(fields["count"]),
            runtime_dir=Path(fields["runtime_dir"]),
            parent_pid=int(fields["parent_pid"]),
            restarts=int(fields["restarts"]),
            dedup_process=bool(fields["dedup_process"]),
            dotenv_fd=None if dotenv_fd is None else int(dotenv_fd),
        )


def stages_of(index: int, count: int, dedup_process: bool) -> Stages:
    """What worker `index` of `count` runs: with a dedup process, it is the last one."""
    if not dedup_process:
        return "both"
    return "dedup" if index == count - 1 else "ingest"


# They may be secrets: kept out of the workers' environment (which /proc shows) and off every
# file system, where a supervisor killed by SIGKILL would leave them. Linux only, as pods are.
def dotenv_descriptor(dotenv: Mapping[str, str | None]) -> int:
    """A descriptor of the parent's `.env` variables for one worker, on a file with no name."""
    descriptor = os.memfd_create("pinecall-bridge-dotenv", os.MFD_CLOEXEC)
    try:
        with open(descriptor, "wb", closefd=False) as file:  # written whole, however long
            file.write(json.dumps(dict(dotenv)).encode())
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


# A worker's exit when it cannot read the `.env` variables its supervisor handed it: not 1 (a
# crash's traceback) nor 2 (a configuration the operator gave), so the supervisor's log says it.
EXIT_NO_DOTENV = 3


class DotenvFileError(Exception):
    """The descriptor `dotenv_descriptor` made is missing or damaged; the message says why."""


def read_dotenv(descriptor: int | None) -> dict[str, str | None]:
    """The `.env` variables on `descriptor` (`dotenv_descriptor`), which is closed: what a
    worker's settings are read with."""
    if descriptor is None:
        raise DotenvFileError("the .env variables its supervisor read: no descriptor in its role")
    what = f"descriptor {descriptor} (the .env variables its supervisor read)"
    try:
        dotenv = json.loads(_read_all(descriptor).decode())
    except OSError as exc:
        raise DotenvFileError(f"{what} cannot be read: {exc.strerror}") from None
    except ValueError:  # UnicodeDecodeError is one too
        raise DotenvFileError(f"{what} is not JSON") from None
    # JSON's keys are always strings: only the values need a look.
    if not isinstance(dotenv, dict) or not all(
        isinstance(value, str | None) for value in dotenv.values()
    ):
        raise DotenvFileError(f"{what} is not a JSON object of names to strings or null")
    return dotenv


def _read_all(descriptor: int) -> bytes:
    """Everything on `descriptor` from its start (where its writer left the offset is no matter)."""
    read = bytearray()
    try:
        while chunk := os.pread(descriptor, 1 << 16, len(read)):
            read += chunk
        return bytes(read)
    finally:
        with contextlib.suppress(OSError):  # not open at all: pread said so already
            os.close(descriptor)


# A float's repr is at most 24 characters.
MAX_STOP_BY_BYTES = 64


def stop_by_file(runtime_dir: Path) -> Path:
    return runtime_dir / "stop-by"


def write_stop_by(path: Path, deadline: float) -> None:
    """Write `deadline` (time.monotonic seconds) whole, or not at all: a reader never sees half."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(repr(deadline))
    os.replace(temporary, path)


def read_stop_by(path: Path) -> float | None:
    """The pod's stop deadline, if the parent has set one.

    time.monotonic is CLOCK_MONOTONIC, one clock for every process of the host: the parent's
    deadline is the worker's too.
    """
    try:
        with path.open("rb") as file:
            text = file.read(MAX_STOP_BY_BYTES + 1)
        if len(text) > MAX_STOP_BY_BYTES:
            # Only ever a float's repr: anything longer is not the parent's deadline.
            log.error(
                "the stop deadline file is too large: stopping without its deadline",
                extra={"path": str(path), "max_bytes": MAX_STOP_BY_BYTES},
            )
            return None
        deadline = float(text)
    except (OSError, ValueError):
        return None
    return deadline if math.isfinite(deadline) else None
