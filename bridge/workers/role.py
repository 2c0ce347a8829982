"""What the parent tells a worker process, through one environment variable of its own."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, cast, get_args

# Which stages a process runs: both (the default, and every worker unless the dedup stage has a
# process of its own, BRIDGE_DEDUP__OWN_PROCESS), or one of them.
Stages = Literal["both", "ingest", "dedup"]

# Not BRIDGE_*: it is no setting, and `unknown_variables` would warn about it.
ENV = "PINECALL_BRIDGE_WORKER"


@dataclass(frozen=True)
class WorkerRole:
    """Worker `index` of `count`; `restarts`: how often the parent restarted this one before."""

    index: int
    count: int
    runtime_dir: Path
    parent_pid: int
    restarts: int = 0
    stages: Stages = "both"

    def socket(self, index: int) -> Path:
        """The unix socket on which worker `index` serves its own probes and metrics."""
        return self.runtime_dir / f"worker-{index}.sock"

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
        return cls(
            index=int(fields["index"]),
            count=int(fields["count"]),
            runtime_dir=Path(fields["runtime_dir"]),
            parent_pid=int(fields["parent_pid"]),
            restarts=int(fields["restarts"]),
            stages=_stages(fields["stages"]),
        )


def _stages(value: object) -> Stages:
    if value not in get_args(Stages):
        raise ValueError(f"unknown stages {value!r} in {ENV}")
    return cast(Stages, value)
