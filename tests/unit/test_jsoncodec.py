"""The JSON codec: whatever it reads, it can write."""

from __future__ import annotations

import pytest
from hypothesis import given

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
