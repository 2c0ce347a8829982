"""Which topics a read missed, and why, said from the brokers' error codes."""

from __future__ import annotations

import pytest

from bridge.sink.topicreads import not_yet_visible, unread, unread_kind, why_unread

UNKNOWN, LEADER_NOT_AVAILABLE, REFUSED, INVALID_REQUEST = 3, 5, 29, 42


def test_only_topics_just_created_that_a_broker_does_not_know_yet_are_asked_again() -> None:
    errors = {"b-fresh": UNKNOWN, "a-fresh": LEADER_NOT_AVAILABLE, "locked": REFUSED, "gone": 3}
    assert not_yet_visible(errors, {"a-fresh", "b-fresh", "locked"}) == ["a-fresh", "b-fresh"]


@pytest.mark.parametrize(
    ("error_code", "fresh", "said"),
    [
        (UNKNOWN, True, "just created, was still unknown to the broker asked"),
        (LEADER_NOT_AVAILABLE, True, "just created, was still unknown to the broker asked"),
        (UNKNOWN, False, "does not know the topic (missing"),
        (REFUSED, True, "no DescribeConfigs right on the topic (an ACL)"),
        (REFUSED, False, "no DescribeConfigs right on the topic (an ACL)"),
        (INVALID_REQUEST, False, "the broker answered InvalidRequestError"),
        (None, False, "the cluster's answer left the topic out"),
    ],
)
def test_why_a_topic_was_not_read_follows_its_error_code(
    error_code: int | None, fresh: bool, said: str
) -> None:
    assert said in why_unread(error_code, fresh=fresh)


def test_each_topic_not_read_is_named_with_its_reason_and_code() -> None:
    found = {"read": {"min.insync.replicas": "2"}}
    errors = {"fresh": UNKNOWN, "locked": REFUSED}
    assert unread(["read", "fresh", "locked", "silent"], found, errors, {"fresh"}) == [
        ("fresh", why_unread(UNKNOWN, fresh=True), UNKNOWN),
        ("locked", why_unread(REFUSED, fresh=False), REFUSED),
        ("silent", why_unread(None, fresh=False), None),
    ]


def test_a_refusal_names_the_right_the_read_needed() -> None:
    assert "no Describe right on the topic" in why_unread(REFUSED, fresh=False, right="Describe")
    assert unread(["t"], [], {"t": REFUSED}, (), right="Describe") == [
        ("t", why_unread(REFUSED, fresh=False, right="Describe"), REFUSED)
    ]


def test_a_topic_not_read_is_labelled_by_what_its_error_code_says() -> None:
    assert [unread_kind(code) for code in (UNKNOWN, LEADER_NOT_AVAILABLE)] == ["missing"] * 2
    assert unread_kind(REFUSED) == "not_allowed"
    assert [unread_kind(code) for code in (INVALID_REQUEST, None)] == ["unreadable"] * 2
