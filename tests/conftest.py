"""Session-wide test set-up (a broker kafka.sh starts dies with the session; Hypothesis's profiles
when the session has fuzz tests) and shared fixtures.

The Hypothesis profiles are registered when tests/fuzz.py is first imported, which every fuzz test
does before its @given reads them; a session without fuzz tests imports neither it nor Hypothesis.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

import pytest

HYPOTHESIS_PLUGIN = "hypothesispytest"  # its pytest11 entry point


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Every broker the session starts through kafka.sh (the session's, a test's own, a cluster's)
    # is stopped once this process is gone, however it ends: a SIGKILLed session or a CI job's
    # timeout left it holding its port and data dir for the next run. Set, not defaulted: a
    # session started by a test's session inherits that one's pid.
    os.environ["KAFKA_STOP_WITH"] = str(os.getpid())
    # `--hypothesis-profile=long` names one of our profiles: they must exist before Hypothesis's
    # plugin loads it, which is before any test module is imported.
    if config.getoption("--hypothesis-profile", default=None):
        import tests.fuzz  # noqa: F401


def pytest_collection_finish(session: pytest.Session) -> None:
    # A Hypothesis test that never imported tests.fuzz would run Hypothesis's defaults, silently.
    if "tests.fuzz" not in sys.modules and any(
        getattr(getattr(item, "obj", None), "is_hypothesis_test", False) for item in session.items
    ):
        raise pytest.UsageError("a Hypothesis test must import tests.fuzz (its profiles)")
    # No Hypothesis test here, yet Hypothesis's plugin would import all of Hypothesis for its
    # terminal summary (pytest rewrites its every module, again each run without .pyc files),
    # after the tests, when a late parse can meet CPython 3.11's AST recursion-depth bug.
    plugins = session.config.pluginmanager
    if "hypothesis" not in sys.modules and plugins.has_plugin(HYPOTHESIS_PLUGIN):
        plugins.unregister(name=HYPOTHESIS_PLUGIN)


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The root logger put back after every test: a handler a test configured writes to that
    test's captured stderr, closed after it (a later thread's log line then fails noisily).
    And Python's own hooks, which JSON logging takes over (bridge.logsetup.configure)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks


@pytest.fixture
def stop_dispositions() -> Iterator[None]:
    """Restore this process's stop signals' dispositions after the test changed them."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.fixture
def as_pid_1(stop_dispositions: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process taken for a container's PID 1 (bridge/stopsignals.py), SIGTERM and SIGHUP
    at their default dispositions, as there at its start."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    monkeypatch.setattr(os, "getpid", lambda: 1)


@pytest.fixture(autouse=True)
def no_proxy_variables(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variable of the developer's (HTTPS_PROXY on a corporate laptop) unless the test
    sets its own (`proxied_env`): the tests' servers are this machine's, reached direct."""
    from tests.environ import proxied_env

    if request.node.get_closest_marker("developer_proxy") is None:
        proxied_env(monkeypatch)


@pytest.fixture(autouse=True)
def fresh_log_throttles() -> None:
    """Each test sees the first line of a kind, whatever an earlier test logged within 10 s."""
    from bridge import logthrottle

    logthrottle.forget_all()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's one broker, tests/integration's and tests/deploy's alike (session_broker)."""
    # Here, not in each folder's conftest: a fixture defined in two is two fixtures, and a bare
    # `pytest` started a broker for each. Imported late: a unit session needs no broker helpers.
    from tests.integration.conftest import session_broker

    with session_broker(tmp_path_factory) as bootstrap:
        yield bootstrap
