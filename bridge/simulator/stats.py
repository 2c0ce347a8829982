"""The simulator's counters, as `GET /_sim/stats` shows them."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Stats:
    token_requests: int = 0
    unauthorized: int = 0  # REST requests and WebSocket connections refused for their credentials
    connections_total: int = 0
    connections_open: int = 0
    subscriptions: int = 0
    frames_sent: int = 0  # event frames, duplicates included
    control_frames_sent: int = 0  # subscribed, pong, error
    garbage_frames_sent: int = 0
    duplicate_frames: int = 0
    events_generated: int = 0
    events_durable: int = 0
    events_ephemeral: int = 0
    alerts_generated: int = 0  # alert lines of agents' logs, posted by webhook
    delivery_attempts: int = 0
    deliveries_ok: int = 0
    deliveries_failed: int = 0  # every attempt failed with a 5xx, a transport error or a timeout
    deliveries_rejected: int = 0  # a 4xx (or any other non-2xx below 500): never retried
    deliveries_cancelled: int = 0  # still pending when the simulator stopped
    deliveries_retried: int = 0  # finished (whatever the outcome) after more than one attempt
    duplicate_deliveries: int = 0
    drops: int = 0  # connections dropped by fault injection
    auth_closes: int = 0  # connections closed with 4001 by fault injection or token expiry
    sse_connections_total: int = 0  # call-log streams and org-feed streams opened
    sse_connections_open: int = 0
    sse_entries_streamed: int = 0  # entries written on call-log streams (markers not counted)
    sse_markers_sent: int = 0  # log.caught_up and log.gap lines
    sse_pings_sent: int = 0
    sse_gaps: int = 0  # log.gap markers written to slow (or forced) readers
    sse_cuts: int = 0  # streams cut mid-event by fault injection
    sse_silenced: int = 0  # streams made silent by fault injection
    sse_errors_injected: int = 0  # call-log requests answered 5xx by fault injection
    log_pages_broken: int = 0  # JSON pages answered 200 cut short (not JSON) by fault injection
    sse_forbidden: int = 0  # call-log requests answered 403 (a call the key may not read)
    lists_hidden: int = 0  # call-list requests answered 404 by fault injection
    sse_auth_refused: int = 0  # call-log, feed and list requests refused 401 by fault injection
    sse_log_auth_refused: int = 0  # of those, the call-log requests (streams and pages)
    sse_page_auth_refused: int = 0  # of those, the call-log pages (a gap fill's, say)
    log_pages_served: int = 0  # JSON pages of a call log
    sealed_answers: int = 0  # 204s: a sealed call log already read to its end
    feed_entries_sent: int = 0  # lifecycle entries written on org-feed streams

    def count_delivery(self, outcome: str, *, retried: bool) -> None:
        """A delivery's final outcome: ok, failed, rejected or cancelled."""
        if outcome == "ok":
            self.deliveries_ok += 1
        elif outcome == "failed":
            self.deliveries_failed += 1
        elif outcome == "rejected":
            self.deliveries_rejected += 1
        else:
            self.deliveries_cancelled += 1
        self.deliveries_retried += retried

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def since(self, earlier: dict[str, int]) -> dict[str, int]:
        """Counter increases since an earlier `as_dict()`."""
        return {name: value - earlier.get(name, 0) for name, value in self.as_dict().items()}
