"""The Dockerfile: hadolint-clean, built the way its users rely on, and its install path works.

No Docker engine here, so the image's install path is replayed on the host: the same build
context, a wheel, a fresh virtualenv with the dependencies the Dockerfile installs, then the
image's command (`pinecall-bridge`) run from there.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.tools import REPO, find_tool, run

DOCKERFILE = REPO / "Dockerfile"
CONTEXT = {"pyproject.toml", "requirements.lock", "README.md", "bridge/"}  # the builder's COPYs
LOCK = REPO / "requirements.lock"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def test_hadolint_has_nothing_to_say() -> None:
    done = run(
        find_tool("hadolint"), "--no-color", "--failure-threshold", "style", DOCKERFILE, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip(), done.stdout
    for line in DOCKERFILE.read_text().splitlines():
        if "hadolint ignore" in line:  # an ignored rule must say why, on the same line
            assert re.search(r"ignore=\S+\s+\S", line), f"unexplained: {line}"


def test_runtime_stage_is_slim_non_root_and_shell_free() -> None:
    builder, runtime = stages()
    assert "AS builder" in builder[0][1]
    assert "AS runtime" in runtime[0][1]
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE.read_text())
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "runtime gets only the virtualenv"
    assert not [rest for word, rest in runtime if word == "RUN"], (
        "nothing runs in the runtime stage"
    )
    user = [rest for word, rest in runtime if word == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, so Kubernetes can check runAsNonRoot"
    assert gid.isdigit()
    assert int(uid) >= 10000, "non-root, outside the host's usual ranges"
    assert ("EXPOSE", "8080") in runtime
    assert ("EXPOSE", "8081") in runtime, "the chart's admin port"
    assert ("ENTRYPOINT", '["pinecall-bridge"]') in runtime, "exec form: no shell"
    assert ("CMD", '["run"]') in runtime


def test_the_dependency_layer_depends_on_the_lock_alone() -> None:
    # Editing pyproject.toml, README.md or the source must not reinstall every dependency.
    builder = stages()[0]
    order = [f"{word} {rest}" for word, rest in builder]
    deps = next(i for i, line in enumerate(order) if "-r requirements.lock" in line)
    assert "--require-hashes" in order[deps], "every file of every pinned version checked"
    copied_before = [
        name for word, rest in builder[:deps] if word == "COPY" for name in rest.split()[:-1]
    ]
    assert copied_before == ["requirements.lock"]
    copied = {name for word, rest in builder if word == "COPY" for name in rest.split()[:-1]}
    assert copied == CONTEXT


def pins() -> dict[str, tuple[str, list[str], str]]:
    """The lock's entries: name -> (version, hashes, marker)."""
    entries = re.findall(
        r"^([A-Za-z0-9_.-]+)==(\S+)(?: ; ([^\\\n]+?))? \\\n((?:\s+--hash=\S+(?: \\)?\n)+)",
        LOCK.read_text(),
        re.MULTILINE,
    )
    return {
        canonicalize_name(name): (version, re.findall(r"--hash=(\S+)", hashes), marker)
        for name, version, marker, hashes in entries
    }


def test_the_lock_pins_every_dependency_in_its_range_with_hashes() -> None:
    # `make lock` after a change of pyproject.toml's dependencies; a stale lock fails here.
    pinned = pins()
    assert pinned, "requirements.lock has no pins"
    assert all(hashes for _, hashes, _ in pinned.values())
    assert all(h.startswith("sha256:") for _, hashes, _ in pinned.values() for h in hashes)
    pinned_lines = len(re.findall(r"^[A-Za-z0-9_.-]+==", LOCK.read_text(), re.MULTILINE))
    assert len(pinned) == pinned_lines, "every pin parsed"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in deps:
        wanted = Requirement(text)
        name = canonicalize_name(wanted.name)
        assert name in pinned, f"{wanted.name} is not in requirements.lock: run make lock"
        version = pinned[name][0]
        assert wanted.specifier.contains(version), (
            f"requirements.lock pins {wanted.name}=={version}, outside {wanted.specifier}:"
            " run make lock"
        )


def test_dockerignore_lets_in_only_the_build_context() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny everything first"
    assert {line[1:] for line in lines if line.startswith("!")} == CONTEXT


def test_the_tests_run_the_versions_the_image_ships() -> None:
    # `make venv` installs the lock first and the dev tools within it (pip -c).
    for name, (version, _, marker) in pins().items():
        if marker and not Marker(marker).evaluate():
            continue
        assert importlib.metadata.version(name) == version, (
            f"{name} {importlib.metadata.version(name)} is installed, the lock pins {version}:"
            " run make venv"
        )


def outside(*prefixes: str) -> dict[str, str]:
    """The caller's environment as the image sees it: no PYTHON* variable (PYTHONPATH put the
    repo's `bridge` before the wheel's; PYTHONHOME, another interpreter's library), nor these."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", *prefixes))}


@pytest.fixture(scope="module", autouse=True)
def repo_on_pythonpath() -> Iterator[None]:
    """These tests run as a caller's `PYTHONPATH=. pytest` does: the wheel must be what runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        yield


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the dependencies and the wheel, exactly as the builder stage."""
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "context"
    context.mkdir()
    for name in CONTEXT:
        source = REPO / name.rstrip("/")
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, context / name)
    env = outside("PIP_", "BRIDGE_")
    env |= {"PIP_CACHE_DIR": str(REPO / ".cache" / "pip"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", venv, env=env)
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "--quiet"]
    run(*pip, "install", "--require-hashes", "-r", context / "requirements.lock", env=env)
    run(*pip, "wheel", "--no-deps", "--wheel-dir", tmp / "wheels", context, env=env)
    (wheel,) = (tmp / "wheels").glob("pinecall_bridge-*.whl")
    run(*pip, "install", "--no-deps", wheel, env=env)
    run(*pip, "check", env=env)  # the wheel's requirements are exactly what the deps layer has
    return venv


def bridge_command(venv: Path, *args: str, **env: str) -> tuple[int, str]:
    # An empty working directory and no BRIDGE_* from the caller: like the container.
    cwd = venv.parent / "workdir"
    cwd.mkdir(exist_ok=True)
    done = run(
        venv / "bin" / "pinecall-bridge", *args, check=False, cwd=cwd, env=outside("BRIDGE_") | env
    )
    return done.returncode, done.stdout + done.stderr


# Building the image's virtualenv (pip from the lock, the wheel) is the first of these tests'
# setup: minutes on a busy machine, not a hang.
INSTALL_TIMEOUT = pytest.mark.timeout(600)


@INSTALL_TIMEOUT
def test_the_wheel_installs_the_command_and_its_data(installed: Path) -> None:
    code, out = bridge_command(installed, "--help")
    assert code == 0, out
    assert "run" in out, out
    assert "check" in out, out
    where = run(
        installed / "bin" / "python",
        "-c",
        "import bridge, importlib.resources as r; print(bridge.__file__);"
        " print(r.files('bridge').joinpath('schema/pinecall-cloudevent.schema.json').is_file());"
        " print(r.files('bridge').joinpath('schema/asyncapi.yaml').is_file())",
        cwd=installed.parent,
        env=outside(),
    ).stdout.split()
    assert Path(where[0]).is_relative_to(installed), "imported from the virtualenv, not the repo"
    assert where[1] == "True", "the CloudEvent JSON schema is packaged"
    assert where[2] == "True", "the AsyncAPI document is packaged"


@INSTALL_TIMEOUT
def test_check_validates_configuration_from_the_environment(installed: Path) -> None:
    code, out = bridge_command(
        installed,
        "check",
        BRIDGE_WEBHOOK__SECRETS="s3cret",
        BRIDGE_KAFKA__BOOTSTRAP_SERVERS="kafka-0.kafka:9092,kafka-1.kafka:9092",
    )
    assert code == 0, out
    # The settings as JSON, then (stderr, merged here) the record-limits line.
    effective, _ = json.JSONDecoder().raw_decode(out)
    assert "record limits:" in out
    assert effective["kafka"]["bootstrap_servers"] == ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]
    assert "s3cret" not in out, "secrets are masked"
    code, out = bridge_command(installed, "check")
    assert code == 2, out
    assert "BRIDGE_WEBHOOK__SECRETS" in out, out
