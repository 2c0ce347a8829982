"""tools/kafka: jars.lock matches pom.xml, and fetch_jars.py keeps only jars with the pinned sum."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.sockets import refusing_address

KAFKA_TOOLS = Path(__file__).resolve().parents[3] / "tools" / "kafka"
JAR = b"PK\x03\x04 not really a jar, but bytes with a known sum"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Maven-layout repository served over real HTTP, holding org.example:demo:1.0."""
    root = tmp_path / "m2"
    jar = root / "org" / "example" / "demo" / "1.0" / "demo-1.0.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(JAR)
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", tmp_path
    finally:
        server.shutdown()
        server.server_close()


def fetch(url: str, lock: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(KAFKA_TOOLS / "fetch_jars.py"), str(lock), str(dest)],
        env={**os.environ, "MAVEN_REPO_URL": url},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_a_jar_with_the_pinned_sum_is_kept(repo: tuple[str, Path]) -> None:
    url, tmp = repo
    lock = tmp / "jars.lock"
    lock.write_text(f"# a comment\norg.example:demo:1.0 sha512:{hashlib.sha512(JAR).hexdigest()}\n")
    done = fetch(url, lock, tmp / "lib")
    assert done.returncode == 0, done.stderr
    assert (tmp / "lib" / "demo-1.0.jar").read_bytes() == JAR


def test_a_jar_with_another_sum_is_refused_in_one_line(repo: tuple[str, Path]) -> None:
    url, tmp = repo
    lock = tmp / "jars.lock"
    lock.write_text(f"org.example:demo:1.0 sha512:{hashlib.sha512(b'other').hexdigest()}\n")
    done = fetch(url, lock, tmp / "lib")
    assert done.returncode == 1
    assert done.stderr.startswith("fetch_jars: refusing org.example:demo:1.0: the sha512 of ")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list((tmp / "lib").iterdir()) == []  # neither the jar nor a partial download


def test_an_unreachable_repository_fails_in_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "jars.lock"
    lock.write_text(f"org.example:demo:1.0 sha512:{hashlib.sha512(JAR).hexdigest()}\n")
    done = fetch(f"http://{refusing_address()}/", lock, tmp_path / "lib")
    assert done.returncode == 1
    assert done.stderr.startswith(f"fetch_jars: cannot download http://{refusing_address()}/org/")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# The default broker's pom and lock, and each other version's (KAFKA_VERSION) in versions/.
LOCKED = [KAFKA_TOOLS, *sorted(p.parent for p in (KAFKA_TOOLS / "versions").glob("*/pom.xml"))]


@pytest.mark.parametrize("home", LOCKED, ids=lambda p: p.name)
def test_the_lock_file_was_generated_from_the_current_pom(home: Path) -> None:
    pom, lock = home / "pom.xml", home / "jars.lock"
    text = lock.read_text()
    recorded = re.search(r"^# pom\.xml sha256: ([0-9a-f]{64})$", text, re.MULTILINE)
    assert recorded, f"{lock} has no pom.xml sha256 line"
    assert recorded[1] == hashlib.sha256(pom.read_bytes()).hexdigest(), (
        f"{pom} changed since its jars.lock was generated: run tools/kafka/lock.py"
        + ("" if home == KAFKA_TOOLS else f" {home.name}")
    )
    kafka = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    assert kafka
    assert re.search(rf"^org\.apache\.kafka:kafka_2\.13:{re.escape(kafka[1])} sha512:", text, re.M)
    if home != KAFKA_TOOLS:
        # kafka.sh selects the directory by KAFKA_VERSION: its name must be the version it pins.
        assert kafka[1] == home.name


def test_readme_names_every_other_version() -> None:
    readme = (KAFKA_TOOLS.parents[1] / "README.md").read_text()
    assert LOCKED[1:], "no versions/*/pom.xml found"
    for home in LOCKED[1:]:
        assert f"KAFKA_VERSION={home.name}" in readme, f"README does not say how to test {home}"


def test_an_unpinned_kafka_version_fails_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(KAFKA_TOOLS / "kafka.sh"), "fetch"],
        env={**os.environ, "KAFKA_VERSION": "2.8.0", "KAFKA_HOME_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert "KAFKA_VERSION=2.8.0: no " in done.stderr, done.stderr
    assert "3.9.2" in done.stderr, done.stderr  # the versions there are
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_fetch_killed_midway_leaves_no_partial_jars_behind(tmp_path: Path) -> None:
    # A Ctrl-C or a CI timeout during the first fetch: its temporary dir was kept for good.
    locked = (KAFKA_TOOLS / "jars.lock").read_text().splitlines(keepends=True)
    lock_hash = hashlib.sha256("".join(x for x in locked if not x.startswith("#")).encode())
    stale = tmp_path / f"{lock_hash.hexdigest()[:16]}.tmp.99999" / "lib"
    stale.mkdir(parents=True)
    (stale / "partial.jar").write_bytes(JAR)
    done = subprocess.run(
        [str(KAFKA_TOOLS / "kafka.sh"), "fetch"],
        env={
            **os.environ,
            "KAFKA_HOME_DIR": str(tmp_path),
            "MAVEN_REPO_URL": f"http://{refusing_address()}/",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr  # this fetch fails too, and removes its own
    assert sorted(x.name for x in tmp_path.iterdir()) == [".fetch.lock"]
