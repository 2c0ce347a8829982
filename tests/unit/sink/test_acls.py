"""What a reading tool says of a refused ACL."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from bridge.sink.acls import ACLS, read_refused


def test_a_topic_refusal_naming_no_topic_or_several_still_names_the_right() -> None:
    said = (
        "this user may not read a topic it reads: TopicAuthorizationFailed, the principal needs"
        f" an ACL allowing Read on it ({ACLS})"
    )
    # aiokafka's group coordinator raises it with a set of topics, others with none.
    assert read_refused(TopicAuthorizationFailedError(), "g") == said
    assert read_refused(TopicAuthorizationFailedError({"a", "b"}), "g") == said


def test_an_error_that_is_no_refusal_is_left_to_the_caller() -> None:
    assert read_refused(KafkaConnectionError("gone"), "g") is None
