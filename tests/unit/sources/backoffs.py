"""Reconnect backoffs below the floors a load enforces, for tests of the reconnect logic."""

# Given with `model_copy(update=...)`, which skips validation: a load refuses them
# (bridge/config.py's MIN_BACKOFF_*_SECONDS), and the retries they make come in milliseconds.
QUICK_BACKOFF: dict[str, float] = {"backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.05}
# The fake WebSocket feed's (tests/unit/sources/test_websocket.py): its tests' waits were set
# against this cap (a refusal's wait is cut to it), so it stays theirs.
FAKE_FEED_BACKOFF: dict[str, float] = {"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2}
