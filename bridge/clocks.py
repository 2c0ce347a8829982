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


# How far a clock's rate may be off (NTP's own limit, 500 ppm): a broker time carried forward
# by our monotonic clock is counted this much slower, so it stays behind the broker's.
RATE_TOLERANCE = 500e-6


class BrokerClock:
    """A lower bound of the broker's clock now, from the append times read (LogAppendTime).

    One for the stage's partitions, whichever broker leads each: the bound is of the clock
    furthest ahead among those read, not of each leader's (broker_passed's allowance covers that).
    """

    def __init__(self) -> None:
        # max(appended_at - ticks * (1 - RATE_TOLERANCE)) over the records read: which of two
        # reads bounds the broker's now higher does not change as time goes on.
        self._lead: float | None = None

    def saw(self, appended_at: float, ticks: float) -> None:
        """A record appended at `appended_at` (seconds) was read at monotonic `ticks`."""
        lead = appended_at - ticks * (1 - RATE_TOLERANCE)
        if self._lead is None or lead > self._lead:
            self._lead = lead

    def floor(self, ticks: float) -> float | None:
        """A time the broker's clock has passed at monotonic `ticks`; None before any read."""
        return None if self._lead is None else self._lead + ticks * (1 - RATE_TOLERANCE)

    def stamp(self, ours: float, ticks: float) -> int | None:
        """floor(ticks) as a Kafka record timestamp (ms), at most the skew allowance past our
        clock `ours`; None before any read."""
        floor = self.floor(ticks)
        # Refused only past the leader's clock by message.timestamp.after.max.ms (1 h in Kafka
        # 4): now only when both clocks are. The floor alone can be (another broker's clock,
        # or one stepped back since), and records read again after each abort kept it there.
        return None if floor is None else int(min(floor, ours + SKEW_ALLOWANCE_SECONDS) * 1000)

    def look_back(self, ttl: float, ours: float, ticks: float) -> float:
        """look_back_from our clock `ours` and the floor at monotonic `ticks`, less `ttl`. Pure."""
        return look_back_from(ours, self.floor(ticks)) - ttl


def broker_passed(ours: float, floor: float | None) -> float | None:
    """The latest time the broker's clock can be counted on to have passed, our wall clock
    `ours` or not (a BrokerClock's `floor`), less the skew allowance; None with no floor. Pure."""
    # Either may be ahead of a partition leader's now: ours by a replica's fault (NTP), the floor
    # by a broker clock stepped back, or read from another broker ahead of this leader. The
    # allowance covers the floor's (so the brokers' clocks within it of each other), the earlier
    # of the two ours.
    return None if floor is None else min(ours, floor) - SKEW_ALLOWANCE_SECONDS


def look_back_from(ours: float, floor: float | None) -> float:
    """broker_passed, or with no floor our clock less the allowance (the best left). Pure."""
    passed = broker_passed(ours, floor)
    return ours - SKEW_ALLOWANCE_SECONDS if passed is None else passed
