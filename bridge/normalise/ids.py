"""What an identifier taken from Pinecall input may be: one rule for every channel. Pure.

Ids become Kafka keys and headers, dedup ids, per-call state and log fields, and a call id a
path segment of `GET /v1/calls/{id}/events`. Pinecall's call ids are short (`CA_8f4a2c`, the
simulator's `CA_` and 16 hex digits), so the bound is generous; what it keeps out is a 1 MB id
held in every per-call map, and characters no real id has.
"""

from __future__ import annotations

import re

MAX_ID_LENGTH = 256
# What CloudEvents' String type disallows (ids become attributes): C0 controls, DEL and the C1
# controls (in a log line a newline forges one), and Unicode's noncharacters. Surrogates orjson
# refuses already.
NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17)
)
NOT_IN_A_STRING = re.compile(f"[\x00-\x1f\x7f-\x9f{NONCHARACTERS}]")
# A call id is a path segment: `.` and `..` are normalised away (yarl, servers) and `/` or `\`,
# quoted as %2F or %5C, is decoded back to a separator by many servers and proxies.
_NOT_A_SEGMENT = frozenset({".", ".."})
_SEPARATORS = re.compile(r"[/\\]")
# An agent's own log is named `@<agent>` in dedup ids and record keys: a call id so spelt would
# give its call's lines the ids of that agent's lines (`@support:7`), and one of each be dropped.
_AGENT_MARK = "@"


def valid_id(value: str, max_length: int = MAX_ID_LENGTH) -> bool:
    """Non-empty, at most `max_length` characters, none CloudEvents' String disallows."""
    return 0 < len(value) <= max_length and NOT_IN_A_STRING.search(value) is None


# What valid_call_id refuses, in the operator's words (backfill's error, redrive's hint).
CALL_ID_REFUSED = (
    f"empty, over {MAX_ID_LENGTH} characters, a control character, a / or \\, an initial @,"
    " or . or .."
)


def valid_call_id(call: str) -> bool:
    """A valid id that can also name its call as one URL path segment, and no agent's log."""
    return (
        valid_id(call)
        and call not in _NOT_A_SEGMENT
        and not call.startswith(_AGENT_MARK)
        and _SEPARATORS.search(call) is None
    )


def shown(value: str, keep: int = 64) -> str:
    """An untrusted id for a log line: cut to `keep` characters, saying how long it was."""
    return value if len(value) <= keep else f"{value[:keep]}… ({len(value)} chars)"
