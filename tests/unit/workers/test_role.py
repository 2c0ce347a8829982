"""What the parent tells a worker: one environment variable, outside the BRIDGE_ settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import unknown_variables
from bridge.workers.role import (
    MAX_STOP_BY_BYTES,
    DotenvFileError,
    WorkerRole,
    dotenv_file,
    read_dotenv,
    read_stop_by,
    stop_by_file,
    write_dotenv,
    write_stop_by,
)


def test_the_role_travels_through_the_environment() -> None:
    role = WorkerRole(
        index=1, count=3, runtime_dir=Path("/tmp/x"), parent_pid=42, restarts=2, dedup_process=True
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


def test_the_dotenv_handed_to_workers_is_read_as_written(tmp_path: Path) -> None:
    path = dotenv_file(tmp_path)
    written = {"bridge_http__port": "7001", "bridge_log__level": None}
    write_dotenv(path, written)
    assert read_dotenv(path) == written


def test_the_dotenv_file_is_replaced_whole_and_kept_private(tmp_path: Path) -> None:
    path = dotenv_file(tmp_path)
    path.write_text("{")  # damaged, or a previous write's
    path.with_name(path.name + ".tmp").write_text("left by a write cut short")
    written = {"bridge_http__port": "7001"}
    write_dotenv(path, written)
    assert read_dotenv(path) == written
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot be read: No such file or directory"),
        (b"", "is not JSON"),
        (b'{"bridge_http__port": "70', "is not JSON"),
        (b"\xff\xfe{}", "is not JSON"),
        (b'["bridge_http__port"]', "is not a JSON object of names to strings or null"),
        (b'{"bridge_http__port": 7001}', "is not a JSON object of names to strings or null"),
    ],
)
def test_a_missing_or_damaged_dotenv_file_is_named_with_why(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    path = dotenv_file(tmp_path)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DotenvFileError) as raised:
        read_dotenv(path)
    assert str(raised.value) == f"{path} (the .env variables its supervisor read) {why}"
