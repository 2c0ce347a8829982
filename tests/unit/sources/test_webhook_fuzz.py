"""Properties of the webhook's body handling: a clear 400, or every item published."""

from __future__ import annotations

from hypothesis import given

from bridge import jsoncodec
from bridge.normalise import split_body
from bridge.sources.webhook import _why_not_json
from tests.fuzz import hostile_json, submit_checked


@given(hostile_json)
def test_any_body_is_refused_with_a_reason_or_published(body: bytes) -> None:
    # What the handler does with a signed body: decode, then one delivery of its items.
    try:
        document = jsoncodec.loads(body)
    except jsoncodec.JSONDecodeError as exc:
        reason, detail = _why_not_json(body, exc)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            assert reason == "invalid_utf8"
        else:
            assert reason == ("empty_body" if not body.strip() else "invalid_json")
        assert detail
        return
    submit_checked(
        split_body(document), "webhook", raw=None if isinstance(document, list) else body
    )
