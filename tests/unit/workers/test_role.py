"""What the parent tells a worker: one environment variable, outside the BRIDGE_ settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.config import unknown_variables
from bridge.workers.role import (
    MAX_STOP_BY_BYTES,
    DotenvFileError,
    WorkerRole,
    dotenv_descriptor,
    read_dotenv,
    read_stop_by,
    stop_by_file,
    write_stop_by,
)
from tests.descriptors import not_open, unnamed_file_holding


def test_the_role_travels_through_the_environment() -> None:
    role = WorkerRole(
        index=1,
        count=3,
        runtime_dir=Path("/tmp/x"),
        parent_pid=42,
        restarts=2,
        dedup_process=True,
        dotenv_fd=7,
    )
    env = role.env()
    assert WorkerRole.from_env(env) == role
    assert unknown_variables(env) == []  # no warning about a variable no setting reads


def roles(count: int, dedup_process: bool) -> list[WorkerRole]:
    return [
        WorkerRole(i, count, Path("/tmp/x"), parent_pid=42, dedup_process=dedup_process)
        for i in range(count)
    ]


def test_with_a_dedup_process_the_last_worker_runs_the_stage_the_others_serve_the_port() -> None:
    assert [r.stages for r in roles(3, dedup_process=True)] == ["ingest", "ingest", "dedup"]
    assert {tuple(r.serving) for r in roles(3, dedup_process=True)} == {("0", "1")}
    assert [r.stages for r in roles(2, dedup_process=False)] == ["both", "both"]
    assert roles(2, dedup_process=False)[1].serving == ["0", "1"]


def test_no_variable_is_no_worker() -> None:
    assert WorkerRole.from_env({}) is None


def test_every_worker_has_its_own_socket_in_the_runtime_dir() -> None:
    role = WorkerRole(index=0, count=2, runtime_dir=Path("/run/b"), parent_pid=1)
    assert role.sockets == {"0": Path("/run/b/worker-0.sock"), "1": Path("/run/b/worker-1.sock")}


def test_the_stop_deadline_is_read_as_written_and_only_then(tmp_path: Path) -> None:
    path = stop_by_file(tmp_path)
    assert read_stop_by(path) is None  # no stop yet
    write_stop_by(path, 12345.678)
    assert read_stop_by(path) == 12345.678
    assert [p.name for p in tmp_path.iterdir()] == ["stop-by"]  # the temporary file renamed
    for garbage in ("", "soon", "nan", "inf"):
        path.write_text(garbage)
        assert read_stop_by(path) is None, garbage


def test_a_stop_deadline_file_too_large_is_not_read_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = stop_by_file(tmp_path)
    # A float's text, were it read whole: only the cap and one byte more are read.
    path.write_text("1" + "0" * MAX_STOP_BY_BYTES + ".0")
    assert read_stop_by(path) is None
    assert "the stop deadline file is too large" in caplog.text
    path.write_text("1" * MAX_STOP_BY_BYTES)
    assert read_stop_by(path) == float("1" * MAX_STOP_BY_BYTES)


def test_the_dotenv_handed_to_workers_is_read_as_written_and_its_descriptor_closed() -> None:
    written = {"bridge_http__port": "7001", "bridge_log__level": None}
    descriptor = dotenv_descriptor(written)
    assert read_dotenv(descriptor) == written
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(descriptor)


def test_the_dotenv_handed_to_workers_is_on_a_file_with_no_name() -> None:
    # They may be secrets: a named file outlived a supervisor killed by SIGKILL.
    descriptor = dotenv_descriptor({"bridge_webhook__secrets": "s3cr3t"})
    try:
        assert os.readlink(f"/proc/self/fd/{descriptor}").startswith("/memfd:")
        assert os.fstat(descriptor).st_nlink == 0
    finally:
        os.close(descriptor)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot be read: Bad file descriptor"),
        (b"", "is not JSON"),
        (b'{"bridge_http__port": "70', "is not JSON"),
        (b"\xff\xfe{}", "is not JSON"),
        (b'["bridge_http__port"]', "is not a JSON object of names to strings or null"),
        (b'{"bridge_http__port": 7001}', "is not a JSON object of names to strings or null"),
    ],
)
def test_a_bad_or_damaged_dotenv_descriptor_is_named_with_why(
    content: bytes | None, why: str
) -> None:
    descriptor = not_open() if content is None else unnamed_file_holding(content)
    with pytest.raises(DotenvFileError) as raised:
        read_dotenv(descriptor)
    assert (
        str(raised.value)
        == f"descriptor {descriptor} (the .env variables its supervisor read) {why}"
    )
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(descriptor)  # closed, read or not


def test_a_worker_role_without_a_dotenv_descriptor_is_named() -> None:
    with pytest.raises(DotenvFileError, match="no descriptor in its role"):
        read_dotenv(None)
