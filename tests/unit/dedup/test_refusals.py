from aiokafka.errors import (
    GroupAuthorizationFailedError,
    InvalidTransactionTimeout,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from bridge.config import DedupSettings
from bridge.dedup.refusals import refusal, refused_topics, write_refusal

SETTINGS = DedupSettings(group="g1")


def test_each_refusal_names_what_to_change() -> None:
    timeout = refusal(InvalidTransactionTimeout(), SETTINGS, "g1-dedup-x")
    assert timeout is not None
    assert "BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS (8000 ms)" in timeout
    assert "transaction.max.timeout.ms" in timeout
    txn = refusal(TransactionalIdAuthorizationFailed("g1-dedup-x"), SETTINGS, "g1-dedup-x")
    assert txn is not None
    assert "Write and Describe on TransactionalId with the prefix 'g1-dedup-'" in txn
    group = refusal(GroupAuthorizationFailedError("g1"), SETTINGS, "g1-dedup-x")
    assert group is not None
    assert "Read on Group 'g1'" in group
    # As aiokafka's fetcher raises it: the topic it may not read.
    read = refusal(TopicAuthorizationFailedError("pinecall.ingest"), SETTINGS, "g1-dedup-x")
    assert read is not None
    assert "Read on Topic 'pinecall.ingest'" in read


def test_a_refused_read_names_each_topic_of_a_set() -> None:
    # aiokafka's offset commit names a set of topics: each named as itself, not as "{'a'}".
    read = refusal(TopicAuthorizationFailedError({"pinecall.ingest"}), SETTINGS, "g1-dedup-x")
    assert read is not None
    assert "ingest topic 'pinecall.ingest':" in read
    assert "Read on Topic 'pinecall.ingest' (" in read
    assert "{" not in read


def test_a_known_brokers_max_is_named_and_an_unknown_one_is_not_guessed() -> None:
    known = refusal(InvalidTransactionTimeout(), SETTINGS, "g1-dedup-x", 5000)
    assert known is not None
    assert "their transaction.max.timeout.ms (5000 ms)" in known
    assert "to at most 5000 ms" in known
    assert "900000" not in known
    # Unread, or not below the timeout (so not what the brokers refused): Kafka's default said.
    for unknown in (None, 8000):
        said = refusal(InvalidTransactionTimeout(), SETTINGS, "g1-dedup-x", unknown)
        assert said is not None
        assert "Kafka's default 900000 ms; this cluster's is lower" in said


def test_an_outage_is_no_refusal() -> None:
    assert refusal(KafkaConnectionError(), SETTINGS, "g1-dedup-x") is None


def test_a_refused_write_names_each_topic_and_its_acl() -> None:
    # aiokafka names one topic (a produce answer) or a set (AddPartitionsToTxn's).
    topics = refused_topics(TopicAuthorizationFailedError({"out.dlq", "out.events"}))
    assert topics == ["out.dlq", "out.events"]
    assert refused_topics(TopicAuthorizationFailedError("out.events")) == ["out.events"]
    assert refused_topics(KafkaConnectionError()) == []
    said = write_refusal(topics)
    assert "Write on Topic 'out.dlq', Write on Topic 'out.events'" in said
