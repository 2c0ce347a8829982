"""What the parent tells a worker: one environment variable, outside the BRIDGE_ settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import unknown_variables
from bridge.workers.role import WorkerRole


def test_the_role_travels_through_the_environment() -> None:
    role = WorkerRole(
        index=1, count=3, runtime_dir=Path("/tmp/x"), parent_pid=42, restarts=2, stages="dedup"
    )
    env = role.env()
    assert WorkerRole.from_env(env) == role
    assert unknown_variables(env) == []  # no warning about a variable no setting reads


def test_a_role_naming_unknown_stages_is_refused() -> None:
    env = WorkerRole(index=0, count=1, runtime_dir=Path("/tmp/x"), parent_pid=42).env()
    env = {key: value.replace('"both"', '"all"') for key, value in env.items()}
    with pytest.raises(ValueError, match="unknown stages 'all'"):
        WorkerRole.from_env(env)


def test_no_variable_is_no_worker() -> None:
    assert WorkerRole.from_env({}) is None


def test_every_worker_has_its_own_socket_in_the_runtime_dir() -> None:
    role = WorkerRole(index=0, count=2, runtime_dir=Path("/run/b"), parent_pid=1)
    assert role.sockets == {"0": Path("/run/b/worker-0.sock"), "1": Path("/run/b/worker-1.sock")}
