"""Every reason `events_rejected_total` counts a refusal under: mypy holds each count to these."""

from __future__ import annotations

from typing import Literal

# The README's metrics row, the dashboard and the alerts name these; a new one is added here.
RejectReason = Literal[
    # The webhook's: a request refused (4xx) or answered 503.
    "unsupported_media_type",
    "body_too_large",
    "missing_signature",
    "malformed_signature",
    "invalid_signature",
    "invalid_utf8",
    "invalid_json",
    "empty_body",
    "invalid_body",
    "incomplete_body",
    "body_timeout",
    "stale_timestamp",
    "future_timestamp",
    "missing_timestamp",
    "kafka_unavailable",
    "stopping",
    "overloaded",
    "too_many_events",
    "expectation_failed",
    "internal_error",
    "not_found",
    "method_not_allowed",
    "bad_request_head",
    # Any channel's: an event (in events_received_total) Kafka refuses even as a dead letter.
    "too_large",
    # Never in events_received_total: a dead letter of what is no event (a note of an entry or
    # frame too large, an item not understood) refused too, or a feed frame too large to read.
    "too_large_unreceived",
    # The call logs': an id that is no call id.
    "invalid_call_id",
    # The feed's other losses. shutdown: events of the batch a stop cut off, in
    # events_received_total already (as too_large's); the rest never were, and only those
    # PinecallBridgeRejectionRateHigh's denominator adds to it.
    "backlog_full",
    "shutdown",
    "shutdown_unreceived",
]
