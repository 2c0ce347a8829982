"""The Hypothesis profiles (tests/fuzz.py) load only in a session that has fuzz tests, and then
the one asked for: `fast` by default, `long` with FUZZ=long or --hypothesis-profile=long."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A pytest session in a process of its own that reports, at its very end, whether tests.fuzz and
# Hypothesis were imported, and the examples each collected Hypothesis test was set to run.
PROBE = """
import sys
import pytest

class Probe:
    examples = []

    def pytest_collection_finish(self, session):
        self.examples = sorted({
            item.obj._hypothesis_internal_use_settings.max_examples
            for item in session.items
            if getattr(item.obj, "is_hypothesis_test", False)
        })

    def pytest_unconfigure(self):
        seen = ("tests.fuzz" in sys.modules, "hypothesis" in sys.modules, self.examples)
        sys.__stdout__.write("PROBE %s %s %s\\n" % seen)

sys.exit(pytest.main(sys.argv[1:], plugins=[Probe()]))
"""
NO_FUZZ = "tests/unit/test_timespec.py"
FUZZ = "tests/unit/test_jsoncodec.py"


def session(*args: str, fuzz: str = "") -> str:
    env = {**os.environ, "FUZZ": fuzz}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    return line.removeprefix("PROBE ")


def test_a_session_without_fuzz_tests_never_imports_the_fuzzing_or_hypothesis() -> None:
    assert session(NO_FUZZ) == "False False []"  # its tests run, and the summary is written


@pytest.mark.parametrize(
    ("args", "fuzz", "examples"),
    [
        ((FUZZ,), "", "[40]"),
        ((FUZZ,), "long", "[1000]"),
        (("--hypothesis-profile=long", FUZZ), "", "[1000]"),
    ],
)
def test_fuzz_tests_run_the_profile_asked_for(
    args: tuple[str, ...], fuzz: str, examples: str
) -> None:
    assert session("--collect-only", *args, fuzz=fuzz).endswith(f" {examples}")
