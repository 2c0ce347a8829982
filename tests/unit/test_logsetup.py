import logging

import pytest

from bridge import jsoncodec, logsetup


def test_json_lines_carry_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("INFO", "json")
    logging.getLogger("bridge.test").info("hello", extra={"topic": "t", "count": 3})
    logging.getLogger("bridge.test").debug("hidden")
    [line] = capsys.readouterr().err.splitlines()
    entry = jsoncodec.loads(line)
    assert entry["msg"] == "hello"
    assert (entry["level"], entry["logger"], entry["topic"], entry["count"]) == (
        "info",
        "bridge.test",
        "t",
        3,
    )
    assert entry["ts"].endswith("Z")


def test_json_exceptions(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("INFO", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    entry = jsoncodec.loads(capsys.readouterr().err)
    assert "ValueError: boom" in entry["exc"]


def test_console_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("WARNING", "console")
    logging.getLogger("bridge.x").warning("careful", extra={"retry_in_s": 2})
    logging.getLogger("bridge.x").info("not shown")
    err = capsys.readouterr().err
    assert "WARNING" in err
    assert "careful retry_in_s=2" in err
    assert "not shown" not in err


def test_aiokafka_noise_is_held_back() -> None:
    logsetup.configure("DEBUG", "json")
    assert logging.getLogger("aiokafka").level == logging.WARNING


def test_transient_missing_topic_error_is_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("INFO", "json")
    logsetup.configure("INFO", "json")  # idempotent: one filter, not two
    cluster = logging.getLogger("aiokafka.cluster")
    assert len(cluster.filters) == 1
    cluster.error("Topic %s not found in cluster metadata", "pinecall.events")
    cluster.error("Something else broke")
    lines = capsys.readouterr().err.splitlines()
    assert [jsoncodec.loads(line)["msg"] for line in lines] == ["Something else broke"]
