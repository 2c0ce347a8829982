"""A session of its own for tests/integration/test_session_broker.py (not collected by itself).

Its one test takes the session's broker, writes its port to $SESSION_PROBE_PORT_FILE and, when
$SESSION_PROBE_END is `ctrl-c`, interrupts its session as Ctrl-C does; `hang`, waits to be killed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.integration import conftest
from tests.integration.conftest import broker_answers

_kafka_sh = conftest.kafka_sh


def _never_9092(command: str, port: int, *args: Any, **kwargs: Any) -> None:
    # Checked before kafka.sh runs: a failing fixture must not start the shared broker to show it.
    assert port != 9092, f"the session would {command} the broker on 9092"
    _kafka_sh(command, port, *args, **kwargs)


conftest.kafka_sh = _never_9092


def test_the_sessions_broker(kafka_bootstrap: str) -> None:
    port = int(kafka_bootstrap.rsplit(":", 1)[1])
    Path(os.environ["SESSION_PROBE_PORT_FILE"]).write_text(str(port))
    assert broker_answers(port)
    if os.environ.get("SESSION_PROBE_END") == "ctrl-c":
        # A job started in the background (`make test &`, `nohup`) inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt for it: the session passed, uninterrupted.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGINT)
    elif os.environ.get("SESSION_PROBE_END") == "hang":
        time.sleep(3600)  # the killed session's end: no teardown runs
