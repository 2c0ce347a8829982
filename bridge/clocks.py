"""How far apart the clocks the bridge compares may be: Pinecall's, the broker's, each replica's."""

# Each is NTP-synced in practice (well under a second apart); this allows for one that is not,
# or that stepped, wherever a decision compares times from two of them.
SKEW_ALLOWANCE_SECONDS = 60.0
