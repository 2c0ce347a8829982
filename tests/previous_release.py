"""The previous release (PREVIOUS_RELEASE), extracted from this repository's own git history."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.missing import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
# The last commit deployed: move it at each release.
PREVIOUS_RELEASE = "934610131fe3745806ebc12dd48c102049139f7f"


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False)


def extract(tree: Path, *paths: str) -> Path:
    """`paths` as of PREVIOUS_RELEASE under `tree`; skipped where the clone lacks its commit."""
    if shutil.which("git") is None:
        skip_or_fail(f"git is not installed: it reads the previous release ({PREVIOUS_RELEASE})")
    repository = git("rev-parse", "--git-dir")
    if repository.returncode != 0:
        # Skipped even in CI: the checkout's depth is the CI's choice, not a tool to install.
        pytest.skip(
            f"{REPO} is no git repository (an export?): the previous release "
            f"({PREVIOUS_RELEASE}) is read from its history; run from a clone. git said: "
            + repository.stderr.decode(errors="replace").strip()
        )
    if git("cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}").returncode != 0:
        shallow = git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true"
        pytest.skip(
            f"the previous release's commit {PREVIOUS_RELEASE} is not in {REPO}'s history"
            + (" (a shallow clone)" if shallow else "")
            + f": fetch it with `git -C {REPO} fetch --unshallow` (or fetch the branch holding it)"
        )
    archive = git("archive", PREVIOUS_RELEASE, *paths)
    assert archive.returncode == 0, archive.stderr.decode(errors="replace")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree
