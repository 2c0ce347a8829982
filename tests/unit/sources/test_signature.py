import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.sources import signature
from bridge.sources.signature import Verdict, signature_header, verify
from tests.fuzz import signatures

BODY = b'{"type":"webhook.test","org":"o","env":"sandbox","agent":null,"at":1,"data":{}}'
SECRET = b"s3cret"


def hexdigest(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_prefixed_form() -> None:
    assert verify(signature_header(SECRET, BODY), BODY, [SECRET]) is Verdict.VALID


def test_bare_form() -> None:
    assert verify(hexdigest(SECRET, BODY), BODY, [SECRET]) is Verdict.VALID


def test_header_spells_the_hmac_in_either_form() -> None:
    assert signature_header(SECRET, BODY) == "sha256=" + hexdigest(SECRET, BODY)
    assert signature_header(SECRET, BODY, bare=True) == hexdigest(SECRET, BODY)


@pytest.mark.parametrize("bare", [False, True])
def test_header_round_trips_through_verify(bare: bool) -> None:
    header = signature_header(SECRET, BODY, bare=bare)
    assert verify(header, BODY, [b"rotated-out", SECRET]) is Verdict.VALID
    assert verify(header, BODY + b" ", [SECRET]) is Verdict.INVALID


def test_rotation_any_secret_passes() -> None:
    assert verify(signature_header(b"new", BODY), BODY, [b"old", b"new"]) is Verdict.VALID
    assert verify(signature_header(b"old", BODY), BODY, [b"old", b"new"]) is Verdict.VALID
    assert verify(signature_header(b"other", BODY), BODY, [b"old", b"new"]) is Verdict.INVALID


def test_tampered_body_fails() -> None:
    assert (
        verify(signature_header(SECRET, BODY), BODY.replace(b"sandbox", b"production"), [SECRET])
        is Verdict.INVALID
    )


def test_reserialised_body_is_not_what_is_signed() -> None:
    reserialised = BODY.replace(b":", b": ")
    assert verify(signature_header(SECRET, BODY), reserialised, [SECRET]) is Verdict.INVALID


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing(header: str | None) -> None:
    assert verify(header, BODY, [SECRET]) is Verdict.MISSING


@pytest.mark.parametrize(
    "header",
    [
        "sha256=",
        "sha256=zz" + "0" * 62,
        "0" * 63,
        "sha1=" + "0" * 64,
        "0" * 65,
        # 64 characters that bytes.fromhex reads (it skips whitespace between pairs) but fewer
        # bytes than a digest; and digits that are not ASCII.
        "0" * 30 + "    " + "0" * 30,
        "00 " * 21 + "0",
        "\u0660" * 64,
    ],
)
def test_malformed(header: str) -> None:
    assert verify(header, BODY, [SECRET]) is Verdict.MALFORMED


def test_wrong_signature_of_right_shape() -> None:
    assert verify("sha256=" + "0" * 64, BODY, [SECRET]) is Verdict.INVALID


def test_prefix_case_and_spaces_tolerated() -> None:
    assert verify("  SHA256=" + hexdigest(SECRET, BODY) + " ", BODY, [SECRET]) is Verdict.VALID


@given(st.data(), st.binary(max_size=300), st.binary(min_size=1, max_size=40))
def test_any_header_is_valid_exactly_when_it_spells_the_hmac(
    data: st.DataObject, body: bytes, secret: bytes
) -> None:
    header, valid = data.draw(signatures(secret, body))
    verdict = verify(header, body, [b"rotated-out", secret])
    assert (verdict is Verdict.VALID) == valid
    if header is None or not header.strip():
        assert verdict is Verdict.MISSING


def test_a_secret_is_keyed_once_not_per_body(monkeypatch: pytest.MonkeyPatch) -> None:
    keyed: list[bytes] = []
    real = hmac.new

    def counted(key: bytes, *args: Any, **kwargs: Any) -> hmac.HMAC:
        keyed.append(key)
        return real(key, *args, **kwargs)

    secret = b"keyed-once"
    signed = [(hexdigest(secret, body), body) for body in (BODY, BODY + b" ", BODY + b"  ")]
    monkeypatch.setattr(hmac, "new", counted)
    signature._keyed.cache_clear()
    for header, body in signed:
        assert verify(header, body, [secret]) is Verdict.VALID
    assert keyed == [secret]


def test_each_body_is_hashed_on_a_copy_of_the_keyed_mac() -> None:
    # Were the keyed MAC fed a body itself, the next body's digest would include it.
    signature._keyed.cache_clear()
    for body in (BODY, BODY + b"x", BODY, b""):
        assert verify(hexdigest(SECRET, body), body, [SECRET]) is Verdict.VALID


def test_without_openssls_object_inside_the_keyed_mac_is_copied_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # hmac's pure-Python HMAC (no OpenSSL HMAC): its `_hmac` is None, the object is copied.
    monkeypatch.setattr(hmac, "_hashopenssl", None)
    signature._keyed.cache_clear()
    try:
        assert isinstance(signature._keyed(SECRET), hmac.HMAC)
        for body in (BODY, BODY + b"x", BODY):
            assert verify(hexdigest(SECRET, body), body, [SECRET]) is Verdict.VALID
        assert verify(hexdigest(b"other", BODY), BODY, [SECRET]) is Verdict.INVALID
    finally:
        signature._keyed.cache_clear()
