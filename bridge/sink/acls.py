"""Where the ACLs the bridge's Kafka principal needs are listed, named by every refusal. Pure."""

from __future__ import annotations

from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

# Said in each error a missing ACL causes, by both stages: aiokafka's names no ACL.
ACLS = "deploy/README.md, Strimzi"


def read_refused(exc: BaseException, group: str) -> str | None:
    """What a reading tool (tail, redrive) says when Kafka refuses it an ACL; None for any other
    error. aiokafka's says only the topic or group, not the right missing."""
    if isinstance(exc, TopicAuthorizationFailedError):
        return topic_refused(exc, "Read", "a topic it reads")
    if isinstance(exc, GroupAuthorizationFailedError):
        return (
            f"this user may not read the committed offsets of the dedup group {group!r}"
            " (BRIDGE_DEDUP__GROUP): GroupAuthorizationFailed, the principal needs an ACL allowing"
            f" Read (or Describe) on Group {group!r} ({ACLS})"
        )
    return None


def topic_refused(exc: TopicAuthorizationFailedError, right: str, unnamed: str) -> str:
    """What a tool says of a topic refused to it, naming the `right` its failed step needs."""
    # The fetcher names the one topic; a metadata refusal may name several, or none.
    topic = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
    which = unnamed if topic is None else f"topic {topic!r}"
    return (
        f"this user may not {right.lower()} {which}: TopicAuthorizationFailed, the principal"
        f" needs an ACL allowing {right} on it ({ACLS})"
    )
