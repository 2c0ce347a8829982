"""Which topics a read of their configs or metadata missed, and why, from the brokers' error
codes. Pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from aiokafka.errors import (
    LeaderNotAvailableError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)

# A broker answers these for a topic the controller has created but whose metadata has not
# reached it yet: asked again a moment later, it knows the topic.
NOT_YET_VISIBLE = frozenset({UnknownTopicOrPartitionError.errno, LeaderNotAvailableError.errno})


def not_yet_visible(errors: Mapping[str, int], fresh: Collection[str]) -> list[str]:
    """The topics of `fresh` (just created) that a broker did not know yet: to be asked again."""
    return sorted(
        name for name, code in errors.items() if name in fresh and code in NOT_YET_VISIBLE
    )


def why_unread(error_code: int | None, *, fresh: bool, right: str = "DescribeConfigs") -> str:
    """Why a topic's configs (or, with `right` "Describe", metadata) were not read, from the error
    code its broker answered for it (None: the answer left the topic out)."""
    if error_code is None:
        return "the cluster's answer left the topic out"
    if error_code == TopicAuthorizationFailedError.errno:
        return f"not allowed: the bridge has no {right} right on the topic (an ACL)"
    if error_code in NOT_YET_VISIBLE:
        if fresh:
            return (
                "the topic, just created, was still unknown to the broker asked when the bridge"
                " stopped waiting for it (its metadata had not reached that broker)"
            )
        return "the broker asked does not know the topic (missing, or deleted meanwhile)"
    return f"the broker answered {for_code(error_code).__name__}"


def unread_kind(error_code: int | None) -> str:
    """The `topic_problem` label of a topic whose configs were not read: `missing` (deleted, or
    not made yet), `not_allowed` (an ACL) or `unreadable` (any other answer)."""
    if error_code in NOT_YET_VISIBLE:
        return "missing"
    if error_code == TopicAuthorizationFailedError.errno:
        return "not_allowed"
    return "unreadable"


def unread(
    names: list[str],
    found: Collection[str],
    errors: Mapping[str, int],
    fresh: Collection[str],
    right: str = "DescribeConfigs",
) -> list[tuple[str, str, int | None]]:
    """Each of `names` not read: its name, why, and its error code."""
    return [
        (name, why_unread(errors.get(name), fresh=name in fresh, right=right), errors.get(name))
        for name in names
        if name not in found
    ]
