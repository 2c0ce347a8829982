"""Topic set-up: created when allowed, pre-created topics used as they are, missing ones block;
an admin's changes to the topics while the bridge runs are said."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.errors import UnknownTopicOrPartitionError

from bridge.ingest.topic import Problem
from bridge.service import INGEST_RECREATED, Bridge
from bridge.sink import kafka
from bridge.sink.kafka import Layout, TopicReads
from tests.integration.conftest import (
    Broker,
    RunningBridge,
    Topics,
    admin_client,
    alter_topic,
    answers_ready,
    bridge_settings,
    call_on,
    consume_until,
    create_topic,
    describe,
    entry,
    has_id,
    ingest_records,
    own_broker,
    read_decided,
    topic_config,
    until_metrics,
    write_ingest,
)
from tests.metrics import scrape
from tests.polling import until

OWNED = "pinecall_bridge_dedup_partitions_owned"
PARTITIONS = "pinecall_bridge_ingest_partitions"
# Said of a deleted output topic: its events wait for it.
WAIT = "wait in the ingest topic"


async def test_bridge_creates_its_topics(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str
) -> None:
    names = [topics.events, topics.alerts, topics.dlq, topics.ingest, topics.feed_lease]
    found = await describe(kafka_bootstrap, names)
    assert found == {
        topics.events: 3,
        topics.alerts: 3,
        topics.dlq: 3,
        topics.ingest: 3,  # ingest_partitions, set to 3 for the tests
        topics.feed_lease: 1,  # one partition: its one assignee holds the feed
    }
    # acks=all waits for two copies where there are two (this broker alone: its one), whatever
    # the cluster's default: each topic says so itself.
    for name in names:
        assert (await topic_config(kafka_bootstrap, name, own=True))["min.insync.replicas"] == "1"
    config = await topic_config(kafka_bootstrap, topics.ingest)
    # Restore replays by the broker's append time; retention keeps the TTL plus a margin.
    assert config["message.timestamp.type"] == "LogAppendTime"
    assert config["cleanup.policy"] == "delete"
    assert config["retention.ms"] == str((900 + 3600) * 1000)


def lagging_admin(late: set[str]) -> type[AIOKafkaAdminClient]:
    """An admin client asking a broker the creation of the topics `late` has not reached yet:
    it answers for each, once per kind of read, UnknownTopicOrPartition (as in most reads made
    within ~0.5 s of the creation on this broker, but not all: here, always)."""
    unknown = UnknownTopicOrPartitionError.errno
    missed: dict[str, set[str]] = {"configs": set(), "topics": set()}

    def first_miss(kind: str, name: str) -> bool:
        if name not in late or name in missed[kind]:
            return False
        missed[kind].add(name)
        return True

    class LaggingAdmin(AIOKafkaAdminClient):  # type: ignore[misc]
        async def describe_configs(self, *args: Any, **kwargs: Any) -> list[Any]:
            responses: list[Any] = await super().describe_configs(*args, **kwargs)
            for response in responses:
                response.resources = [
                    (unknown, "", kind, name, []) if first_miss("configs", name) else resource
                    for resource in response.resources
                    for _, _, kind, name, *_ in [resource]
                ]
            return responses

        async def describe_topics(self, topics: list[str] | None = None) -> list[Any]:
            described: list[Any] = await super().describe_topics(topics)
            for topic in described:
                if first_miss("topics", topic["topic"]):
                    topic.update(error_code=unknown, partitions=[])
            return described

    return LaggingAdmin


@pytest.mark.parametrize("lagging", [False, True], ids=["as_answered", "first_read_unknown"])
async def test_the_topics_the_bridge_just_created_get_their_configs_checked(
    start_bridge: Callable[..., Any],
    topics: Topics,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    lagging: bool,
) -> None:
    # Read right after their creation, the topics can still be unknown to the broker asked
    # (UnknownTopicOrPartition): their checks were skipped, but for a warning blaming a missing
    # DescribeConfigs right. How often depends on the broker's load, hence the lagging variant.
    if lagging:
        names = {topics.events, topics.alerts, topics.dlq, topics.ingest, topics.feed_lease}
        monkeypatch.setattr(kafka, "AIOKafkaAdminClient", lagging_admin(names))
    checked: list[tuple[dict[str, dict[str, str]], dict[str, int]]] = []
    check = Bridge._check_durability

    def noting(
        self: Bridge,
        configs: dict[str, dict[str, str]],
        layouts: TopicReads[Layout],
        fresh: set[str],
    ) -> list[Problem]:
        checked.append((configs, {name: found.factor for name, found in layouts.found.items()}))
        return check(self, configs, layouts, fresh)

    monkeypatch.setattr(Bridge, "_check_durability", noting)
    caplog.set_level(logging.WARNING, logger="bridge.service")
    handle: RunningBridge = await start_bridge()
    checks = [topics.ingest, *handle.bridge.router.topics()]
    assert [r.getMessage() for r in caplog.records if "could not read" in r.getMessage()] == []
    [(configs, factors)] = checked
    insync = {name: configs.get(name, {}).get("min.insync.replicas") for name in checks}
    assert insync == dict.fromkeys(checks, "1")
    assert {name: factors.get(name) for name in checks} == dict.fromkeys(checks, 1)


async def test_pre_created_topics_without_create_right(
    start_bridge: Callable[..., Any], topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    for name in (topics.events, topics.alerts, topics.dlq, topics.feed_lease):
        await create_topic(kafka_bootstrap, name, 1)
    await create_topic(
        kafka_bootstrap, topics.ingest, 1, {"message.timestamp.type": "LogAppendTime"}
    )
    bridge: RunningBridge = await start_bridge(topics={"create": False})
    assert (await bridge.post(entry(1, call=unique_call)))[0] == 200
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:1"))
    # The bridge kept the operator's layout: one partition, not its default three.
    found = await describe(kafka_bootstrap, [topics.events, topics.ingest])
    assert found == {topics.events: 1, topics.ingest: 1}


async def test_missing_topic_keeps_the_bridge_unready(
    topics: Topics, kafka_bootstrap: str, unique_call: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.service")
    settings = bridge_settings(
        kafka_bootstrap,
        topics,
        topics={"create": False},
        kafka={"publish_timeout_seconds": 1, "request_timeout_ms": 1000},
    )
    bridge = Bridge(settings)
    await bridge.start()
    url = f"http://127.0.0.1:{bridge.port}"
    try:
        # Until its attempt to connect has failed for the missing topic: unready for that, not
        # merely because no attempt was over yet.
        await until(lambda: missing_topic_retries(caplog), within=30)
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/readyz") as response:
                assert response.status == 503
            async with session.get(url + "/healthz") as response:
                assert response.status == 200
            handle = RunningBridge(bridge, url, session)
            status, body = await handle.post(entry(1, call=unique_call))
            assert (status, body["error"]) == (503, "kafka_unavailable")
    finally:
        await bridge.stop()


async def test_a_missing_routed_topic_keeps_the_bridge_unready_until_made(
    topics: Topics, kafka_bootstrap: str, unique_call: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rollout adding a rule whose topic is not made yet: ready, this pod's records naming it
    were skipped by the old pods (their routing lacks it) as an unknown topic, lost for good."""
    caplog.set_level(logging.WARNING, logger="bridge.service")
    routed = topics.events + ".routed"
    for name in (topics.events, topics.alerts, topics.dlq, topics.feed_lease):
        await create_topic(kafka_bootstrap, name, 1)
    await create_topic(
        kafka_bootstrap, topics.ingest, 1, {"message.timestamp.type": "LogAppendTime"}
    )
    settings = bridge_settings(
        kafka_bootstrap,
        topics,
        topics={"create": False},
        routing={"rules": [{"match": "turn.*", "topic": routed}]},
    )
    bridge = Bridge(settings)
    await bridge.start()
    url = f"http://127.0.0.1:{bridge.port}"
    try:
        await until(lambda: routed_topic_retries(caplog, routed), within=30)
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/readyz") as response:
                assert response.status == 503
            await create_topic(kafka_bootstrap, routed, 1)
            await until(lambda: answers_ready(session, url), within=60)
            handle = RunningBridge(bridge, url, session)
            assert (await handle.post(entry(1, call=unique_call)))[0] == 200
        await consume_until(kafka_bootstrap, [routed], has_id(f"{unique_call}:1"))
    finally:
        await bridge.stop()


def routed_topic_retries(caplog: pytest.LogCaptureFixture, topic: str) -> list[logging.LogRecord]:
    """The bridge's failed attempts to connect for a missing topic its routing names."""
    return [
        r
        for r in caplog.records
        if r.getMessage().startswith("Kafka not ready yet")
        and "OutputTopicMissingError" in str(getattr(r, "error", ""))
        and topic in str(getattr(r, "error", ""))
    ]


async def test_a_replication_factor_above_the_brokers_is_said_naming_the_setting_and_brokers(
    topics: Topics, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge")
    # Valid at start (the cluster's size is unknown then): only the broker can refuse it.
    settings = bridge_settings(kafka_bootstrap, topics, topics={"replication_factor": 3})
    bridge = Bridge(settings)
    await bridge.start()
    try:
        await until(lambda: too_few_brokers(caplog), within=30)
        said = too_few_brokers(caplog)[0]
        # The test broker is alone: the factor asked for and the one broker seen.
        assert (getattr(said, "replication_factor", None), getattr(said, "brokers", None)) == (3, 1)
        assert topics.ingest in getattr(said, "topics", "")
    finally:
        await bridge.stop()


async def test_a_topic_whose_name_kafka_refuses_is_said_with_the_brokers_reason(
    topics: Topics, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge")
    # Made elsewhere, alike but for '.' and '_': Kafka refuses the events topic at every start.
    other = topics.events.replace(".", "_")
    await create_topic(kafka_bootstrap, other, 1)
    bridge = Bridge(bridge_settings(kafka_bootstrap, topics))
    await bridge.start()
    try:
        await until(lambda: name_refused(caplog), within=30)
        said = name_refused(caplog)[0]
        assert getattr(said, "topic", None) == topics.events
        assert other in str(getattr(said, "broker_said", ""))
    finally:
        await bridge.stop()


def name_refused(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERRORs saying the broker refused a topic's name."""
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "refuses its name" in r.getMessage()
    ]


def too_few_brokers(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERRORs naming the replication factor's setting."""
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "BRIDGE_TOPICS__REPLICATION_FACTOR" in r.getMessage()
    ]


async def test_the_ingest_topics_own_partition_count_is_exported_logged_and_followed(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Made elsewhere (Strimzi, an admin) with 4 partitions where the settings say 3.
    config = {"message.timestamp.type": "LogAppendTime"}
    await create_topic(kafka_bootstrap, topics.ingest, 4, config)
    async with admin_client(kafka_bootstrap) as admin:
        caplog.set_level(logging.WARNING, logger="bridge.service")
        bridge: RunningBridge = await start_bridge(kafka={"metadata_probe_seconds": 0.5})
        await until_metrics(bridge, lambda m: m.get(OWNED) == 4 and m.get(PARTITIONS) == 4)
        assert logged(caplog, "not BRIDGE_TOPICS__INGEST_PARTITIONS") == [
            {"partitions": 4, "configured": 3}
        ]
        # Its configs let a restore see a whole TTL (the broker's default retention is a week).
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

        # Grown while running: the alert's count follows, the group takes the new ones on.
        await admin.create_partitions({topics.ingest: NewPartitions(6)})
        await until_metrics(
            bridge, lambda m: m.get(PARTITIONS) == 6 and m.get(OWNED) == 6, within=60
        )
    # Said by the metadata probe's next look (every 0.5 s): the gauge reads the client's metadata
    # at the scrape, which a rebalance's own refresh may have updated first.
    await until(lambda: logged(caplog, "changed while running"), 10, 0.05, "the change logged")
    assert logged(caplog, "changed while running") == [{"partitions": 6, "partitions_before": 4}]
    # Counted for the alert (PinecallBridgeTopicPartitionsChanged), the start's 4 not.
    metrics = await scrape(bridge.session, bridge.url)
    assert metrics[changes(topics.ingest)] == 1
    assert metrics[changes(topics.events)] == 0
    # A call of each partition, the new ones among them, reaches the output topic.
    calls = [call_on(partition, 6, unique_call) for partition in range(6)]
    for call in calls:
        assert (await bridge.post(entry(1, call=call)))[0] == 200
    wanted = {f"{call}:1" for call in calls}
    await consume_until(
        kafka_bootstrap,
        [topics.events],
        lambda records: wanted <= {r.json().get("id") for r in records},
    )


def missing_topic_retries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The bridge's failed attempts to connect, each for a topic the broker does not know."""
    return [
        r
        for r in caplog.records
        if r.getMessage().startswith("Kafka not ready yet")
        and "UnknownTopicOrPartition" in str(getattr(r, "error", ""))
    ]


def logged(caplog: pytest.LogCaptureFixture, words: str) -> list[dict[str, int]]:
    """The partition facts of each log record whose message has `words`."""
    facts = ("partitions", "configured", "partitions_before")
    return [
        {name: getattr(r, name) for name in facts if hasattr(r, name)}
        for r in caplog.records
        if words in r.getMessage()
    ]


async def test_an_ingest_topic_made_elsewhere_that_would_lose_ids_is_logged_with_its_fixes(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {
        "message.timestamp.type": "CreateTime",
        "retention.ms": "60000",
        "retention.bytes": "1073741824",
        "cleanup.policy": "compact,delete",
    }
    await create_topic(kafka_bootstrap, topics.ingest, 3, config)
    caplog.set_level(logging.ERROR, logger="bridge.service")
    await start_bridge()
    problems = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the ingest")]
    assert [p.split(" ")[3] for p in problems] == [
        "message.timestamp.type",
        "retention.ms",
        "retention.bytes",
        "cleanup.policy",
    ]


async def test_an_output_topic_made_elsewhere_that_refuses_every_write_is_logged(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The broker checks min.insync.replicas only at a write: the start says it first. (Its
    # other problem, the leader alone acknowledging, needs brokers this test does not have.)
    await create_topic(kafka_bootstrap, topics.events, 3, {"min.insync.replicas": "2"})
    caplog.set_level(logging.WARNING, logger="bridge.service")
    await start_bridge()
    told = [
        (r.levelname, getattr(r, "topic", None), getattr(r, "replication_factor", None))
        for r in caplog.records
        if "min.insync.replicas" in r.getMessage()
    ]
    assert told == [("ERROR", topics.events, 1)]


async def test_a_compacted_dead_letter_topic_is_said_and_stalls_no_ingest_partition(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Compaction refuses a record without a key, and dead letters have none: each was sent again
    # at every retry of its transaction, and every call of its ingest partitions waited for good.
    await create_topic(kafka_bootstrap, topics.dlq, 3, {"cleanup.policy": "compact"})
    caplog.set_level(logging.ERROR, logger="bridge")
    bridge: RunningBridge = await start_bridge()
    assert [r.__dict__["topic"] for r in said(caplog, "output topic's cleanup.policy")] == [
        topics.dlq
    ]
    assert (await bridge.post(b'{"not": "an event"}'))[0] == 202
    calls = [call_on(p, 3, unique_call) for p in range(3)]
    for call in calls:
        assert (await bridge.post(entry(1, call=call)))[0] == 200
    events = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert sorted(r.json()["id"] for r in events) == sorted(f"{call}:1" for call in calls)
    metrics = await until_metrics(
        bridge, lambda m: m.get("pinecall_bridge_dedup_output_keyless_refused_total") == 1
    )
    assert metrics.get(problem(topics.dlq, "compacted")) == 1


async def test_alter_topic_changes_what_it_is_given_and_keeps_the_topics_other_configs(
    topics: Topics, kafka_bootstrap: str
) -> None:
    # The test helper: a plain AlterConfigs would reset the timestamp type to CreateTime.
    kept = {"message.timestamp.type": "LogAppendTime", "retention.ms": "86400000"}
    await create_topic(kafka_bootstrap, topics.ingest, 1, kept)
    await alter_topic(kafka_bootstrap, topics.ingest, {"retention.ms": "60000"})
    assert await topic_config(kafka_bootstrap, topics.ingest, own=True) == {
        **kept,
        "retention.ms": "60000",
    }


async def watching(
    start_bridge: Callable[..., Any], caplog: pytest.LogCaptureFixture, **settings: Any
) -> RunningBridge:
    """A bridge checking its topics every 0.2 s, its INFO lines captured; `settings` its others
    (`dedup` among them: added to)."""
    caplog.set_level(logging.INFO, logger="bridge")
    dedup = {"topic_check_seconds": 0.2, **settings.pop("dedup", {})}
    bridge: RunningBridge = await start_bridge(dedup=dedup, **settings)
    return bridge


async def deleted(
    bridge: RunningBridge, caplog: pytest.LogCaptureFixture, bootstrap: str, topic: str, words: str
) -> str:
    """Delete `topic` under `bridge`; once it said `words` and counts it missing, that series."""
    async with admin_client(bootstrap) as admin:
        await admin.delete_topics([topic])
    await until(lambda: said(caplog, words), within=30)
    missing = problem(topic, "missing")
    await until_metrics(bridge, lambda m: m.get(missing) == 1)
    return missing


async def test_an_ingest_retention_shortened_while_running_is_logged_once_and_its_fix_too(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await watching(start_bridge, caplog)
    good = (await topic_config(kafka_bootstrap, topics.ingest))["retention.ms"]
    # An admin's change: a restore after a crash can no longer see a whole TTL of ids.
    await alter_topic(kafka_bootstrap, topics.ingest, {"retention.ms": "60000"})
    await until(lambda: said(caplog, "retention.ms"), within=30)
    # Shown to whoever watches dashboards and alerts, not only the log.
    short = problem(topics.ingest, "retention_ms")
    await until_metrics(bridge, lambda m: m.get(short) == 1)
    await alter_topic(kafka_bootstrap, topics.ingest, {"retention.ms": good})
    await until(lambda: gone(caplog, "retention.ms"), within=30)
    await until_metrics(bridge, lambda m: m.get(short) == 0)
    # Said once each, however many checks saw it meanwhile.
    assert (len(said(caplog, "retention.ms")), len(gone(caplog, "retention.ms"))) == (1, 1)


async def test_an_output_topic_deleted_while_running_is_said_and_its_events_wait_for_it(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await watching(start_bridge, caplog)
    missing = await deleted(bridge, caplog, kafka_bootstrap, topics.events, WAIT)
    # The ingest topic has it: taken, and output once the topic exists again.
    assert (await bridge.post(entry(1, call=unique_call)))[0] == 200
    await create_topic(kafka_bootstrap, topics.events, 3)
    events = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert [r.json()["id"] for r in events] == [f"{unique_call}:1"]
    await until(lambda: gone(caplog, "cannot be read while running"), within=30)
    metrics = await until_metrics(bridge, lambda m: m.get(missing) == 0)
    # Only the deleted topic was ever a problem: no other series.
    assert [k for k in metrics if k.startswith("pinecall_bridge_topic_problem{")] == [missing]
    assert [r.__dict__["topic"] for r in said(caplog, "cannot be read while running")] == [
        topics.events
    ]


async def test_an_output_topic_made_again_unlike_the_start_checked_it_is_said_and_shown(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Made again by an admin with fewer partitions and a min.insync.replicas above its replicas:
    # the start would have said both, the checks while running said only that it was back.
    bridge = await watching(start_bridge, caplog)
    await deleted(bridge, caplog, kafka_bootstrap, topics.events, WAIT)
    await create_topic(kafka_bootstrap, topics.events, 1, {"min.insync.replicas": "2"})
    refusing = problem(topics.events, "unwritable")
    await until_metrics(bridge, lambda m: m.get(refusing) == 1)
    moved = "an output topic's partition count changed while running"
    await until(lambda: said(caplog, moved), within=30)
    await alter_topic(kafka_bootstrap, topics.events, {"min.insync.replicas": "1"})
    await until(lambda: gone(caplog, "min.insync.replicas"), within=30)
    await until_metrics(bridge, lambda m: m.get(refusing) == 0)
    # Each said once, however many checks saw it meanwhile, with what to look at.
    [unwritable] = said(caplog, "min.insync.replicas")
    assert (unwritable.__dict__["topic"], unwritable.__dict__["replication_factor"]) == (
        topics.events,
        1,
    )
    [count] = said(caplog, moved)
    assert (count.__dict__["topic"], count.__dict__["partitions"]) == (topics.events, 1)
    assert count.__dict__["partitions_before"] == 3
    # Counted for the alert too, once, and for that topic only.
    metrics = await scrape(bridge.session, bridge.url)
    counted = {k: v for k, v in metrics.items() if k.startswith(CHANGED) and v}
    assert counted == {changes(topics.events): 1}


async def test_a_dead_letter_topic_deleted_while_running_holds_its_letters_not_the_events(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await watching(start_bridge, caplog)
    missing = await deleted(bridge, caplog, kafka_bootstrap, topics.dlq, WAIT)
    # Taken: the ingest topic has it. Its transaction fails until the topic is back, and with it
    # the events of its ingest partition only; those of the others are output meanwhile.
    assert (await bridge.post(b'{"not": "an event"}'))[0] == 202
    calls = [call_on(p, 3, unique_call) for p in range(3)]
    for call in calls:
        assert (await bridge.post(entry(1, call=call)))[0] == 200
    await consume_until(kafka_bootstrap, [topics.events], lambda r: len(r) >= 2)
    await create_topic(kafka_bootstrap, topics.dlq, 3)
    records = await read_decided(kafka_bootstrap, topics, [topics.events, topics.dlq])
    assert sorted(r.value for r in records if r.topic == topics.dlq) == [b'{"not": "an event"}']
    assert sorted(r.json()["id"] for r in records if r.topic == topics.events) == sorted(
        f"{call}:1" for call in calls
    )
    await until(lambda: gone(caplog, "cannot be read while running"), within=30)
    await until_metrics(bridge, lambda m: m.get(missing) == 0)


@pytest.fixture(scope="module")
def auto_creating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker that creates a topic a producer names (Kafka's default; the shared one does not),
    with one partition and CreateTime, as Kafka's defaults are."""
    overlay = "auto.create.topics.enable=true\nnum.partitions=1\n"
    with own_broker(tmp_path_factory.mktemp("kafka-auto-create"), overlay) as own:
        yield own


@pytest.mark.timeout(240)
async def test_an_ingest_topic_deleted_where_topics_are_auto_created_is_said_and_loses_nothing(
    auto_creating: Broker,
    start_bridge: Callable[..., Any],
    topics: Topics,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bootstrap = auto_creating.bootstrap
    bridge = await watching(start_bridge, caplog, bootstrap=bootstrap)
    calls = [call_on(p, 3, unique_call) for p in range(3)]
    for call in calls:
        assert (await bridge.post(entry(1, call=call)))[0] == 200
    await read_decided(bootstrap, topics, [topics.events])
    async with admin_client(bootstrap) as admin:
        await admin.delete_topics([topics.ingest])
    # The ingest producer's next send creates it again at once, with the cluster's defaults:
    # taken (2xx) in that topic, and output from it.
    for call in calls:
        assert (await bridge.post(entry(2, call=call)))[0] == 200
    assert await describe(bootstrap, [topics.ingest]) == {topics.ingest: 1}
    events = await read_decided(bootstrap, topics, [topics.events])
    assert sorted(r.json()["id"] for r in events) == sorted(
        f"{call}:{n}" for call in calls for n in (1, 2)
    )
    # Said by what the new topic is not: its partition count, and a timestamp type by which a
    # restore misses ids.
    changed = "partition count changed while running"
    await until(lambda: said(caplog, changed), within=30)
    await until_metrics(bridge, lambda m: m.get(problem(topics.ingest, "timestamp_type")) == 1)


@pytest.mark.timeout(240)
async def test_an_output_topic_deleted_where_topics_are_auto_created_is_not_made_by_the_check(
    auto_creating: Broker,
    start_bridge: Callable[..., Any],
    topics: Topics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The check's replication factors are a Metadata request, which aiokafka's describe_topics
    # sends allowing auto-creation: asked of a deleted topic, it made it again with the cluster's
    # defaults. The hang watch off: its readers' metadata of the topic would make it too.
    bootstrap = auto_creating.bootstrap
    bridge = await watching(
        start_bridge,
        caplog,
        bootstrap=bootstrap,
        dedup={"hanging_check_seconds": 0},
    )
    missing = await deleted(bridge, caplog, bootstrap, topics.alerts, WAIT)
    await asyncio.sleep(2)  # ten more checks; nothing writes the topic
    async with admin_client(bootstrap) as admin:
        assert topics.alerts not in await admin.list_topics()
    assert (await scrape(bridge.session, bridge.url))[missing] == 1
    assert not gone(caplog, "cannot be read while running")


@pytest.mark.timeout(240)
async def test_a_record_naming_a_missing_topic_creates_none_where_topics_are_auto_created(
    auto_creating: Broker, start_bridge: Callable[..., Any], topics: Topics, unique_call: str
) -> None:
    """An ingest record naming a topic the stage is not configured with and that does not exist
    is skipped: its send made the topic, with the cluster's defaults, and output it there."""
    bootstrap = auto_creating.bootstrap
    bridge: RunningBridge = await start_bridge(bootstrap=bootstrap)
    nowhere = topics.events + ".removed"
    await write_ingest(bootstrap, ingest_records(topics, unique_call, [1], nowhere))
    assert (await bridge.post(entry(2, call=unique_call)))[0] == 200
    events = await read_decided(bootstrap, topics, [topics.events])
    assert [r.json()["id"] for r in events] == [f"{unique_call}:2"]
    unknown = "pinecall_bridge_dedup_output_unknown_topic_total"
    await until_metrics(bridge, lambda m: m.get(unknown) == 1)
    async with admin_client(bootstrap) as admin:
        assert nowhere not in await admin.list_topics()


CHANGED = "pinecall_bridge_topic_partitions_changed_total"


def changes(topic: str) -> str:
    """The `topic_partitions_changed` series of `topic`, as scraped."""
    return f'{CHANGED}{{topic="{topic}"}}'


def problem(topic: str, kind: str) -> str:
    """The `topic_problem` series of `topic` and `kind`, as scraped."""
    return f'pinecall_bridge_topic_problem{{problem="{kind}",topic="{topic}"}}'


def said(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    """The topic problems logged (ERROR) whose message has `words`."""
    return [r for r in caplog.records if r.levelno == logging.ERROR and words in r.getMessage()]


def gone(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    """The topic problems logged as gone whose problem has `words`."""
    return [
        r
        for r in caplog.records
        if r.getMessage() == "a topic's problem is gone" and words in getattr(r, "problem", "")
    ]


async def test_an_ingest_topic_deleted_while_running_is_refused_said_and_taken_again(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await watching(start_bridge, caplog, kafka={"publish_timeout_seconds": 2})
    before = [entry(n, call=unique_call) for n in range(1, 6)]
    for item in before:
        assert (await bridge.post(item))[0] == 200
    await read_decided(kafka_bootstrap, topics, [topics.events])
    refused = "answered 503 until it exists again"
    await deleted(bridge, caplog, kafka_bootstrap, topics.ingest, refused)
    status, body = await bridge.post(entry(6, call=unique_call))
    assert (status, body.get("error")) == (503, "kafka_unavailable")
    # Ready on purpose (README, "The ingest topic deleted"): the timeout above turned it unready
    # until the next metadata probe only.
    await until(lambda: answers_ready(bridge.session, bridge.url), within=30)
    await create_topic(
        kafka_bootstrap, topics.ingest, 3, {"message.timestamp.type": "LogAppendTime"}
    )
    await until(lambda: gone(caplog, "cannot be read while running"), within=30)
    # The new topic holds none of the ids the dedup stage restores from: a late copy of 5 (its
    # first copy output before the deletion) is output again, and that is said.
    assert [r.__dict__["topic"] for r in caplog.records if r.getMessage() == INGEST_RECREATED] == [
        topics.ingest
    ]
    for n in (5, 6, 7, 8):
        assert (await bridge.post(entry(n, call=unique_call)))[0] == 200
    events = await read_decided(kafka_bootstrap, topics, [topics.events])
    # Each once otherwise: the group's offsets went with the topic, and the stage took the new
    # one from its start (neither skipped past its records nor stuck at the old offsets). 6,
    # answered 503, may have reached the new topic by the producer's retries before its copy.
    ids = sorted(r.json()["id"] for r in events)
    assert ids == sorted(f"{unique_call}:{n}" for n in (1, 2, 3, 4, 5, 5, 6, 7, 8))
