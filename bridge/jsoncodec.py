"""The one JSON codec (orjson): strict UTF-8 in, compact UTF-8 out, canonical form for hashing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError
JSONEncodeError = orjson.JSONEncodeError
# orjson reads 1,024 levels of nesting but writes only this many: a deeper document would parse,
# then fail at every encode (a webhook answering 503 forever, a feed batch retried forever).
MAX_DEPTH = 254


def loads(raw: bytes | str) -> Any:
    """Parse JSON; JSONDecodeError on invalid JSON, invalid UTF-8, or nesting past MAX_DEPTH."""
    value = orjson.loads(raw)
    # Fewer brackets than the limit cannot nest past it; only then is the (C-speed) trial write due.
    if isinstance(raw, bytes):
        brackets = raw.count(b"[") + raw.count(b"{")
    else:
        brackets = raw.count("[") + raw.count("{")
    if brackets > MAX_DEPTH:
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            raise JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", "", 0) from None
    return value


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact JSON; `default` turns a value of a type orjson cannot write into one it can."""
    return orjson.dumps(value, default=default)


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace: equal JSON values give equal bytes whatever their wire form."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
