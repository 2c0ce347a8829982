"""The JSON codec: whatever it reads, it can write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import jsoncodec
from tests.fuzz import hostile_json, nested_text


@pytest.mark.parametrize("as_text", [False, True])
def test_reads_as_deep_as_it_writes_and_no_deeper(as_text: bool) -> None:
    deepest = nested_text(jsoncodec.MAX_DEPTH)
    too_deep = nested_text(jsoncodec.MAX_DEPTH + 1)
    value = jsoncodec.loads(deepest.decode() if as_text else deepest)
    assert jsoncodec.dumps(value) == deepest
    with pytest.raises(jsoncodec.JSONDecodeError, match="nested deeper than 254 levels"):
        jsoncodec.loads(too_deep.decode() if as_text else too_deep)


def test_many_shallow_containers_are_fine() -> None:
    raw = b"[" + b",".join([b'{"a":[1]}'] * 1000) + b"]"
    assert len(jsoncodec.loads(raw)) == 1000


@given(hostile_json)
def test_anything_read_can_be_written(raw: bytes) -> None:
    try:
        value = jsoncodec.loads(raw)
    except jsoncodec.JSONDecodeError:
        return
    assert jsoncodec.loads(jsoncodec.dumps(value)) == value
    assert jsoncodec.loads(jsoncodec.canonical(value)) == value


@given(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=30), st.booleans())
def test_an_integer_is_read_exactly_or_refused(number: int, text: str, as_text: bool) -> None:
    # Past 64 bits orjson reads the nearest float: published, it would be another number.
    raw = jsoncodec.dumps({"s": text}).removesuffix(b"}") + b',"n":[%d]}' % number
    if -(2**63) <= number < 2**64:
        assert jsoncodec.loads(raw.decode() if as_text else raw) == {"s": text, "n": [number]}
    else:
        with pytest.raises(jsoncodec.JSONDecodeError, match="integer beyond 64 bits"):
            jsoncodec.loads(raw.decode() if as_text else raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"123456789012345678901234567890"}',
        b'{"a\\"":"123456789012345678901234567890"}',
        b'{"a\\\\":"x","b":"-123456789012345678901234567890"}',
        b"[1.123456789012345678901234567890]",
        b"[123456789012345678901234567890.5]",
        b"[1e-123456789012345678901234567890]",
        b"[12345678901234567890e1]",
    ],
)
def test_long_digits_in_a_string_a_fraction_or_an_exponent_are_no_integer(raw: bytes) -> None:
    assert jsoncodec.loads(raw) == jsoncodec.loads(raw.decode())
