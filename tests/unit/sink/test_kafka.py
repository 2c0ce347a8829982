import asyncio
import logging
import ssl
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiokafka.client
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import BrokerMetadata
from aiokafka.conn import CloseReason
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    OutOfOrderSequenceNumber,
    UnknownTopicOrPartitionError,
)
from aiokafka.protocol.commit import OffsetFetchResponse_v3
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from bridge.config import KafkaSettings, TopicSettings
from bridge.metrics import Metrics
from bridge.sink import kafka
from bridge.sink.clienttasks import REPLACE_ATTEMPTS, producer_died
from bridge.sink.kafka import (
    KafkaSink,
    Record,
    TopicSpec,
    admin_client,
    brokers_config_ints,
    brokers_least_config_int,
    client_options,
    offsets_answer,
    topic_configs,
    topic_layouts,
)
from bridge.sink.limits import PRODUCE_REQUEST_OVERHEAD_BYTES
from tests.metrics import sample
from tests.polling import until
from tests.unit.sink.fakes import (
    Connections,
    FakeAdmin,
    FakeConnection,
    FakeProducer,
    StuckProducer,
    throttled,
)

# The producer's liveness below: replaced when aiokafka's sender task dies (aiokafka#1038 under
# uvloop), probed with metadata for its own topics. No test here talks to a broker.
pytestmark = pytest.mark.usefixtures("fake_producer")
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
RECORD = Record("t", b"k", b"v")


def test_plaintext_options() -> None:
    options = client_options(KafkaSettings(bootstrap_servers=["k:9092"]))
    assert options["bootstrap_servers"] == ["k:9092"]
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options
    assert "sasl_mechanism" not in options


def test_sasl_scram_options() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="bridge",
        sasl_password="pw",
    )
    options = client_options(settings)
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "bridge",
    )
    assert options["sasl_plain_password"] == "pw"


@pytest.mark.skipif(not SYSTEM_CA.is_file(), reason="no system CA bundle on this machine")
def test_tls_options_build_a_context() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_username="u",
        sasl_password="p",
        ssl_cafile=SYSTEM_CA,
    )
    options = client_options(settings)
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


@pytest.mark.skipif(not SYSTEM_CA.is_file(), reason="no system CA bundle on this machine")
def test_every_client_shares_the_tls_files_as_loaded_at_start(tmp_path: Path) -> None:
    # Each client loaded the files as it was built: a producer replaced after a CA renewed in
    # place trusted the new one while the dedup stage's clients kept the start's.
    cafile = tmp_path / "ca.pem"
    bundle = SYSTEM_CA.read_text()
    cafile.write_text(bundle)
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=cafile)  # the start loads them
    at_start = client_options(settings)["ssl_context"]
    trusted = len(at_start.get_ca_certs())
    renewed = bundle[: bundle.index("-----END CERTIFICATE-----")] + "-----END CERTIFICATE-----\n"
    cafile.write_text(renewed)  # one certificate of the bundle's
    rebuilt = client_options(settings)["ssl_context"]
    assert rebuilt is at_start
    assert len(rebuilt.get_ca_certs()) == trusted > 1


async def test_stop_before_start_and_twice_is_safe() -> None:
    metrics = Metrics()
    sink = KafkaSink(KafkaSettings(), metrics)
    await sink.stop()
    await sink.stop()
    assert metrics.registry.get_sample_value("pinecall_bridge_kafka_connected") == 0


async def test_a_stop_cut_by_its_callers_bound_leaves_no_pending_sender() -> None:
    # The shutdown bounds the flush to its share of the grace period (a partition without a
    # leader: idempotent batches never expire): the cut stop must not leave the client open.
    sink = await started_sink(Metrics())
    await FakeProducer.made[0].stop()
    stuck = StuckProducer()
    sink._producer = stuck
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await sink.stop()
    assert stuck.client_closed
    assert stuck._sender.sender_task.cancelled()


async def test_send_without_producer_raises() -> None:
    sink = KafkaSink(KafkaSettings(), Metrics())
    with pytest.raises(Exception, match="not running"):
        await sink.send(Record("t", None, b"v"))


def restarts(metrics: Metrics, client: str = "ingest_producer") -> float | None:
    return metrics.registry.get_sample_value(
        "pinecall_bridge_kafka_client_restarts_total", {"client": client}
    )


async def started_sink(
    metrics: Metrics,
    probe_seconds: float = 60.0,
    role: str = "ingest_producer",
    settings: KafkaSettings | None = None,
) -> KafkaSink:
    # Not validated: the fakes answer at once, so probes below the setting's floor serve.
    base = settings if settings is not None else KafkaSettings()
    chosen = base.model_copy(update={"metadata_probe_seconds": probe_seconds})
    sink = KafkaSink(chosen, metrics, role=role)
    await sink.start()
    return sink


# A backfill's or redrive's producer is no webhook path's: its restarts are its own.
@pytest.mark.parametrize("role", ["ingest_producer", "backfill"])
async def test_a_dead_sender_is_found_by_the_next_send_and_the_producer_replaced(
    role: str,
) -> None:
    metrics = Metrics()
    # A probe interval far beyond the test: only the failed send can have woken the replacement.
    sink = await started_sink(metrics, role=role)
    first = FakeProducer.made[0]
    first.kill()
    await until(lambda: producer_died(first) is not None)
    assert sink.connected  # the bug: the cluster answers metadata, so nothing looked wrong

    with pytest.raises(KafkaError):
        await sink.send(RECORD)
    await until(lambda: len(FakeProducer.made) == 2 and sink.connected)

    await (await sink.send(RECORD))
    assert FakeProducer.made[1].sent == [b"v"]
    assert first.stopped
    assert restarts(metrics, role) == 1
    assert sink.alive
    await sink.stop()


def throttling(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    """The sink's producers built with a broker answering each request throttled `ms` ms."""

    class Throttled(FakeProducer):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.client.send = Connections(throttled(ms)).send  # type: ignore[method-assign]

    monkeypatch.setattr(kafka, "AIOKafkaProducer", Throttled)


async def test_a_tools_producer_counts_its_throttle_under_its_own_role(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backfill's producer (client id `<id>-backfill`) is not the webhooks' ingest producer."""
    throttling(monkeypatch, 120)
    metrics = Metrics()
    sink = KafkaSink(KafkaSettings(client_id_per_role=True), metrics, role="backfill")
    await sink.start()
    try:
        await FakeProducer.made[0].client.send(0, "produce")
    finally:
        await sink.stop()
    name = "pinecall_bridge_kafka_throttle_seconds_total"
    assert sample(metrics, name, client="backfill") == pytest.approx(0.12)
    assert sample(metrics, name, client="ingest_producer") == 0


async def test_a_sequence_gap_has_the_producer_replaced() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics)  # no probe within the test: the refusal wakes it
    first = FakeProducer.made[0]
    # A timeout says nothing about the producer; an out-of-order answer means every later
    # record of that partition would be refused too, while the producer looks alive.
    first.refusals = [KafkaTimeoutError(), OutOfOrderSequenceNumber()]
    with pytest.raises(KafkaTimeoutError):
        await (await sink.send(RECORD))
    await asyncio.sleep(0.05)
    assert len(FakeProducer.made) == 1
    with pytest.raises(OutOfOrderSequenceNumber):
        await (await sink.send(RECORD))
    await until(lambda: len(FakeProducer.made) == 2 and sink.connected)
    await (await sink.send(RECORD))
    assert FakeProducer.made[1].sent == [b"v"]
    assert first.stopped
    assert restarts(metrics) == 1
    # The old producer's late refusals do not take its successor down too.
    late: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    late.set_exception(OutOfOrderSequenceNumber())
    sink._check_delivery(cast(AIOKafkaProducer, first), late)
    await asyncio.sleep(0.05)
    assert len(FakeProducer.made) == 2
    await sink.stop()


def broker_offset_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("pinecall_bridge_broker_clock_offset_seconds")


async def test_a_broker_clock_beyond_the_skew_allowance_is_gauged_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A replica 10 minutes ahead of the brokers: its restores read back the TTL by its own
    # clock, missing 9 minutes of ids, and nothing said so.
    metrics = Metrics()
    sink = await started_sink(metrics)
    producer = FakeProducer.made[0]
    producer.appended_at = int((time.time() - 600) * 1000)
    with caplog.at_level("WARNING", logger=kafka.__name__):
        await (await sink.send(RECORD))
        await asyncio.sleep(0)  # the ack's callbacks run after its awaiter
    offset = broker_offset_gauge(metrics)
    assert offset is not None
    assert -601 < offset < -599
    [line] = [r for r in caplog.records if "clock skew allowance" in r.getMessage()]
    assert line.levelname == "WARNING"
    caplog.clear()
    # Synchronised again: the gauge follows, nothing said.
    producer.appended_at = int(time.time() * 1000)
    with caplog.at_level("WARNING", logger=kafka.__name__):
        await (await sink.send(RECORD))
        await asyncio.sleep(0)
    assert abs(broker_offset_gauge(metrics) or 0.0) < 0.01
    assert not [r for r in caplog.records if "clock skew allowance" in r.getMessage()]
    await sink.stop()


async def test_the_broker_clock_gauge_is_set_when_the_offset_changes_not_per_ack() -> None:
    # Most acks repeat the last offset (0 with synced clocks); a set takes the gauge's lock.
    metrics = Metrics()
    sink = await started_sink(metrics)
    gauge = metrics.broker_clock_offset
    real_set = gauge.set
    sets: list[float] = []

    def counted(value: float) -> None:
        sets.append(value)
        real_set(value)

    gauge.set = counted  # type: ignore[method-assign]
    sent_at = time.time()
    for appended_at in (sent_at, sent_at, sent_at - 600, sent_at - 600, sent_at):
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ack.set_result(SimpleNamespace(timestamp=appended_at * 1000, timestamp_type=1))
        sink._check_delivery(cast(AIOKafkaProducer, FakeProducer.made[0]), ack, sent_at=sent_at)
    assert sets == pytest.approx([0.0, -600.0, 0.0], abs=1e-6)
    assert broker_offset_gauge(metrics) == pytest.approx(0.0, abs=1e-6)
    await sink.stop()


async def test_an_ack_without_log_append_time_leaves_the_broker_clock_unjudged() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics)
    late: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    # CreateTime: the timestamp is the producer's own, which says nothing of the broker's clock.
    late.set_result(SimpleNamespace(timestamp=0, timestamp_type=0))
    sink._check_delivery(cast(AIOKafkaProducer, FakeProducer.made[0]), late, sent_at=time.time())
    assert broker_offset_gauge(metrics) == 0.0
    await sink.stop()


async def test_the_probe_finds_a_dead_sender_without_any_send() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics, probe_seconds=0.01)
    FakeProducer.made[0].kill()
    await until(lambda: restarts(metrics) == 1)
    assert sink.connected
    assert sink.alive
    await sink.stop()


async def test_the_probe_asks_for_its_own_topics_and_follows_the_answer() -> None:
    # The probe used to fetch every topic's metadata, decoded on the event loop at each probe.
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    client = FakeProducer.made[0].client
    await until(lambda: client.updates >= 2)
    assert sink.connected
    client.answers = False
    await until(lambda: not sink.connected)
    client.answers = True
    await until(lambda: sink.connected)
    assert sink.alive
    await sink.stop()


async def test_the_probe_closes_the_connections_to_a_broker_gone_from_the_metadata() -> None:
    # A fenced broker whose host vanished: requests in flight to it would wait out the request
    # timeout, after its partitions' leaders moved.
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    client = FakeProducer.made[0].client
    gone, staying, bootstrap = FakeConnection(), FakeConnection(), FakeConnection()
    client._conns.update({(2, 0): gone, (1, 0): staying, ("bootstrap", 0): bootstrap})
    client.cluster.listed = {1, 3}
    await until(lambda: not gone.connected())
    assert gone.closed_for == CloseReason.CONNECTION_BROKEN
    assert staying.connected()
    assert bootstrap.connected()
    assert sink.connected
    await sink.stop()


async def test_each_answered_probe_is_reported_with_the_metadata_it_read() -> None:
    seen: list[int] = []
    sink = KafkaSink(
        # Below the floor: the fake answers at once.
        KafkaSettings().model_copy(update={"metadata_probe_seconds": 0.01}),
        Metrics(),
        after_probe=lambda: seen.append(sink.partition_count("ingest")),
    )
    assert sink.partition_count("ingest") == 0  # no producer, no metadata
    await sink.start()
    client = FakeProducer.made[0].client
    await until(lambda: 0 in seen)  # the topic is not in the metadata yet
    client.cluster.partitions["ingest"] = {0, 1, 2}
    await until(lambda: 3 in seen)
    client.answers = False
    await until(lambda: not sink.connected)
    reported, updates = len(seen), client.updates
    await until(lambda: client.updates >= updates + 3)
    assert len(seen) == reported  # an unanswered probe read nothing worth reporting
    client.answers = True
    await until(lambda: len(seen) > reported)
    await sink.stop()
    assert sink.partition_count("ingest") == 0


async def test_repeated_failed_replacements_report_the_process_dead() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics, probe_seconds=0.01)
    FakeProducer.start_errors = [KafkaError("refused") for _ in range(REPLACE_ATTEMPTS)]
    FakeProducer.made[0].kill()
    await until(lambda: not sink.alive)
    assert not sink.connected
    assert restarts(metrics) == 0
    # Once a replacement succeeds, the process is alive again.
    await until(lambda: sink.alive and sink.connected)
    assert restarts(metrics) == 1
    await sink.stop()


async def test_an_outage_during_replacement_never_reports_the_process_dead() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics, probe_seconds=0.01)
    outage = [KafkaConnectionError("Unable to bootstrap") for _ in range(REPLACE_ATTEMPTS * 3)]
    FakeProducer.start_errors = list(outage)
    FakeProducer.made[0].kill()
    await until(lambda: not FakeProducer.start_errors)
    assert sink.alive
    await until(lambda: sink.connected)
    assert restarts(metrics) == 1
    await sink.stop()


async def test_an_outage_during_replacement_logs_its_tries_once_and_then_a_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The broker stopped under load: the producer died and its replacement was tried at every
    # probe, each try an ERROR and a WARNING, for the whole outage.
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    FakeProducer.start_errors = [KafkaConnectionError("Unable to bootstrap") for _ in range(20)]
    with caplog.at_level(logging.INFO, logger="bridge.sink.kafka"):
        FakeProducer.made[0].kill()
        await until(lambda: sink.connected and not FakeProducer.start_errors)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "replac" in r.getMessage()]
    assert said == [
        ("ERROR", "the Kafka producer cannot send; replacing the producer"),
        ("WARNING", "could not replace the Kafka producer yet"),
        ("ERROR", said[2][1]),
        ("WARNING", said[3][1]),
        ("INFO", "Kafka producer replaced"),
    ]
    # Held back until the replacement, every try counted: 21 tries, of which 20 failed.
    assert said[2][1].startswith("the Kafka producer cannot send; replacing the producer: 20 more")
    assert said[3][1].startswith(
        "could not replace the Kafka producer yet (KafkaConnectionError): 19 more"
    )
    await sink.stop()


async def replacements_tried(tries: int) -> None:
    """Until `tries` more producers were made: each, a try to replace a dead one."""
    made = len(FakeProducer.made)
    await until(lambda: len(FakeProducer.made) >= made + tries)


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the sink said of readiness and of its producer's replacement, in order."""
    said = ("Kafka unreachable", "Kafka reachable again", "Kafka producer replaced")
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(said)]


async def test_one_outage_and_its_recovery_say_unreachable_once_and_reachable_again_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Kafka away under load: the probe and the publishes both find it, the producer's sender
    # dies, and its replacement is tried until Kafka is back. An acknowledgement of a record sent
    # before the death, counted meanwhile, said "reachable again" mid-outage (the pod ready with a
    # dead producer), once for each try; the replacement that ended the outage said nothing.
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    first = FakeProducer.made[0]
    with caplog.at_level(logging.INFO, logger="bridge.sink.kafka"):
        first.client.answers = False
        await until(lambda: not sink.connected)
        sink.mark_unreachable()  # a publish timed out too
        FakeProducer.start_errors = [KafkaConnectionError("Unable to bootstrap")] * 10**6
        first.kill()
        ready_meanwhile = []
        for _ in range(2):
            await replacements_tried(2)
            sink.mark_reachable()  # a delivery of the dead producer's records, settled late
            ready_meanwhile.append(sink.connected)
        FakeProducer.start_errors = []
        await until(lambda: sink.connected)
        sink.mark_reachable()
    assert outage_lines(caplog) == [
        "Kafka unreachable",
        "Kafka producer replaced",
        "Kafka reachable again",
    ]
    assert ready_meanwhile == [False, False]
    await sink.stop()


async def test_a_dead_producers_replacement_without_an_outage_says_no_reachable_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # aiokafka#1038: the sender died of a reset connection, Kafka never away. Its replacement
    # says so (ERROR, then "replaced"); "reachable again" would answer no "unreachable".
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    with caplog.at_level(logging.INFO, logger="bridge.sink.kafka"):
        FakeProducer.made[0].kill()
        await until(lambda: len(FakeProducer.made) == 2 and sink.connected)
        sink.mark_reachable()
    assert outage_lines(caplog) == ["Kafka producer replaced"]
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_dead_producer_rebuilt_for_a_smaller_limit_counts_as_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Kafka away: the dead producer's replacement was tried, its lines thinned. Kafka back, a
    # rebuild for a lowered limit (a size refusal read it again) took the dead producer's place
    # before the next try: what was held back went unsaid, the next death's first line was held
    # back too (the thinning was never reset), and the restart went uncounted.
    metrics = Metrics()
    sink = KafkaSink(KafkaSettings(max_batch_bytes=200_000, metadata_probe_seconds=60), metrics)
    await sink.start()
    first = FakeProducer.made[0]
    FakeProducer.start_errors = [KafkaConnectionError("Unable to bootstrap")] * 10**6
    with caplog.at_level(logging.INFO, logger="bridge.sink.kafka"):
        first.kill()
        for _ in range(2):
            sink._wake.set()  # as a send finding it dead does: tried now
            await replacements_tried(1)
        FakeProducer.start_errors = []
        FakeAdmin.values = {"max.message.bytes": "65536"}
        await sink.learn_limits(["ingest"], writes=["ingest"])
        rebuilt = cast(FakeProducer, sink._producer)
        assert rebuilt.options["max_batch_size"] == 65_536
        ready_when_rebuilt = sink.connected
        rebuilt.kill()
        sink._wake.set()
        await until(lambda: sink._producer is not rebuilt and sink.connected)
    said = [
        (r.levelname, r.getMessage().split(" in the last ")[0])  # a summary's span cut off
        for r in caplog.records
        if "replac" in r.getMessage()
    ]
    assert said == [
        ("ERROR", "the Kafka producer cannot send; replacing the producer"),
        ("WARNING", "could not replace the Kafka producer yet"),
        ("ERROR", "the Kafka producer cannot send; replacing the producer: 1 more like this"),
        (
            "WARNING",
            "could not replace the Kafka producer yet (KafkaConnectionError): 1 more like this",
        ),
        ("INFO", "Kafka producer replaced"),
        ("ERROR", "the Kafka producer cannot send; replacing the producer"),
        ("INFO", "Kafka producer replaced"),
    ]
    assert restarts(metrics) == 2
    assert ready_when_rebuilt
    assert first.stopped
    await sink.stop()


async def test_records_a_dead_producer_held_fail_when_it_is_replaced() -> None:
    # Its sender gone, nothing would ever answer them: their waiters and the in-flight count
    # would wait for ever.
    metrics = Metrics()
    sink = await started_sink(metrics)
    first = FakeProducer.made[0]
    first.hold = True
    held = await sink.send(RECORD)
    first.kill()
    await until(lambda: producer_died(first) is not None)
    with pytest.raises(KafkaError):
        await sink.send(RECORD)
    await until(lambda: len(FakeProducer.made) == 2 and sink.connected)
    await until(held.done)
    assert isinstance(held.exception(), KafkaConnectionError)
    await sink.stop()


async def test_one_timed_out_record_among_acknowledged_ones_is_not_an_outage() -> None:
    # A partition without a leader while the others answer: readiness must not flap with it.
    sink = await started_sink(Metrics())
    seen = []
    sink.mark_reachable()  # an acknowledgement just now
    sink.mark_unreachable()
    seen.append(sink.connected)
    sink._last_ack -= 20.0  # nothing acknowledged for longer than the publish timeout (10 s)
    sink.mark_unreachable()
    seen.append(sink.connected)
    sink.mark_reachable()
    seen.append(sink.connected)
    assert seen == [True, False, True]
    await sink.stop()


OPTIONS = client_options(KafkaSettings())
INSYNC = ("min.insync.replicas",)


@pytest.mark.usefixtures("fake_admin")
async def test_topics_are_created_one_a_request_so_their_partitions_never_add_up() -> None:
    # In one request, three output topics of 4000 partitions each were refused by a KRaft
    # controller (at most 10000 partitions a request), every start: none was ever made.
    FakeAdmin.brokers = {1: {}}
    sink = KafkaSink(KafkaSettings(), Metrics())
    names = ["events", "alerts", "dlq"]
    specs = [TopicSpec(name) for name in names] + [TopicSpec("ingest", partitions=1000)]
    created = await sink.ensure_topics(TopicSettings(partitions=4000), specs)
    assert created == {*names, "ingest"}
    assert FakeAdmin.made[0].creates == [
        {"events": 4000},
        {"alerts": 4000},
        {"dlq": 4000},
        {"ingest": 1000},
    ]


@pytest.mark.usefixtures("fake_admin")
async def test_topics_created_before_a_later_creation_failed_are_fresh_at_the_next_try() -> None:
    # The retried start finds them existing: unless still said created, its reads did not wait
    # for a broker to know them, and took one not known yet for a missing topic.
    FakeAdmin.brokers, FakeAdmin.lost = {1: {}}, {"alerts"}
    sink = KafkaSink(KafkaSettings(), Metrics())
    specs = [TopicSpec(name) for name in ("events", "alerts", "dlq")]
    with pytest.raises(KafkaConnectionError):
        await sink.ensure_topics(TopicSettings(), specs)
    created = await sink.ensure_topics(TopicSettings(), specs)
    assert created == {"events", "alerts", "dlq"}
    assert FakeAdmin.made[1].creates == [{"alerts": 3}, {"dlq": 3}]


@pytest.mark.usefixtures("fake_admin")
async def test_a_topic_just_created_is_read_again_until_its_broker_knows_it() -> None:
    # The metadata of a topic just created takes a moment to reach every broker: a read before
    # that says UnknownTopicOrPartition, which used to pass for a refused DescribeConfigs.
    FakeAdmin.late, FakeAdmin.misses = {"fresh"}, 2
    read = await topic_configs(OPTIONS, ["old", "fresh"], INSYNC, fresh={"fresh"})
    assert read.found == {name: {"min.insync.replicas": "1"} for name in ("old", "fresh")}
    assert read.errors == {}
    assert FakeAdmin.made[0].asked == [["old", "fresh"], ["fresh"], ["fresh"]]


@pytest.mark.usefixtures("fake_admin")
async def test_only_topics_just_created_and_unknown_are_read_again() -> None:
    FakeAdmin.late, FakeAdmin.refused = {"gone"}, {"locked"}
    read = await topic_configs(OPTIONS, ["gone", "locked"], INSYNC, fresh={"locked"})
    # "gone" was not created now (missing or deleted); "locked" is refused by an ACL.
    assert (read.found, read.errors) == ({}, {"gone": 3, "locked": 29})
    assert FakeAdmin.made[0].asked == [["gone", "locked"]]


@pytest.mark.usefixtures("fake_admin")
async def test_a_topic_just_created_is_waited_for_a_bounded_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "SETTLE_SECONDS", 0.2)
    FakeAdmin.late, FakeAdmin.misses = {"fresh"}, 10**9
    read = await asyncio.wait_for(topic_configs(OPTIONS, ["fresh"], INSYNC, fresh={"fresh"}), 10)
    assert (read.found, read.errors) == ({}, {"fresh": 3})
    assert len(FakeAdmin.made[0].asked) > 1


@pytest.mark.usefixtures("fake_admin")
async def test_the_replication_factor_of_a_topic_just_created_is_read_again() -> None:
    FakeAdmin.late = {"fresh"}
    read = await topic_layouts(OPTIONS, ["old", "fresh"], fresh={"fresh"})
    factors = {name: layout.factor for name, layout in read.found.items()}
    assert (factors, read.errors) == ({"old": 1, "fresh": 1}, {})
    assert FakeAdmin.made[0].asked == [["old", "fresh"], ["fresh"]]


async def test_a_probe_unanswered_while_records_are_acknowledged_keeps_it_connected() -> None:
    # A broker throttling the client id (a quota) holds the probe for seconds while it still
    # acknowledges records: every pod turned unready at once.
    settings = KafkaSettings(publish_timeout_seconds=0.3)
    sink = await started_sink(Metrics(), probe_seconds=0.01, settings=settings)
    client = FakeProducer.made[0].client
    sink.mark_reachable()  # an acknowledgement, as the pipeline reports it
    client.answers = False
    updates = client.updates
    await until(lambda: client.updates >= updates + 5)
    assert sink.connected
    # No acknowledgement within the publish timeout: the unanswered probe counts again.
    await until(lambda: not sink.connected)
    await sink.stop()


async def probed(sink: KafkaSink, probes: int = 5) -> None:
    """Until the sink has probed `probes` more times."""
    client = FakeProducer.made[-1].client
    updates = client.updates
    await until(lambda: client.updates >= updates + probes)


async def ready_on_ingest_leaders_2_and_3() -> KafkaSink:
    """A sink probing every 10 ms, ready: its ingest partitions led by brokers 2 and 3, each the
    other's only follower."""
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    client = FakeProducer.made[0].client
    client.cluster.set_partitions("ingest", [(2, [2, 3]), (3, [3, 2])])
    sink.watch_writes("ingest", 2)
    await probed(sink)
    assert sink.connected
    return sink


async def test_metadata_answered_while_no_ingest_partition_takes_writes_keeps_it_unready() -> None:
    # Two of three brokers down: the one left answers metadata, its ISR still names a dead one
    # (no controller quorum to shrink it). The probe used to say ready, a publish unready, ...
    sink = await ready_on_ingest_leaders_2_and_3()
    client = FakeProducer.made[0].client
    client.up = {3}
    await until(lambda: not sink.connected)
    seen = []
    for _ in range(5):
        await probed(sink, 1)
        seen.append(sink.connected)
    assert seen == [False] * 5
    client.up = {1, 2, 3}  # no publish needed: an unready pod gets none
    await until(lambda: sink.connected)
    await sink.stop()


async def test_a_throttle_keeps_no_pod_ready_whose_ingest_partitions_take_no_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under a quota a broker throttles its refusals too (NOT_ENOUGH_REPLICAS, retried for ever):
    # a throttle says the broker answers, not that the ingest topic takes writes.
    throttling(monkeypatch, 10_000)
    sink = await ready_on_ingest_leaders_2_and_3()
    client = FakeProducer.made[0].client
    client.up = {3}
    await client.send(0, "produce")  # refused, throttled 10 s
    await until(lambda: not sink.connected, within=3.0)
    await sink.stop()


async def test_a_throttle_counts_as_kafka_answering_no_longer_than_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A broker (or a proxy) answering a throttle of 2^31 ms: then gone, it kept the pod ready
    # for 24 days.
    throttling(monkeypatch, 2**31 - 1)
    settings = KafkaSettings(publish_timeout_seconds=0.3, request_timeout_ms=1000)
    sink = await started_sink(Metrics(), probe_seconds=0.01, settings=settings)
    client = FakeProducer.made[0].client
    await client.send(0, "produce")
    client.answers = False  # every probe unanswered from now on
    await asyncio.sleep(0.5)
    assert sink.connected  # held past the publish timeout: the broker's throttle, not its absence
    await until(lambda: not sink.connected, within=3.0)
    await sink.stop()


async def test_one_ingest_partition_without_a_leader_among_writable_ones_is_not_an_outage() -> None:
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    client = FakeProducer.made[0].client
    client.cluster.set_partitions("ingest", [(-1, [1]), (2, [2, 3]), (3, [3, 1])])
    sink.watch_writes("ingest", 2)
    await probed(sink)
    assert sink.connected
    await sink.stop()


class _OpenConnection:
    """What aiokafka's create_conn returns, where its client looks at it."""

    def connected(self) -> bool:
        return True

    async def close(self, reason: object = None) -> None:
        pass


async def test_a_broker_dropping_packets_holds_up_neither_the_probe_nor_the_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiokafka's own client, which opens each connection under one lock: a broker whose packets
    # are dropped holds it for as long as a try to connect to it lasts.
    async def create_conn(host: str, port: int, **_: object) -> _OpenConnection:
        if host == "dropping":
            await asyncio.sleep(3600)  # no answer to the SYN: never connected
        return _OpenConnection()

    monkeypatch.setattr(aiokafka.client, "create_conn", create_conn)
    monkeypatch.setattr(kafka, "CONNECT_TRY_SECONDS", 0.2)
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")
    client.cluster._brokers = {
        node: BrokerMetadata(node, "dropping" if node == 1 else f"broker{node}", 9092, None)
        for node in (1, 2, 3, 4)
    }
    producer = cast(AIOKafkaProducer, SimpleNamespace(client=client))
    loop = asyncio.get_running_loop()
    probe = asyncio.create_task(kafka._brokers_up(producer, {1, 2, 3}, 5.0))
    await asyncio.sleep(0.05)  # the probe tries broker 1
    # Meanwhile the producer needs a connection of its own (to a partition's new leader).
    began = loop.time()
    assert await client.ready(4)
    assert loop.time() - began < 1.0
    # Brokers 2 and 3 answer: up, not timed out behind broker 1's try.
    assert await probe == {2, 3}
    await client.close()


@pytest.mark.usefixtures("fake_admin")
async def test_min_insync_is_read_again_after_too_few_replicas_and_while_it_keeps_it_unready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    producer = FakeProducer.made[0]
    producer.client.cluster.set_partitions("ingest", [(1, [1, 2]), (2, [2, 1])])
    sink.watch_writes("ingest", 2)
    await probed(sink)
    assert sink.connected
    # An admin raised min.insync to 3: the broker refuses writes, and says why.
    FakeAdmin.values = {"min.insync.replicas": "3"}
    producer.refusals = [NotEnoughReplicasError()]
    refused = await sink.send(Record("ingest", b"k", b"v"))
    assert isinstance(refused.exception(), NotEnoughReplicasError)
    await until(lambda: not sink.connected)
    assert sink.answering  # unready, not unanswered: its credentials are taken (credfiles)
    # Lowered again: an unready pod gets no writes to learn it from, so the probe reads it.
    monkeypatch.setattr(kafka, "INSYNC_REREAD_SECONDS", 0.0)
    FakeAdmin.values = {"min.insync.replicas": "2"}
    await until(lambda: sink.connected)
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_min_insync_read_by_the_topic_check_judges_readiness_without_a_refused_write() -> (
    None
):
    # The ingest topic made again with min.insync 2, one replica in sync: every write would be
    # refused, yet the start's value (1) kept it ready until a write was (none reach an idle pod).
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    producer = FakeProducer.made[0]
    producer.client.cluster.set_partitions("ingest", [(1, [1])])
    sink.watch_writes("ingest", 1)
    await probed(sink)
    assert sink.connected
    FakeAdmin.values = {"min.insync.replicas": "2"}
    assert not sink.learn_min_insync({"other": {"min.insync.replicas": "2"}})
    assert sink.learn_min_insync({"ingest": {"min.insync.replicas": "2"}})
    await until(lambda: not sink.connected)
    assert sink.learn_min_insync({"ingest": {"min.insync.replicas": "1"}})
    await until(lambda: sink.connected)
    await sink.stop()


PROBE_SECONDS = 1.0
JUDGED_WITHIN = 1.4 * PROBE_SECONDS  # a probe's interval, and slack for a busy box


async def judged_unready_after(sink: KafkaSink) -> float:
    """How long after the probe asked for metadata it judged the sink unready."""
    client = FakeProducer.made[0].client
    await until(lambda: not sink.connected, 6 * PROBE_SECONDS)
    return asyncio.get_running_loop().time() - client.asked_at[0]


async def held_by_silent_broker_1() -> KafkaSink:
    """A sink probing every PROBE_SECONDS whose metadata updates broker 1 holds unanswered."""
    sink = await started_sink(Metrics(), probe_seconds=PROBE_SECONDS)
    client = FakeProducer.made[0].client
    client.held = True
    client.silent = {1}
    return sink


async def test_a_probe_unanswered_everywhere_is_judged_within_its_interval() -> None:
    # aiokafka's update and the brokers asked directly after it each had a whole interval:
    # readiness was judged two intervals after the probe began.
    sink = await held_by_silent_broker_1()
    client = FakeProducer.made[0].client
    client._conns[(1, 0)] = FakeConnection()
    assert await judged_unready_after(sink) < JUDGED_WITHIN
    assert not sink.answering
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_probe_whose_writability_takes_long_is_judged_within_its_interval() -> None:
    # Metadata answered, the ingest topic's leader dropping packets and min.insync unreadable:
    # the connection tries and the read each had a whole interval, two in all.
    sink = await started_sink(Metrics(), probe_seconds=PROBE_SECONDS)
    client = FakeProducer.made[0].client
    client.cluster.set_partitions("ingest", [(2, [2, 1])])
    client.dropping = {2}
    FakeAdmin.silent = True
    sink.watch_writes("ingest", None)
    assert await judged_unready_after(sink) < JUDGED_WITHIN
    await sink.stop()


async def test_a_probe_whose_update_a_silent_broker_holds_still_asks_the_others_in_time() -> None:
    # Part of the interval is kept for the brokers asked directly: the update taking all of it
    # would leave a fenced broker's connections open for as long as it holds the update.
    sink = await held_by_silent_broker_1()
    client = FakeProducer.made[0].client
    gone, answering = FakeConnection(), FakeConnection()
    client._conns.update({(1, 0): gone, (2, 0): answering})
    client.cluster.listed = {2, 3}
    # Where aiokafka keeps the producer's own list, which its held update did not refresh.
    client.cluster._brokers = {n: BrokerMetadata(n, f"broker{n}", 9092, None) for n in (1, 2, 3)}
    await until(lambda: not gone.connected(), 6 * PROBE_SECONDS)
    assert asyncio.get_running_loop().time() - client.asked_at[0] < JUDGED_WITHIN
    assert answering.connected()
    # Its next update picks among these: never the fenced broker, whose host may have vanished.
    assert sorted(client.cluster._brokers) == [2, 3]
    await sink.stop()


async def test_a_probe_whose_update_a_silent_broker_holds_counts_kafka_answering() -> None:
    # Unready (the update held), yet broker 2 answered with the credentials in use: counted
    # unanswered, a rotated credential file failed /healthz and restarted every pod for nothing.
    sink = await held_by_silent_broker_1()
    client = FakeProducer.made[0].client
    client._conns.update({(1, 0): FakeConnection(), (2, 0): FakeConnection()})
    client.cluster.listed = {1, 2}
    assert await judged_unready_after(sink) < JUDGED_WITHIN
    assert sink.answering
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_the_limits_shared_with_the_dedup_stage_batch_as_configured_within_topics() -> None:
    # The stage's producer takes its batch size from them: one setting for both producers.
    sink = KafkaSink(KafkaSettings(max_batch_bytes=200_000), Metrics())
    assert sink.limits.batch_bytes(["events"]) == 200_000
    FakeAdmin.values = {"max.message.bytes": "150000"}
    await sink.learn_limits(["ingest", "events"], writes=["ingest"])
    assert sink.limits.batch_bytes(["events"]) == 150_000


@pytest.mark.usefixtures("fake_admin")
async def test_only_a_topic_the_ingest_producer_writes_bounds_its_batches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An output topic taking less bounds the dedup stage's batches, not the ingest producer's.
    sink = KafkaSink(KafkaSettings(max_batch_bytes=200_000), Metrics())
    await sink.start()
    caplog.clear()  # the fake producer's start says aiokafka has changed
    FakeAdmin.values = {"max.message.bytes": "150000"}
    with caplog.at_level("WARNING", logger=kafka.__name__):
        await sink.learn_limits(["events"], writes=["ingest"])
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # below max_request_bytes
    assert [p.options["max_batch_size"] for p in FakeProducer.made] == [200_000]
    caplog.clear()
    with caplog.at_level("WARNING", logger=kafka.__name__):
        await sink.learn_limits(["ingest"], writes=["ingest"])
    [line] = [r for r in caplog.records if r.name == kafka.__name__]
    assert line.getMessage().startswith("a topic takes smaller records than the ingest producer")
    assert (line.levelname, getattr(line, "topic", None)) == ("WARNING", "ingest")
    assert getattr(line, "max_batch_bytes", None) == 150_000
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_an_ingest_topic_taking_less_than_a_batch_has_the_producer_rebuilt_within_it() -> (
    None
):
    # Built before the limit could be read: a batch of many small records the broker would
    # refuse whole. Its replacements (a dead sender) keep within the limit too.
    metrics = Metrics()
    sink = KafkaSink(KafkaSettings(max_batch_bytes=200_000, metadata_probe_seconds=60), metrics)
    await sink.start()
    first = FakeProducer.made[0]
    FakeAdmin.values = {"max.message.bytes": "65536"}
    await sink.learn_limits(["ingest", "events"], writes=["ingest"])
    assert [p.options["max_batch_size"] for p in FakeProducer.made] == [200_000, 65_536]
    assert (first.stopped, sink.generation) == (True, 1)
    assert restarts(metrics) == 0  # not a failure
    await (await sink.send(RECORD))
    assert (first.sent, FakeProducer.made[1].sent) == ([], [b"v"])
    # Read again, unchanged: no new producer.
    await sink.learn_limits(["ingest"], writes=["ingest"])
    assert len(FakeProducer.made) == 2
    FakeProducer.made[1].kill()
    await until(lambda: producer_died(FakeProducer.made[1]) is not None)
    with pytest.raises(KafkaError):
        await sink.send(RECORD)
    await until(lambda: len(FakeProducer.made) == 3 and sink.connected)
    assert FakeProducer.made[2].options["max_batch_size"] == 65_536
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_rebuild_that_cannot_start_keeps_the_producer_and_raises() -> None:
    # The daemon retries its connect (learn_limits included); backfill and redrive fail.
    sink = KafkaSink(KafkaSettings(max_batch_bytes=200_000), Metrics())
    await sink.start()
    FakeAdmin.values = {"max.message.bytes": "65536"}
    FakeProducer.start_errors = [KafkaConnectionError("down")]
    with pytest.raises(KafkaConnectionError):
        await sink.learn_limits(["ingest"], writes=["ingest"])
    assert (FakeProducer.made[0].stopped, sink.generation) == (False, 0)
    # The next read tries again: the first producer still batches more than the topic takes.
    await sink.learn_limits(["ingest"], writes=["ingest"])
    assert FakeProducer.made[-1].options["max_batch_size"] == 65_536
    assert FakeProducer.made[0].stopped
    await sink.stop()


async def test_a_stop_cancelled_while_it_waits_for_the_probe_is_cancelled() -> None:
    # The connect loop undoes a failed start with this stop: its cancellation (the bridge's
    # stop) swallowed there let the loop retry for ever while the stop waited on it.
    sink = KafkaSink(KafkaSettings(), Metrics())

    async def probe() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # a metadata request's clean-up
            raise

    sink._probe = asyncio.create_task(probe())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(sink.stop())
    await asyncio.sleep(0.05)
    stopping.cancel()
    await asyncio.wait({stopping}, timeout=5)
    assert stopping.cancelled()


async def test_a_stop_in_the_clean_up_of_a_cancelled_caller_still_closes_the_producer() -> None:
    # A command's Ctrl-C: its `finally` stopped the sink, the probe's end was taken for the
    # caller's cancellation and raised, and the producer was left open ("Unclosed
    # AIOKafkaProducer", its connections and sender never closed).
    sink = await started_sink(Metrics())

    async def command() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await sink.stop()

    task = asyncio.create_task(command())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    assert FakeProducer.made[0].stopped


@pytest.mark.usefixtures("fake_admin")
async def test_a_cancellation_swallowed_by_the_admin_clients_close_is_raised() -> None:
    # Cancelled while aiokafka's close swallowed it, the bridge's connect loop went on with its
    # attempt (a 30 s metadata wait) while its stop waited for it.
    FakeAdmin.swallows = True
    went_on: list[str] = []

    async def attempt() -> None:
        async with admin_client(OPTIONS):
            pass
        went_on.append("after the close")

    task = asyncio.create_task(attempt())
    await asyncio.sleep(0.05)  # inside the close
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    assert went_on == []


@pytest.mark.usefixtures("fake_admin")
async def test_a_replacement_started_while_a_size_refusal_rebuilt_the_producer_gives_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A dead sender's replacement, slow to start, and a rebuild for a lowered limit (a size
    # refusal read it again) at once: the replacement overwrote the rebuilt producer, which was
    # never stopped, and batched more than the topic takes again.
    sink = KafkaSink(KafkaSettings(max_batch_bytes=200_000, metadata_probe_seconds=60), Metrics())
    await sink.start()
    FakeAdmin.values = {"max.message.bytes": "1048588"}
    await sink.learn_limits(["ingest"], writes=["ingest"])
    first = FakeProducer.made[0]
    slow = asyncio.Event()
    start = FakeProducer.start

    async def slow_replacement(producer: FakeProducer) -> None:
        if FakeProducer.made.index(producer) == 1:
            await slow.wait()
        await start(producer)

    monkeypatch.setattr(FakeProducer, "start", slow_replacement)
    first.kill()
    await until(lambda: producer_died(first) is not None)
    with pytest.raises(KafkaError):
        await sink.send(RECORD)
    await until(lambda: len(FakeProducer.made) == 2)  # the replacement, starting
    FakeAdmin.values = {"max.message.bytes": "65536"}
    await sink.relearn_limits()
    slow.set()
    # The replacement over: the rebuild replaced the dead producer (ready since), so it gives way.
    await until(lambda: FakeProducer.made[1].stopped)
    assert sink.connected
    current = cast(FakeProducer, sink._producer)
    assert current.options["max_batch_size"] == 65_536
    assert [p for p in FakeProducer.made if not p.stopped] == [current]
    await (await sink.send(RECORD))
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_replacement_failing_after_a_rebuild_replaced_the_producer_says_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A dead sender's replacement, slow to start, failed after a rebuild for a lowered limit had
    # replaced the dead producer: its "could not replace ... yet" came after "Kafka producer
    # replaced", as if the new producer could not be started either.
    sink = KafkaSink(KafkaSettings(max_batch_bytes=200_000, metadata_probe_seconds=60), Metrics())
    await sink.start()
    FakeAdmin.values = {"max.message.bytes": "1048588"}
    await sink.learn_limits(["ingest"], writes=["ingest"])
    slow = asyncio.Event()
    start = FakeProducer.start

    async def slow_failing_replacement(producer: FakeProducer) -> None:
        if FakeProducer.made.index(producer) == 1:
            await slow.wait()
            raise KafkaError("refused")
        await start(producer)

    monkeypatch.setattr(FakeProducer, "start", slow_failing_replacement)
    with caplog.at_level(logging.INFO, logger="bridge.sink.kafka"):
        FakeProducer.made[0].kill()
        sink._wake.set()  # as a send finding it dead does
        await until(lambda: len(FakeProducer.made) == 2)  # the replacement, starting
        FakeAdmin.values = {"max.message.bytes": "65536"}
        await sink.relearn_limits()
        slow.set()
        await until(lambda: FakeProducer.made[1].stopped)  # its failed start undone
        await asyncio.sleep(0.05)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "replac" in r.getMessage()]
    assert said == [
        ("ERROR", "the Kafka producer cannot send; replacing the producer"),
        ("INFO", "Kafka producer replaced"),
    ]
    assert sink._producer is FakeProducer.made[2]
    assert sink.connected
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_size_refusal_met_after_the_stop_took_the_producer_reads_nothing() -> None:
    # A delivery refused while the stop flushes: a read started then outlived the stop, its
    # admin client opened after it, and nothing awaited it.
    sink = KafkaSink(KafkaSettings(), Metrics())
    await sink.start()
    await sink.learn_limits(["ingest"], writes=["ingest"])
    await sink.stop()
    await sink.relearn_limits()
    assert sink._relearning is None


@pytest.mark.usefixtures("fake_admin")
async def test_a_size_refusal_met_while_the_stop_ends_a_read_starts_no_other() -> None:
    # The stop waits for the read it cancelled (its admin client closing): a delivery refused
    # meanwhile started another read, which outlived the stop, its admin client open.
    sink = KafkaSink(KafkaSettings(metadata_probe_seconds=60), Metrics())
    await sink.start()
    await sink.learn_limits(["ingest"], writes=["ingest"])
    FakeAdmin.silent = FakeAdmin.swallows = True  # a read never answered; a close that takes time
    first = asyncio.create_task(sink.relearn_limits())
    await until(lambda: len(FakeAdmin.made) == 2)  # the read under way
    stopping = asyncio.create_task(sink.stop())
    await until(lambda: sink._relearning is None)  # taken by the stop, its close under way
    late = asyncio.create_task(sink.relearn_limits())
    await asyncio.wait_for(stopping, 5)
    await asyncio.wait({first, late}, timeout=1)
    assert (first.done(), late.done(), sink._relearning) == (True, True, None)


@pytest.mark.usefixtures("fake_admin")
async def test_a_brokers_request_limit_below_max_request_bytes_caps_the_producer_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The broker closes the connection on a larger request: the record was retried for ever.
    sink = KafkaSink(KafkaSettings(metadata_probe_seconds=60), Metrics())
    await sink.start()
    FakeAdmin.brokers = {1: {"socket.request.max.bytes": "400000"}, 2: {}}
    FakeAdmin.values = {"socket.request.max.bytes": "300000", "max.message.bytes": "1048576"}
    for _ in range(2):
        with caplog.at_level("INFO", logger=kafka.__name__):
            await sink.learn_limits(["ingest"], writes=["ingest"])
    [line] = [r for r in caplog.records if r.name == kafka.__name__]
    assert line.levelname == "WARNING"
    assert "socket.request.max.bytes" in line.getMessage()
    assert "BRIDGE_KAFKA__MAX_REQUEST_BYTES" in line.getMessage()
    cap = 300_000 - PRODUCE_REQUEST_OVERHEAD_BYTES  # the least broker's
    assert getattr(line, "largest_record_bytes", None) == cap
    assert [p.options["max_request_size"] for p in FakeProducer.made] == [1_048_576, cap]
    with pytest.raises(MessageSizeTooLargeError):
        await sink.send(Record("ingest", b"k", b"v" * cap))
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
@pytest.mark.parametrize("brokers", [{}, {1: {"socket.request.max.bytes": "104857600"}}])
async def test_an_unread_or_default_request_limit_leaves_the_producer_alone(
    brokers: dict[int, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    # Unread (no DescribeConfigs right on the cluster): said once, at INFO.
    sink = KafkaSink(KafkaSettings(metadata_probe_seconds=60), Metrics())
    await sink.start()
    FakeAdmin.brokers = brokers
    FakeAdmin.values = {"max.message.bytes": "1048576"}
    for _ in range(2):
        with caplog.at_level("INFO", logger=kafka.__name__):
            await sink.learn_limits(["ingest"], writes=["ingest"])
    said = [r.getMessage() for r in caplog.records if r.name == kafka.__name__]
    assert len(said) == (0 if brokers else 1)
    assert all("socket.request.max.bytes" in line for line in said)
    assert (len(FakeProducer.made), sink.limits.limit("ingest")) == (1, 1_048_576)
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_request_limit_read_once_is_kept_and_said_kept_when_a_later_read_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A later read failing (a broker down) was said to assume BRIDGE_KAFKA__MAX_REQUEST_BYTES,
    # while the limits kept the lower value read before.
    sink = KafkaSink(KafkaSettings(metadata_probe_seconds=60), Metrics())
    await sink.start()
    FakeAdmin.values = {"max.message.bytes": "1048576"}
    FakeAdmin.brokers = {1: {"socket.request.max.bytes": "300000"}}
    await sink.learn_limits(["ingest"], writes=["ingest"])
    FakeAdmin.brokers = {}  # no broker's setting read
    with caplog.at_level("INFO", logger=kafka.__name__):
        await sink.learn_limits(["ingest"], writes=["ingest"])
    [line] = [r for r in caplog.records if r.name == kafka.__name__ and r.levelname == "INFO"]
    assert "keeping the value last read" in line.getMessage()
    cap = 300_000 - PRODUCE_REQUEST_OVERHEAD_BYTES
    assert getattr(line, "socket_request_max_bytes", None) == 300_000
    assert (sink.limits.default, getattr(line, "largest_record_bytes", None)) == (cap, cap)
    await sink.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_read_of_the_brokers_settings_a_silent_broker_holds_ends_in_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Unbounded, a silent broker held the sink's start and each relearn for aiokafka's request
    # timeout (40 s), where the fallback serves.
    monkeypatch.setattr(kafka, "BROKER_CONFIG_READ_SECONDS", 0.05)
    FakeAdmin.brokers = {1: {}}
    FakeAdmin.silent = True
    key = "socket.request.max.bytes"
    async with asyncio.timeout(2):
        read = (await brokers_least_config_int({}, key), await brokers_config_ints({}, [key]))
    assert read == (None, {key: None})
    assert [admin.closed for admin in FakeAdmin.made] == [True, True]


@pytest.mark.usefixtures("fake_admin")
async def test_the_topics_and_the_brokers_limits_are_read_through_one_admin_client() -> None:
    # Each learn_limits (the start, every relearn after a size refusal) opened two.
    sink = KafkaSink(KafkaSettings(metadata_probe_seconds=60), Metrics())
    await sink.start()
    FakeAdmin.brokers = {1: {}}
    await sink.learn_limits(["ingest"], writes=["ingest"])
    [admin] = FakeAdmin.made
    assert (admin.asked, admin.closed) == ([["ingest"], ["1"]], True)
    await sink.stop()


def test_an_offset_fetch_answers_group_level_error_is_raised_not_read_as_nothing_committed() -> (
    None
):
    # v2+: a refused group is answered at the top, with no partitions (aiokafka read it as {}).
    refused = OffsetFetchResponse_v3(0, [], GroupAuthorizationFailedError.errno)
    with pytest.raises(GroupAuthorizationFailedError):
        offsets_answer(refused)


def test_an_offset_fetch_answers_partition_error_is_raised_as_its_own() -> None:
    # aiokafka raised the group-level code's class for it: NoError, when only a partition failed.
    answer = OffsetFetchResponse_v3(
        0, [("t", [(0, 5, "m", 0), (1, -1, "", UnknownTopicOrPartitionError.errno)])], 0
    )
    with pytest.raises(UnknownTopicOrPartitionError, match="t-1"):
        offsets_answer(answer)


def test_an_offset_fetch_answer_without_errors_is_its_offsets() -> None:
    answer = OffsetFetchResponse_v3(0, [("t", [(0, 5, "m", 0), (1, 9, "", 0)])], 0)
    assert offsets_answer(answer) == {
        TopicPartition("t", 0): OffsetAndMetadata(5, "m"),
        TopicPartition("t", 1): OffsetAndMetadata(9, ""),
    }


async def test_readiness_lost_and_regained_by_publishes_is_logged_once_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A broker halted on its full disk: every publish timed out and the pod went unready, then a
    # record was acknowledged and it was ready again, with no line of the bridge's saying either
    # (the probe's lines are logged only for a change it makes itself): 503s, cause unsaid.
    sink = await started_sink(Metrics())
    sink._last_ack = time.monotonic() - 20.0  # nothing acknowledged within the publish timeout
    with caplog.at_level(logging.INFO, logger="bridge.sink.kafka"):
        sink.mark_unreachable()
        sink.mark_unreachable()
        sink.mark_reachable()
        sink.mark_reachable()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "Kafka" in r.getMessage()]
    assert said == [
        (
            "WARNING",
            "Kafka unreachable: no record acknowledged within the publish timeout; not ready",
        ),
        ("INFO", "Kafka reachable again"),
    ]
    await sink.stop()
