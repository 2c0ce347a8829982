"""How far apart the clocks the bridge compares may be: Pinecall's, the broker's, each replica's."""

# Each is NTP-synced in practice (well under a second apart); this allows for one that is not,
# or that stepped, wherever a decision compares times from two of them.
SKEW_ALLOWANCE_SECONDS = 60.0


def broker_offset(sent_at: float, acked_at: float, appended_at: float) -> float:
    """How far the broker's clock stood from ours (+ ahead), by a record it stamped LogAppendTime
    between our `sent_at` and `acked_at` (wall clock, seconds): 0 within them, a bound past."""
    if appended_at < sent_at:
        return appended_at - sent_at
    if appended_at > acked_at:
        return appended_at - acked_at
    return 0.0


def beyond_allowance(offset: float) -> bool:
    """Whether an offset from broker_offset exceeds what the dedup stage's restores allow for."""
    return abs(offset) > SKEW_ALLOWANCE_SECONDS
