"""The throttle time brokers answer a Kafka client with under a client quota, counted.

Over a quota (produce or fetch bytes, request time) a broker answers with `throttle_time_ms` and
holds the connection's next requests that long. aiokafka 0.14 decodes the field and reads it
nowhere. `watch_throttle` takes one aiokafka private, checked against 0.14.0: the client's
``AIOKafkaClient`` (a producer's ``client``, a consumer's or an admin client's ``_client``, or one
the bridge made itself) and its ``send()``, through which go its produce, fetch, offset, group,
admin and transaction requests (not the metadata requests, sent on the connection itself),
replaced on the one client instance. Read once per response, never per record.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.client import AIOKafkaClient

from bridge.metrics import Metrics

log = logging.getLogger(__name__)


def watch_throttle(client: Any, throttled: Callable[[float], None]) -> bool:
    """Call `throttled` with the seconds of each throttle a broker answers `client` with.

    False, and logged, where this aiokafka lacks the send to watch: the client works unwatched.
    """
    # Never the client's own attribute `send` otherwise: a producer's is its send(topic, value).
    connections = client if isinstance(client, AIOKafkaClient) else getattr(client, "client", None)
    if connections is None:
        connections = getattr(client, "_client", None)
    send: Callable[..., Awaitable[Any]] | None = getattr(connections, "send", None)
    if send is None:
        log.warning("aiokafka's client has changed: Kafka throttle time is not counted")
        return False

    async def watched(node_id: int, request: Any, **kwargs: Any) -> Any:
        response = await send(node_id, request, **kwargs)
        # Versions before the field, and a produce with acks=0 (no response), have none.
        throttle_ms = getattr(response, "throttle_time_ms", 0)
        if isinstance(throttle_ms, int) and throttle_ms > 0:
            throttled(throttle_ms / 1000)
        return response

    connections.send = watched  # type: ignore[union-attr]
    return True


def counted(metrics: Metrics, client: str) -> Callable[[float], None]:
    """What `watch_throttle` calls for `client`: its throttle metrics, resolved once."""
    seconds = metrics.kafka_throttle.labels(client)
    responses = metrics.kafka_throttled_responses.labels(client)

    def throttled(delay: float) -> None:
        seconds.inc(delay)
        responses.inc()

    return throttled
