"""Whether this user may write a topic, asked before a command reads anything: Metadata v8's
authorized operations (KIP-430), which aiokafka's Metadata (up to v5) cannot ask for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import IncompatibleBrokerVersion
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from bridge.sink.clienttasks import start_client
from bridge.sink.connectsetup import for_role

# Kafka's AclOperation WRITE (a bit of the authorized operations), and the value of that field
# when the broker did not fill it in.
WRITE = 4
NOT_ASKED = -(2**31)


class _MetadataResponseV8(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("name", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", Array(Int32)),
                        ("isr_nodes", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequestV8(RequestStruct):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponseV8
    SCHEMA = Schema(
        # An array of {name}: on the wire (not flexible), an array of the names.
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _AuthorizedMetadata(Request[_MetadataRequestV8]):  # type: ignore[misc]
    """Metadata for one topic with the operations this user may perform on it (v8, the first)."""

    API_KEY = 3

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def build(self, request_struct_class: type[_MetadataRequestV8]) -> _MetadataRequestV8:
        return request_struct_class([self._topic], False, False, True)


def may_not_write(operations: int) -> bool:
    """Whether a topic's authorized operations lack Write; unknown ones (not filled in) do not."""
    return operations != NOT_ASKED and not operations & (1 << WRITE)


async def write_refused(options: Mapping[str, Any], topic: str) -> bool:
    """Whether a broker says this user may describe `topic` but not write it (an ACL missing).

    A topic not described (missing, or no Describe), or a broker before Kafka 2.3 (no Metadata
    v8), is not answered here: False.
    """
    client = AIOKafkaClient(**for_role(options, "admin"))
    await start_client(client, client.bootstrap, client.close)
    try:
        response = await client.send(client.get_random_node(), _AuthorizedMetadata(topic))
    except (IncompatibleBrokerVersion, NotImplementedError):
        # aiokafka raises the former for a broker that did not list Metadata, the latter for
        # one whose Metadata versions stop short of v8 (Kafka before 2.3): neither can say.
        return False
    finally:
        await client.close()
    return any(
        name == topic and error_code == 0 and may_not_write(operations)
        for error_code, name, _, _, operations in response.topics
    )
