"""The one JSON codec (orjson): strict UTF-8 in, compact UTF-8 out, canonical form for hashing."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError
JSONEncodeError = orjson.JSONEncodeError
# orjson reads 1,024 levels of nesting but writes only this many: a deeper document would parse,
# then fail at every encode (a webhook answering 503 forever, a feed batch retried forever).
MAX_DEPTH = 254
# orjson reads an integer past 64 bits as the nearest float: 18446744073709551616 would be
# published as 1.8446744073709552e+19, another value to every reader that keeps integers exact.
# Only a run of 19 digits can be one (-2**63 has 19): found by a C-speed translate, as a regex
# search took longer than the parse. A string is matched whole, so the digits in one are
# skipped, and digits after a `.`, `e` or sign are a fraction's or an exponent's.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19
_LONG_INTEGER = re.compile(rb'"(?:[^"\\]++|\\.)*+"|(?<![0-9.eE+-])(-?[0-9]{19,})(?![.eE0-9])')
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def loads(raw: bytes | str) -> Any:
    """Parse JSON; JSONDecodeError on invalid JSON, invalid UTF-8, nesting past MAX_DEPTH, or an
    integer beyond 64 bits (it would be read, and written, as another number)."""
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
    text = raw if isinstance(raw, bytes) else raw.encode()  # orjson took it: no surrogates
    if _NINETEEN_DIGITS in text.translate(_DIGITS_AS_ZERO):
        _refuse_long_integers(text)
    return value


def _refuse_long_integers(text: bytes) -> None:
    for match in _LONG_INTEGER.finditer(text):
        token = match.group(1)
        if token is None:  # a string
            continue
        # More than 20 digits is out of range whatever they are (and int() refuses 4,300).
        if len(token.lstrip(b"-")) > 20 or not _INT_MIN <= int(token) <= _INT_MAX:
            shown = token.decode()
            shown = shown if len(shown) <= 40 else f"{shown[:40]}… ({len(shown)} characters)"
            raise JSONDecodeError(f"integer beyond 64 bits: {shown}", "", 0)


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact JSON; `default` turns a value of a type orjson cannot write into one it can."""
    return orjson.dumps(value, default=default)


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace: equal JSON values give equal bytes whatever their wire form."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
