import ast
import asyncio
import dataclasses
import datetime
import decimal
import enum
import logging
import math
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest
from aiohttp import web

from bridge import connlimit, jsoncodec, logsetup, logthrottle
from tests.descriptors import every_descriptor_taken
from tests.integration.conftest import REPO
from tests.sockets import refusing_address


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


def test_json_fields_json_cannot_hold_are_logged_as_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logsetup.configure("INFO", "json")
    log = logging.getLogger("bridge.test")
    log.info("types", extra={"ids": {"a"}, "raw": b"\xff", "error": ValueError("boom")})
    log.info("surrogate \udcff", extra={"path": "/x\udcfe", "nested": {"k": "\udcfd"}})
    log.info("huge", extra={"n": 2**64})
    err = capsys.readouterr().err
    assert "Logging error" not in err
    types, surrogate, huge = (jsoncodec.loads(line) for line in err.splitlines())
    assert (types["ids"], types["raw"], types["error"]) == (["a"], "b'\\xff'", "ValueError('boom')")
    assert (surrogate["msg"], surrogate["path"]) == ("surrogate \\udcff", "/x\\udcfe")
    assert surrogate["nested"] == "{'k': '\\udcfd'}"
    assert huge["n"] == str(2**64)


def test_console_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("WARNING", "console")
    logging.getLogger("bridge.x").warning("careful", extra={"retry_in_s": 2})
    logging.getLogger("bridge.x").info("not shown")
    err = capsys.readouterr().err
    assert "WARNING" in err
    assert "careful retry_in_s=2" in err
    assert "not shown" not in err


def test_console_lines_cannot_be_forged_by_what_they_echo(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An untrusted call id or type echoed in a WARNING: its newline started a fake line.
    logsetup.configure("WARNING", "console")
    forged = "CA_1\n12:00:00 ERROR   bridge.service: credentials leaked"
    log = logging.getLogger("bridge.x")
    log.warning(f"refused {forged}\r\x1b[2J", extra={"call": forged, "k\nv": "\x00\u2028\t"})
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(
        "refused CA_1\\n12:00:00 ERROR   bridge.service: credentials leaked\\r\\x1b[2J"
        " call=CA_1\\n12:00:00 ERROR   bridge.service: credentials leaked k\\nv=\\x00\\u2028\\t"
    )


def test_console_output_of_ordinary_text_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("WARNING", "console")
    logging.getLogger("bridge.x").warning("café 'x' \\n", extra={"path": "/a b", "n": [1]})
    assert capsys.readouterr().err.endswith("bridge.x: café 'x' \\n path=/a b n=[1]\n")


def test_aiokafka_noise_is_held_back() -> None:
    logsetup.configure("DEBUG", "json")
    assert logging.getLogger("aiokafka").level == logging.WARNING


async def test_debug_logs_no_feed_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    # At DEBUG the websockets library logged the handshake: `> Authorization: Bearer <key>` and
    # `GET /feed?token=...`, then every frame.
    from aiohttp import web
    from websockets.asyncio.client import connect

    logsetup.configure("DEBUG", "json")

    async def feed(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("frame-secret")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/feed", feed)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with connect(
            f"ws://127.0.0.1:{port}/feed?token=token-secret",
            additional_headers={"Authorization": "Bearer key-secret"},
        ) as ws:
            assert await ws.recv() == "frame-secret"
    finally:
        await runner.cleanup()
    logging.getLogger("bridge.x").debug("the bridge's own DEBUG lines are kept")
    err = capsys.readouterr().err
    assert "the bridge's own DEBUG lines are kept" in err
    for secret in ("key-secret", "token-secret", "frame-secret"):
        assert secret not in err
    assert logging.getLogger("websockets").getEffectiveLevel() == logging.INFO


def test_transient_kafka_errors_are_dropped_or_demoted(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("INFO", "json")
    logsetup.configure("INFO", "json")  # idempotent: one filter, not two
    cluster, client = logging.getLogger("aiokafka.cluster"), logging.getLogger("aiokafka")
    assert (len(cluster.filters), len(client.filters)) == (1, 1)
    cluster.error("Topic %s not found in cluster metadata", "pinecall.events")
    cluster.error("Something else broke")
    client.error("Unable connect to node with id %s: %s", 1, "refused")
    client.error("Unable to update metadata from %s", [1])
    client.error("Unexpected error during InitProducerIdRequest: %s", "boom")
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["msg"]) for e in lines] == [
        ("error", "Something else broke"),
        ("warning", "Unable connect to node with id 1: refused"),
        ("warning", "Unable to update metadata from [1]"),
        ("error", "Unexpected error during InitProducerIdRequest: boom"),
    ]


def test_retried_group_coordinator_errors_are_warnings_fatal_ones_stay_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A broker outage logged hundreds of these at ERROR: each coordinator lookup, heartbeat
    # and fetch that failed and was retried.
    from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, NodeNotReadyError

    logsetup.configure("INFO", "json")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    down = NodeNotReadyError("node 1")
    coordinator.error("Group Coordinator Request failed: %s", down)
    coordinator.error("Error sending %s to node %s [%s] -- marking coordinator dead", "H", 1, down)
    coordinator.error("Heartbeat send request failed: %s. Will retry.", down)
    coordinator.error("Heartbeat session expired - marking coordinator dead")
    fetcher.error("Failed fetch messages from %s: %s", 1, down)
    coordinator.error("Group Coordinator Request failed: %s", GroupAuthorizationFailedError("g"))
    coordinator.error("Error sending %s to node %s [%s] -- marking coordinator dead", "H", 1, "x")
    coordinator.error("Heartbeat failed: %r", KafkaError("unexpected"))
    coordinator.error("Unexpected error in coordinator routine")
    levels = [jsoncodec.loads(line)["level"] for line in capsys.readouterr().err.splitlines()]
    assert levels == ["warning"] * 5 + ["error"] * 4


def test_an_error_demoted_to_a_warning_is_not_shown_at_level_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The live demo logs at ERROR: a fresh broker's first coordinator lookup still printed
    # "WARNING aiokafka.consumer.group_coordinator: ..." over its screen.
    from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError

    logsetup.configure("ERROR", "json")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    logging.getLogger("asyncio").error("Exception in callback Sender._fail_all()\nhandle: <H>")
    coordinator.error("Group Coordinator Request failed: %s", GroupAuthorizationFailedError("g"))
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["logger"]) for e in lines] == [
        ("error", "aiokafka.consumer.group_coordinator")
    ], lines


def test_a_new_topics_start_offset_not_found_yet_is_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An ERROR at every first start (`make demo-headless` on a fresh broker): a consumer asked
    # where a partition just created starts before its leader was ready, and asked again.
    from aiokafka import TopicPartition
    from aiokafka.errors import NotLeaderForPartitionError, TopicAuthorizationFailedError

    logsetup.configure("INFO", "json")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    new = NotLeaderForPartitionError(TopicPartition("pinecall.events", 2))
    fetcher.error("Failed fetch offsets from %s: %s", 1, new)
    fetcher.error("Failed fetch offsets from %s: %s", 1, TopicAuthorizationFailedError("t"))
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["msg"].split(":")[0]) for e in lines] == [
        ("warning", "Failed fetch offsets from 1"),
        ("error", "Failed fetch offsets from 1"),  # no right to read it: someone must act
    ]


def test_a_connection_error_without_text_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    # A port that is no Kafka listener times out, TLS to a plaintext listener is reset: both
    # errors' text is empty, and the line ended at its colon.
    logsetup.configure("INFO", "json")
    client = logging.getLogger("aiokafka")
    client.error('Unable connect to "%s:%s": %s', "kafka", 9092, TimeoutError())
    client.error("Unable connect to node with id %s: %s", 1, ConnectionResetError())
    logthrottle.forget_all()  # one broker's lines are thinned: each of these is said here
    client.error('Unable connect to "%s:%s": %s', "kafka", 9092, OSError())
    logthrottle.forget_all()
    client.error('Unable connect to "%s:%s": %s', "kafka", 9092, OSError("Connect call failed"))
    lines = [jsoncodec.loads(line)["msg"] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        'Unable connect to "kafka:9092": TimeoutError: no answer within'
        " BRIDGE_KAFKA__REQUEST_TIMEOUT_MS (is the port a Kafka listener, and does"
        " BRIDGE_KAFKA__SECURITY_PROTOCOL match its TLS or plaintext?)",
        "Unable connect to node with id 1: ConnectionResetError: the listener closed the"
        " connection (does BRIDGE_KAFKA__SECURITY_PROTOCOL match its TLS or plaintext?)",
        'Unable connect to "kafka:9092": OSError',
        'Unable connect to "kafka:9092": Connect call failed',
    ]


def test_a_client_task_dead_of_a_reset_is_aiokafkas_warning_any_other_death_its_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Under the chaos `resets` scenario aiokafka logged its sender's death at ERROR with a
    # traceback beside the bridge's own ERROR (`the Kafka producer cannot send; replacing ...`).
    from aiokafka.errors import KafkaConnectionError

    logsetup.configure("INFO", "json")
    sender = logging.getLogger("aiokafka.producer.sender")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    reset = "unable to perform operation on <TCPTransport>; the handler is closed"
    deaths: list[tuple[logging.Logger, str, Exception]] = [
        (sender, "Unexpected error in sender routine", RuntimeError(reset)),
        (fetcher, "Unexpected error in fetcher routine", KafkaConnectionError("closed")),
        (sender, "Unexpected error in sender routine", ValueError("a bug")),
        (fetcher, "Unexpected error in fetcher routine", RuntimeError("something else")),
    ]
    for logger, msg, death in deaths:
        logthrottle.forget_all()
        try:
            raise death
        except Exception:
            logger.exception(msg)
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["msg"]) for e in lines] == [
        ("warning", "Unexpected error in sender routine"),
        ("warning", "Unexpected error in fetcher routine"),
        ("error", "Unexpected error in sender routine"),
        ("error", "Unexpected error in fetcher routine"),
    ]
    assert all("Traceback" in e["exc"] for e in lines)


class Sender:
    """aiokafka's, as asyncio names its callback: `_fail_all` fails for an idempotent producer."""

    def _fail_all(self) -> None:
        raise AttributeError("'NoneType' object has no attribute 'done'")


async def failing_callbacks(*callbacks: Callable[[], None]) -> None:
    """Logging configured as the bridge's, `callbacks` run on the loop: each failure logged."""
    logsetup.configure("INFO", "json")
    loop = asyncio.get_running_loop()
    for callback in callbacks:
        loop.call_soon(callback)
    await asyncio.sleep(0.01)


async def test_aiokafkas_callback_failing_after_its_sender_died_is_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # aiokafka's Sender._fail_all fails for an idempotent producer (no transaction waiter): an
    # asyncio ERROR with traceback after every sender death the bridge reports at ERROR itself.
    def other() -> None:
        raise AttributeError("another callback's bug")

    await failing_callbacks(Sender()._fail_all, other)
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["logger"]) for e in lines] == [
        ("warning", "asyncio"),
        ("error", "asyncio"),
    ], lines
    assert "Sender._fail_all" in lines[0]["msg"]
    assert "AttributeError" in lines[0]["exc"]


async def test_aiokafkas_callback_failing_after_each_sender_death_is_thinned(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One per producer death: with connections reset again and again, the bridge's own ERROR
    # and aiokafka's sender death are thinned, and this, the same traceback each time, was not.
    await failing_callbacks(*(Sender()._fail_all for _ in range(5)))
    logthrottle.flush_all()
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["logger"], "exc" in e) for e in lines] == [
        ("warning", "asyncio", True),
        ("warning", "asyncio", False),
    ], lines
    assert "Sender._fail_all" in lines[0]["msg"]
    assert lines[1]["msg"].endswith("4 more like this in the last 0 s"), lines[1]
    assert "Sender._fail_all" in lines[1]["msg"]


def aiokafka_source() -> str:
    """Every module of the aiokafka installed, as one text."""
    import aiokafka

    return "".join(p.read_text() for p in Path(aiokafka.__file__).parent.rglob("*.py"))


def test_the_messages_demoted_on_a_reset_are_aiokafkas() -> None:
    # A reworded message in a new aiokafka would quietly be an ERROR again.
    source = aiokafka_source()
    for message in logsetup._TransientKafkaFilter._RESET_DEATHS:
        assert f'"{message}"' in source, message
    assert "self._sender_task.add_done_callback(self._fail_all)" in source


def test_the_demoted_kafka_messages_are_aiokafkas() -> None:
    # A reworded message in a new aiokafka would quietly be an ERROR again.
    source = aiokafka_source()
    for message in logsetup._TransientKafkaFilter._DEMOTED:
        assert f'"{message}"' in source or f"'{message}'" in source, message


async def test_a_kafka_outage_logs_no_error_per_reconnect(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # aiokafka logged `Unable connect to ...` at ERROR on every attempt, beside the bridge's own
    # WARNING; the README says it logs at WARNING at most.
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaConnectionError

    logsetup.configure("INFO", "json")
    client = AIOKafkaClient(bootstrap_servers=refusing_address(), request_timeout_ms=1000)
    with pytest.raises(KafkaConnectionError):
        await client.bootstrap()
    await client.close()
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    refused = [e for e in lines if e["msg"].startswith(f'Unable connect to "{refusing_address()}"')]
    assert [e["level"] for e in refused] == ["warning"], lines


def test_a_kafka_outage_is_not_a_flood_of_aiokafka_retries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A real bridge with its broker down for 60 s logged about 100 lines/s, every one of them one
    # of these four retried messages, to two brokers here.
    from aiokafka.errors import NodeNotReadyError

    logsetup.configure("INFO", "json")
    client = logging.getLogger("aiokafka")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    sender = logging.getLogger("aiokafka.producer.sender")
    down = NodeNotReadyError("node 1")
    for _ in range(500):
        for node in (1, 2):
            client.error("Unable connect to node with id %s: %s", node, "Connection refused")
        client.error("Unable to update metadata from %s", [1])
        coordinator.error("Group Coordinator Request failed: %s", down)
        sender.warning("Got error produce response: %s", down)
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["msg"].split(":")[0]) for e in lines] == [
        ("warning", "Unable connect to node with id 1"),
        ("warning", "Unable connect to node with id 2"),
        ("warning", "Unable to update metadata from [1]"),
        ("warning", "Group Coordinator Request failed"),
        ("warning", "Got error produce response"),
    ]
    logthrottle.flush_all()  # at stop: how many were held back, by message and broker
    said = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    held = " 499 more like this in the last 0 s"
    assert sorted((e["msg"], e["suppressed"]) for e in said) == [
        ("Got error produce response: … (NodeNotReadyError):" + held, 499),
        ("Group Coordinator Request failed: … (NodeNotReadyError):" + held, 499),
        ("Unable connect to node with id …: … (1): 499 more like this in the last 0 s", 499),
        ("Unable connect to node with id …: … (2): 499 more like this in the last 0 s", 499),
        ("Unable to update metadata from …: 499 more like this in the last 0 s", 499),
    ]


def test_a_new_kind_of_error_in_a_thinned_message_is_said_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The partitions' leaders moved (NotLeaderForPartition), then a broker refuses for too few
    # in-sync replicas: one message, a new cause, said without waiting out the first's period.
    from aiokafka.errors import NotEnoughReplicasError, NotLeaderForPartitionError

    logsetup.configure("INFO", "json")
    sender = logging.getLogger("aiokafka.producer.sender")
    retried = "Got error produce response on topic-partition %s, retrying. Error: %s"
    for error in (NotLeaderForPartitionError, NotEnoughReplicasError):
        for partition in range(20):
            sender.warning(retried, f"t-{partition}", error)
    said = [jsoncodec.loads(line)["msg"] for line in capsys.readouterr().err.splitlines()]
    assert [m.rsplit("Error: ", 1)[1] for m in said] == [
        str(NotLeaderForPartitionError),
        str(NotEnoughReplicasError),
    ]


def server_error(exc: BaseException, msg: str, *args: object) -> logging.LogRecord:
    """aiohttp's server logging `msg` at ERROR with `exc`'s traceback, as it does a request's."""
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, "", 0, msg, args, (type(exc), exc, None)
    )


def test_malformed_requests_log_one_short_warning_per_period() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    now = [100.0]
    flt = logsetup.MalformedRequestFilter(every=10.0, clock=lambda: now[0])

    def record(exc: BaseException) -> logging.LogRecord:
        return server_error(exc, "Error handling request from %s", "1.2.3.4")

    first = record(BadHttpMessage("bad header"))
    assert flt.filter(first)
    assert (first.levelno, first.getMessage(), first.exc_info) == (
        logging.WARNING,
        "malformed HTTP request refused",
        None,
    )
    assert first.error == "BadHttpMessage: bad header"  # type: ignore[attr-defined]
    assert not flt.filter(record(BadHttpMessage("again")))
    assert not flt.filter(record(BadHttpMessage("and again")))
    now[0] += 10.0
    later = record(BadHttpMessage("later"))
    assert flt.filter(later)
    # The shared throttle's fields: how many were held back, over how long.
    assert (later.suppressed, later.suppressed_s) == (2, 10.0)  # type: ignore[attr-defined]
    # A real bug in a handler keeps its ERROR and traceback.
    bug = record(RuntimeError("bug"))
    assert flt.filter(bug)
    assert (bug.levelno, bug.exc_info is not None) == (logging.ERROR, True)


def test_a_body_refused_while_aiohttp_drains_it_is_a_malformed_request_not_a_bug() -> None:
    # aiohttp's pure-Python parser fails the reader of a body drained after an early answer, and
    # aiohttp logs the drain's read as "Unhandled exception": an ERROR and traceback per request.
    from aiohttp.http_exceptions import TransferEncodingError
    from aiohttp.web_protocol import RequestPayloadError

    def record(exc: BaseException) -> logging.LogRecord:
        return server_error(exc, "Unhandled exception")

    refusals = [
        (RequestPayloadError("Got more than 8190 bytes"), "RequestPayloadError: Got more than"),
        (TransferEncodingError("zz"), "TransferEncodingError: zz"),
    ]
    for exc, said in refusals:
        flt = logsetup.MalformedRequestFilter(every=10.0, clock=lambda: 100.0)
        refused = record(exc)
        assert flt.filter(refused)
        assert (refused.levelno, refused.getMessage(), refused.exc_info) == (
            logging.WARNING,
            "malformed HTTP request refused",
            None,
        )
        assert refused.error.startswith(said)  # type: ignore[attr-defined]
        assert not flt.filter(record(exc))  # the same throttle as refused heads
    bug = record(RuntimeError("bug"))
    assert logsetup.MalformedRequestFilter().filter(bug)
    assert (bug.levelno, bug.exc_info is not None) == (logging.ERROR, True)


def test_malformed_requests_held_back_are_said_at_stop(caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    flt = logsetup.MalformedRequestFilter(every=10.0, clock=lambda: 100.0)
    for _ in range(4):
        flt.filter(server_error(BadHttpMessage("bad header"), "Error handling request"))
    with caplog.at_level(logging.WARNING, logger="aiohttp.server"):
        logthrottle.flush_all()
    assert [(r.getMessage(), getattr(r, "suppressed", None)) for r in caplog.records] == [
        ("malformed HTTP request refused: 3 more like this in the last 0 s", 3)
    ]


async def test_a_flood_of_malformed_requests_is_not_a_flood_of_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aiohttp import web

    from tests.rawhttp import exchange

    logsetup.configure("INFO", "json")
    runner = web.AppRunner(web.Application())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        for _ in range(20):
            answer = await exchange("127.0.0.1", port, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
            assert answer is not None
            assert answer.status == 400
    finally:
        await runner.cleanup()
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    refused = [e for e in lines if e["logger"] == "aiohttp.server"]
    assert [(e["level"], e["msg"]) for e in refused] == [
        ("warning", "malformed HTTP request refused")
    ]
    assert "exc" not in refused[0]


def test_fields_given_at_configuration_are_on_every_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logsetup.configure("INFO", "json", {"worker": 3})
    logging.getLogger("bridge.x").info("one")
    logging.getLogger("aiokafka.y").warning("two", extra={"topic": "t"})
    entries = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["msg"], e["worker"]) for e in entries] == [("one", 3), ("two", 3)]
    assert entries[1]["topic"] == "t"
    logsetup.configure("INFO", "json")  # configured again without: gone
    logging.getLogger("bridge.x").info("three")
    assert "worker" not in jsoncodec.loads(capsys.readouterr().err)


class _Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int
    label: str


class _BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr failed")

    __str__ = __repr__


_LONG = "C" * 1_048_576  # a 1 MiB id from input
_AWKWARD: list[tuple[str, object, object]] = [
    ("bytes", b"\xff\x00a", "b'\\xff\\x00a'"),
    ("path", PurePosixPath("/var/x"), "PurePosixPath('/var/x')"),
    ("set", {3}, [3]),
    ("frozenset", frozenset({"a"}), ["a"]),
    ("exception", ValueError("boom"), "ValueError('boom')"),
    ("enum", _Colour.RED, "red"),
    ("dataclass", _Point(1, "p"), {"x": 1, "label": "p"}),
    ("dataclass_surrogate", _Point(1, "\udc80"), "_Point(x=1, label='\\udc80')"),
    (
        "datetime",
        datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "2026-01-02T03:04:05+00:00",
    ),
    ("decimal", decimal.Decimal("1.10"), "Decimal('1.10')"),
    ("nan", math.nan, "nan"),
    ("inf", math.inf, "inf"),
    ("minus_inf", -math.inf, "-inf"),
    ("control", "a\nb\x00\x1b", "a\nb\x00\x1b"),
    ("separators", "a\u2028b\u2029c\x85", "a\u2028b\u2029c\x85"),
    ("surrogate", "a\udc80b", "a\\udc80b"),
    ("huge_int", 2**70, str(2**70)),
    ("long", _LONG, f"{'C' * logsetup.MAX_FIELD_CHARS}… (1048576 chars)"),
    ("broken_repr", _BrokenRepr(), "<_BrokenRepr: repr() raised RuntimeError>"),
]


@pytest.mark.parametrize(
    ("value", "shown"), [(v, s) for _, v, s in _AWKWARD], ids=[n for n, *_ in _AWKWARD]
)
def test_every_field_value_is_one_valid_json_line(
    capsys: pytest.CaptureFixture[str], value: object, shown: object
) -> None:
    logsetup.configure("INFO", "json")
    logging.getLogger("bridge.test").info("awkward", extra={"value": value})
    err = capsys.readouterr().err
    assert "Logging error" not in err
    [line] = err.splitlines()  # splitlines(): U+2028 and U+0085 end a line too
    assert jsoncodec.loads(line)["value"] == shown  # orjson reads no NaN or Infinity: strict JSON


class _RaisesWhenCollected:
    def __del__(self) -> None:
        raise ValueError("raised in __del__")


def _raise_in_a_thread() -> None:
    thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
    thread.start()
    thread.join()


def test_pythons_own_reports_are_one_json_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    # Python writes each as several raw lines: a log store taking stderr by line got non-JSON.
    logsetup.configure("INFO", "json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's warning", DeprecationWarning, stacklevel=1)
    _raise_in_a_thread()
    _RaisesWhenCollected()  # collected at once: its __del__'s exception is unraisable
    try:
        raise RuntimeError("nobody caught\nthis")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    entries = [jsoncodec.loads(line) for line in err.splitlines()]
    assert [(e["level"], e["logger"]) for e in entries] == [
        ("warning", "py.warnings"),
        ("error", "py.errors"),
        ("error", "py.errors"),
        ("critical", "py.errors"),
    ]
    warned, thread, unraisable, uncaught = entries
    assert "DeprecationWarning: a library's warning" in warned["msg"]
    assert (thread["msg"], thread["thread_name"]) == ("uncaught exception in a thread", "doomed")
    assert "ZeroDivisionError" in thread["exc"]
    assert unraisable["msg"] == "Exception ignored in"
    assert "_RaisesWhenCollected.__del__" in unraisable["object"]
    assert "ValueError: raised in __del__" in unraisable["exc"]
    assert uncaught["msg"] == "uncaught exception"
    assert "RuntimeError: nobody caught\nthis" in uncaught["exc"]


def test_the_console_keeps_pythons_own_reports() -> None:
    before = (sys.excepthook, threading.excepthook, sys.unraisablehook, warnings.showwarning)
    logsetup.configure("INFO", "json")
    logsetup.configure("INFO", "console")  # the demo's, for a person: Python's tracebacks
    after = (sys.excepthook, threading.excepthook, sys.unraisablehook, warnings.showwarning)
    assert after == before


def test_a_template_its_arguments_do_not_fit_is_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logsetup.configure("INFO", "json")
    logging.getLogger("bridge.test").warning("%s of %s", 1, extra={"call": "CA_1"})
    err = capsys.readouterr().err
    [line] = err.splitlines()  # not logging's `--- Logging error ---` and a traceback
    entry = jsoncodec.loads(line)
    assert (entry["msg"], entry["msg_args"], entry["call"]) == ("%s of %s", "(1,)", "CA_1")
    assert entry["msg_error"] == "TypeError: not enough arguments for format string"


def test_console_lines_cut_long_fields_and_survive_a_broken_repr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logsetup.configure("INFO", "console")
    logging.getLogger("bridge.test").info("awkward", extra={"call": _LONG, "odd": _BrokenRepr()})
    err = capsys.readouterr().err
    assert "Logging error" not in err
    [line] = err.splitlines()
    assert line.endswith(
        f" call={'C' * logsetup.MAX_FIELD_CHARS}… (1048576 chars)"
        " odd=<_BrokenRepr: str() raised RuntimeError>"
    )


_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def _returned(trees: list[ast.Module]) -> dict[str, list[ast.expr]]:
    """What each function of `trees` returns, by its name (a method's too)."""
    return {
        node.name: [r.value for r in ast.walk(node) if isinstance(r, ast.Return) and r.value]
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def _extra_keys(tree: ast.Module, returned: dict[str, list[ast.expr]]) -> Iterator[tuple[int, str]]:
    """(line, key) of each key a log call's `extra` can hold, as far as the source spells it: its
    dict literal, dicts splatted in it, and dicts assigned to (or returned as) what it names."""
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                    item = ast.Dict(keys=[target.slice], values=[node.value])
                    assigned.setdefault(ast.unparse(target.value), []).append(item)
                else:
                    assigned.setdefault(ast.unparse(target), []).append(node.value)

    def keys(expr: ast.expr, seen: frozenset[str]) -> Iterator[tuple[int, str]]:
        if isinstance(expr, ast.Dict):
            for key, value in zip(expr.keys, expr.values, strict=True):
                if key is None:
                    yield from keys(value, seen)
                elif isinstance(key, ast.Constant) and isinstance(key.value, str):
                    yield key.lineno, key.value
        elif isinstance(expr, ast.IfExp):
            yield from keys(expr.body, seen)
            yield from keys(expr.orelse, seen)
        elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name | ast.Attribute):
            name = expr.func.id if isinstance(expr.func, ast.Name) else expr.func.attr
            for source in returned.get(name, []) if name not in seen else []:
                yield from keys(source, seen | {name})
        elif (name := ast.unparse(expr)) not in seen:
            for source in assigned.get(name, []):
                yield from keys(source, seen | {name})

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _LOG_METHODS
        ):
            for keyword in node.keywords:
                if keyword.arg == "extra":
                    yield from keys(keyword.value, frozenset())


def test_no_log_call_names_a_reserved_field() -> None:
    # logging raises KeyError ("Attempt to overwrite 'message' in LogRecord") at the call: a
    # crash where an error was being reported. A key starting with _ is never logged.
    trees = {path: ast.parse(path.read_text()) for path in sorted((REPO / "bridge").rglob("*.py"))}
    returned = _returned(list(trees.values()))
    clashes, checked = [], 0
    for path, tree in trees.items():
        for line, key in _extra_keys(tree, returned):
            checked += 1
            if key in logsetup.RESERVED_FIELDS or key.startswith("_"):
                clashes.append(f"{path.relative_to(REPO)}:{line}: {key}")
    assert not clashes
    assert checked > 300  # the scan sees the call sites at all (479 keys when written)


def test_the_reserved_fields_are_what_logging_refuses() -> None:
    logger = logging.getLogger("bridge.test")
    for key in ("message", "asctime", "args", "name", "msg", "created", "exc_info"):
        assert key in logsetup.RESERVED_FIELDS
        with pytest.raises(KeyError, match="Attempt to overwrite"):
            logger.makeRecord("x", logging.ERROR, "f", 1, "m", (), None, extra={key: 1})
    assert {"ts", "level", "logger", "exc"} <= logsetup.RESERVED_FIELDS  # the JSON line's own


async def test_a_listener_out_of_descriptors_says_so_once_not_a_traceback_per_accept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Under a real open-files limit, every descriptor taken: asyncio tried accept() again at once,
    # up to the backlog's times, each an ERROR with its traceback (1,024 lines in 2.5 s).
    logsetup.configure("INFO", "json")
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = socket.socket()  # made first: connecting then takes no descriptor of this process
    client.setblocking(False)
    try:
        with every_descriptor_taken():
            client.connect_ex(runner.addresses[0])
            await asyncio.sleep(1.5)  # the accept retried past asyncio's 1 s pause too
    finally:
        client.close()
        await runner.cleanup()
    lines = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert not [e for e in lines if e["msg"].startswith("socket.accept() out of system resource")]
    said = [e for e in lines if e["msg"] == connlimit.OUT_OF_DESCRIPTORS]
    assert [(e["level"], e["source"]) for e in said] == [("warning", "http_accept")]
    assert "Too many open files" in said[0]["error"]
