"""The one JSON codec (orjson): strict UTF-8 in, compact UTF-8 out, canonical form for hashing."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def loads(raw: bytes | str) -> Any:
    """Parse JSON; raises JSONDecodeError on invalid JSON or invalid UTF-8."""
    return orjson.loads(raw)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace: equal JSON values give equal bytes whatever their wire form."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
