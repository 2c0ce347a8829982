"""A Kafka that refuses the bridge a topic (an ACL): webhooks never answered 2xx unless their
events are in Kafka, one clear ERROR naming the topic and the operation, no line per retry."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import redrive as redrive_module
from bridge.backfill import backfill_calls
from bridge.cli import main
from bridge.config import Settings
from bridge.deadletter import Selection
from bridge.pipeline import submit_retrying
from bridge.redrive import redrive
from bridge.sink.acls import ACLS
from tests.entries import entry
from tests.environ import without_bridge_variables
from tests.integration.acls import (
    DESCRIBE,
    GROUP,
    READ,
    TOPIC,
    WRITE,
    Acl,
    acl_broker,
    bridge_acls,
    grant,
    sasl,
)
from tests.integration.conftest import (
    Broker,
    RunningBridge,
    Topics,
    bridge_settings,
    consume_until,
    create_topic,
    daemon_env,
    grown,
    has_id,
    publish_failures,
    write_ingest,
)
from tests.integration.replicas import Replica, post_signed, replica_env
from tests.integration.test_redrive import dead_letter
from tests.polling import until
from tests.sockets import free_port

# The module's broker starts in 10-20 s on a busy box.
pytestmark = pytest.mark.timeout(240)
USERS = (
    "exact",
    "noingestwrite",
    "noingestread",
    "nocreate",
    "noeventswrite",
    "nodlqwrite",
    "noeventsdescribe",
    "ingestreader",
    "dlqunread",
    "groupunread",
    "writerevoked",
)
StartAs = Callable[[str, set[Acl]], Awaitable[RunningBridge]]
# How long a refused stage is watched once it said why: it fetched again every commit interval
# (100 ms), a line and a traceback each time, some 150 in this time.
WATCHED = 15.0


@pytest.fixture(scope="module")
def authorizing_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, str]]:
    with acl_broker(tmp_path_factory.mktemp("kafka-acl"), USERS) as broker:
        yield broker


@pytest.fixture
def start_as(
    start_bridge: Callable[..., Any], authorizing_broker: tuple[Broker, str], topics: Topics
) -> StartAs:
    """Starts the bridge as a user (its topics made) on the authorizing broker."""

    async def start(user: str, without: set[Acl]) -> RunningBridge:
        """The bridge as `user`, allowed exactly the documented ACLs but `without`."""
        plain, sasl_bootstrap = authorizing_broker
        await _prepare(plain, topics, user, without)
        handle: RunningBridge = await start_bridge(
            bootstrap=sasl_bootstrap, kafka=sasl(user), topics={"create": False}
        )
        return handle

    return start


async def _prepare(plain: Broker, topics: Topics, user: str, without: set[Acl]) -> None:
    """Allow `user` exactly the documented ACLs but `without`; make its topics."""
    await grant(plain.bootstrap, user, [a for a in bridge_acls(topics) if a not in without])
    for name in (topics.events, topics.alerts, topics.dlq, topics.feed_lease):
        await create_topic(plain.bootstrap, name, 1)
    await create_topic(
        plain.bootstrap, topics.ingest, 3, {"message.timestamp.type": "LogAppendTime"}
    )


def _errors(caplog: pytest.LogCaptureFixture, *words: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and r.name.startswith("bridge.")
        and all(w in r.getMessage() for w in words)
    ]


async def _said_then_watched(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """Once an ERROR says all `words`: the ERRORs logged in the WATCHED seconds after it."""
    await until(lambda: _errors(caplog, *words), 60, 0.1, f"an ERROR saying {words}")
    first = len(_errors(caplog))
    await asyncio.sleep(WATCHED)
    return [r.getMessage() for r in _errors(caplog)[first:]]


async def test_a_user_with_exactly_the_documented_acls_works_end_to_end(
    authorizing_broker: tuple[Broker, str], start_as: StartAs, topics: Topics, unique_call: str
) -> None:
    handle = await start_as("exact", set())
    assert (await handle.post(entry(1, call=unique_call)))[0] == 200
    assert (await handle.post(entry(2, call=None, agent=unique_call)))[0] == 200
    assert (await handle.post(b'{"not": "an event"}'))[0] == 202
    records = await consume_until(
        authorizing_broker[0].bootstrap,
        [topics.events, topics.alerts, topics.dlq],
        lambda got: {r.topic for r in got} == {topics.events, topics.alerts, topics.dlq},
    )
    assert has_id(f"{unique_call}:1")(records)


async def test_without_write_on_the_ingest_topic_webhooks_get_503_and_the_acl_is_named(
    start_as: StartAs, topics: Topics, unique_call: str, caplog: pytest.LogCaptureFixture
) -> None:
    handle = await start_as("noingestwrite", {Acl(TOPIC, topics.ingest, WRITE)})
    before = publish_failures(handle)
    for seq in (1, 2, 3):
        status, body = await handle.post(entry(seq, call=unique_call))
        assert (status, body["error"]) == (503, "kafka_unavailable")
    assert grown(before, publish_failures(handle)) == {"error": 3}
    said = _errors(caplog, "Write on Topic", ACLS)
    # One line, not one per webhook; it names the topic and where the ACLs are documented.
    assert [r.__dict__["topic"] for r in said] == [topics.ingest]


async def test_without_read_on_the_ingest_topic_the_stage_names_it_without_a_line_per_fetch(
    start_as: StartAs, topics: Topics, unique_call: str, caplog: pytest.LogCaptureFixture
) -> None:
    handle = await start_as("noingestread", {Acl(TOPIC, topics.ingest, READ)})
    # Taken: the event is in the ingest topic, and waits there for the ACL.
    assert (await handle.post(entry(1, call=unique_call)))[0] == 200
    after = await _said_then_watched(caplog, f"Read on Topic {topics.ingest!r}")
    assert handle.bridge.readiness.ready(), "webhooks must still be taken"
    # Retried (an ACL added is taken up) with a growing pause: a handful of lines, not 150.
    assert 0 < len(after) <= 8, after[-5:]


async def test_without_create_the_missing_topics_are_named_and_it_stays_unready(
    authorizing_broker: tuple[Broker, str],
    start_bridge: Callable[..., Any],
    topics: Topics,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain, sasl_bootstrap = authorizing_broker
    # Everything a pre-created layout needs, nothing to create the topics, which do not exist.
    await grant(plain.bootstrap, "nocreate", bridge_acls(topics))
    handle: RunningBridge = await start_bridge(
        bootstrap=sasl_bootstrap, kafka=sasl("nocreate"), ready=False
    )
    words = ("not allowed to create the missing topics", "Create on the Cluster")
    await until(lambda: _errors(caplog, *words), 60, 0.1, f"an ERROR saying {words}")
    assert topics.ingest in _errors(caplog, *words)[0].__dict__["topics"]
    assert not handle.bridge.readiness.ready()
    status, body = await handle.post(entry(1, call=unique_call))
    assert (status, body["error"]) == (503, "kafka_unavailable")


@pytest.mark.parametrize("output", ["events", "dlq"])
async def test_without_write_on_an_output_topic_the_stage_names_it_and_backs_off(
    authorizing_broker: tuple[Broker, str],
    start_as: StartAs,
    topics: Topics,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
    output: str,
) -> None:
    topic = getattr(topics, output)
    user = f"no{output}write"
    without = {Acl(TOPIC, topic, WRITE)}
    handle = await start_as(user, without)
    # Taken: it waits in the ingest topic for the ACL.
    body = entry(1, call=unique_call) if output == "events" else b'{"not": "an event"}'
    assert (await handle.post(body))[0] in (200, 202)
    after = await _said_then_watched(caplog, f"Write on Topic {topic!r}")
    # Retried with a growing pause (1, 2, 4, 8 s): a few lines, not a lost partition every 2 s.
    assert 0 < len(after) <= 4, after
    assert not _errors(caplog, "dedup partition lost")
    # The ACL added, the next retry (within 30 s) writes what waited.
    await grant(authorizing_broker[0].bootstrap, user, without)
    records = await consume_until(
        authorizing_broker[0].bootstrap, [topic], lambda got: len(got) >= 1, within=60
    )
    assert len(records) == 1


async def test_without_write_and_describe_on_an_output_topic_the_log_says_it_without_a_flood(
    authorizing_broker: tuple[Broker, str],
    topics: Topics,
    unique_call: str,
    tmp_path: Path,
) -> None:
    # The real process and its log handler, which thins aiokafka's lines (caplog sees each:
    # thousands of "Topic ... is not authorized for this client" in 30 s). Without Describe alone
    # nothing fails: Kafka takes Write to imply it.
    plain, sasl_bootstrap = authorizing_broker
    user = "noeventsdescribe"
    refused = {Acl(TOPIC, topics.events, op) for op in (WRITE, DESCRIBE)}
    await _prepare(plain, topics, user, refused)
    port = free_port()
    security = {f"BRIDGE_KAFKA__{k.upper()}": v for k, v in sasl(user).items()}
    env = replica_env(sasl_bootstrap, topics, port, BRIDGE_TOPICS__CREATE="false", **security)
    replica = Replica("nodescribe", env, tmp_path / "nodescribe.log", port)
    await replica.start()
    try:
        async with aiohttp.ClientSession() as session:
            assert await post_signed(session, replica.url, entry(1, call=unique_call)) == 200
        await asyncio.sleep(WATCHED)
    finally:
        await replica.stop()
    errors = [e["msg"] for e in replica.log_entries() if e.get("level") == "error"]
    said = [m for m in errors if f"Write on Topic {topics.events!r}" in m]
    assert said, errors[-5:]
    # aiokafka's metadata error thinned to a line per 10 s; the stage's said at 1, 2, 4, 8 s.
    assert len([m for m in errors if "not authorized for this client" in m]) <= 4, errors[-5:]
    assert len(errors) <= 10, errors[-5:]


async def test_the_tools_name_a_missing_write_on_the_ingest_topic_before_reading_anything(
    authorizing_broker: tuple[Broker, str], topics: Topics, unique_call: str
) -> None:
    # An operator's reading principal: it may describe and read the topics, not write the ingest
    # topic. Said before the dead-letter topic or a call is read, not after every retry.
    plain, sasl_bootstrap = authorizing_broker
    user = "ingestreader"
    await _prepare(plain, topics, user, {Acl(TOPIC, topics.ingest, WRITE)})
    await grant(plain.bootstrap, user, [Acl(TOPIC, topics.dlq, READ)])
    await write_ingest(
        plain.bootstrap,
        [dead_letter(topics, entry(1, call=unique_call), "invalid_data", "webhook")],
    )
    settings = bridge_settings(
        sasl_bootstrap,
        topics,
        kafka=sasl(user),
        topics={"create": False},
        # Never answers: the calls are not to be asked for.
        pinecall={"api_url": "http://127.0.0.1:9", "api_key": "key"},
    )
    said = (
        f"this user may not write the ingest topic {topics.ingest} (BRIDGE_TOPICS__INGEST):"
        f" TopicAuthorizationFailed, the principal needs an ACL allowing Write on it ({ACLS})"
    )
    redriven = await redrive(settings, Selection(0.0))
    assert (redriven.error, redriven.read) == (said, 0)
    assert (await redrive(settings, Selection(0.0), dry_run=True)).ok, "reads only"
    assert (await backfill_calls(settings, [unique_call])).ingest_error == said


async def _dead_letter_and_settings(
    authorizing_broker: tuple[Broker, str], topics: Topics, user: str, without: set[Acl], call: str
) -> Settings:
    """`user` allowed the documented ACLs but `without`, a dead letter of `call` written; its
    settings."""
    plain, sasl_bootstrap = authorizing_broker
    await _prepare(plain, topics, user, without)
    await write_ingest(
        plain.bootstrap, [dead_letter(topics, entry(1, call=call), "invalid_data", "webhook")]
    )
    return bridge_settings(sasl_bootstrap, topics, kafka=sasl(user), topics={"create": False})


@pytest.mark.parametrize("everywhere", [False, True])
def test_tail_names_the_read_right_it_lacks_and_where_the_acls_are_listed(
    authorizing_broker: tuple[Broker, str],
    topics: Topics,
    unique_call: str,
    everywhere: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The documented ACLs have no Read on the dead-letter topic: tail shows it only to another
    # principal. --everywhere first reads the dedup group's committed offsets.
    user = "groupunread" if everywhere else "dlqunread"
    without = {Acl(GROUP, topics.group, READ)} if everywhere else set()
    asyncio.run(_dead_letter_and_settings(authorizing_broker, topics, user, without, unique_call))
    without_bridge_variables(monkeypatch, tmp_path)
    sasl_bootstrap = authorizing_broker[1]
    security = {f"BRIDGE_KAFKA__{k.upper()}": v for k, v in sasl(user).items()}
    for name, value in daemon_env(sasl_bootstrap, topics, **security).items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    command = ["--everywhere"] if everywhere else ["--topic", topics.dlq]
    assert main(["tail", *command, "--from-beginning", "--to-end"]) == 1
    said = (
        f"this user may not read the committed offsets of the dedup group {topics.group!r}"
        " (BRIDGE_DEDUP__GROUP): GroupAuthorizationFailed, the principal needs an ACL allowing"
        f" Read (or Describe) on Group {topics.group!r} ({ACLS})"
        if everywhere
        else f"this user may not read topic {topics.dlq!r}: TopicAuthorizationFailed, the"
        f" principal needs an ACL allowing Read on it ({ACLS})"
    )
    # After aiokafka's warnings of a password sent in the clear (this listener's).
    assert (
        capsys.readouterr().err.splitlines()[-1] == f"refused by Kafka at {sasl_bootstrap}: {said}"
    )


async def test_redrive_names_a_missing_read_on_the_dead_letter_topic(
    authorizing_broker: tuple[Broker, str], topics: Topics, unique_call: str
) -> None:
    settings = await _dead_letter_and_settings(
        authorizing_broker, topics, "dlqunread", set(), unique_call
    )
    report = await redrive(settings, Selection(0.0), dry_run=True)
    assert report.error == (
        f"this user may not read topic {topics.dlq!r}: TopicAuthorizationFailed, the principal"
        f" needs an ACL allowing Read on it ({ACLS})"
    )


async def test_a_redrive_kafka_refuses_says_which_error(
    authorizing_broker: tuple[Broker, str],
    topics: Topics,
    unique_call: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if Write on the ingest topic were revoked after the pre-check (a race it cannot close):
    # every delivery refused. The report names Kafka's error, not a bare "error".
    settings = await _dead_letter_and_settings(
        authorizing_broker, topics, "writerevoked", {Acl(TOPIC, topics.ingest, WRITE)}, unique_call
    )
    plain = authorizing_broker[0]
    await grant(plain.bootstrap, "writerevoked", [Acl(TOPIC, topics.dlq, READ)])

    async def checked(*_: Any) -> None:
        return None

    monkeypatch.setattr(redrive_module, "missing_ingest", checked)
    # One attempt: the retries' pauses (15 s) say nothing more.
    monkeypatch.setattr(
        redrive_module, "submit_retrying", functools.partial(submit_retrying, attempts=1)
    )
    report = await redrive(settings, Selection(0.0))
    assert report.error == "Kafka did not take every event: error (TopicAuthorizationFailedError)"
