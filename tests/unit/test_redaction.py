"""bridge.redaction: a secret's spellings replaced whole in the start of a text."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from bridge.redaction import (
    MASK,
    UNSHOWN_PATH,
    echo_spellings,
    hidden,
    json_spellings,
    overhang,
    path_top,
    shown_path,
    url_spellings,
    without_password,
    without_query,
)

MARK = "[credential]"


def test_a_credential_the_cut_splits_is_hidden_whole() -> None:
    text = "x" * 8 + "secret/key" + "y" * 8
    spellings = url_spellings("secret/key")
    assert hidden(text, spellings, 12, MARK) == "x" * 8 + MARK[:4]
    assert hidden(text.replace("/", "%2F"), spellings, 40, MARK) == "x" * 8 + MARK + "y" * 8
    assert hidden(text, url_spellings(""), 12, MARK) == text[:12]


def test_bytes_are_cut_in_bytes_and_hidden_as_text_is() -> None:
    raw = b"\xff" * 4 + b"tok+en" + b"\x00" * 4
    assert hidden(raw, url_spellings("tok en"), 6, MARK) == b"\xff" * 4 + MARK.encode()[:2]


def test_a_secret_is_spelt_as_it_is_and_url_encoded() -> None:
    assert set(url_spellings("a b/c")) == {"a b/c", "a+b%2Fc", quote("a b/c", safe="")}


def test_a_secret_is_spelt_as_a_json_echo_escapes_it_longest_first() -> None:
    secret = 'wh"\\é/'
    spellings = json_spellings(secret)
    assert {secret, json.dumps(secret)[1:-1], 'wh\\"\\\\é\\/'} <= set(spellings)
    assert [len(s) for s in spellings] == sorted((len(s) for s in spellings), reverse=True)
    echo = json.dumps({"secret": secret, "pad": "p" * 40})
    assert secret not in hidden(echo, spellings, 300, "[secret]")
    assert json_spellings("") == []


def test_the_overhang_is_the_longest_spelling_in_utf8_bytes() -> None:
    assert overhang(["é", "abc"]) == 3
    assert overhang(["éé"]) == 4
    assert overhang([]) == 0


def test_an_echo_is_hidden_as_sent_json_escaped_or_url_encoded_for_every_secret() -> None:
    key, token = "k/ey é", "to+k"
    echo = f"{key} {json.dumps(key)} {quote(key, safe='')} {token} {quote(token, safe='')}"
    spellings = echo_spellings(key, token, "")
    assert [len(s) for s in spellings] == sorted((len(s) for s in spellings), reverse=True)
    assert hidden(echo, spellings, 300, MARK) == " ".join([MARK, f'"{MARK}"', MARK, MARK, MARK])


def test_a_path_is_shown_only_when_absolute_under_a_top_level_entry_that_exists() -> None:
    exists = {"/var", "/token"}.__contains__
    assert shown_path("/var/run/secrets/token", exists) == "'/var/run/secrets/token'"
    assert shown_path("/token", exists) == "'/token'"
    # A token or password pasted in place of the path: relative, or a base64 one starting with
    # `/` (one in 64), whose first segment names nothing at the top of the file system.
    for pasted in ("AbC+d3f/Gh1=", "ca.pem", "/AbC+d3f/Gh1=", "/AbCd3fGh1=", "//AbC", "/"):
        assert shown_path(pasted, exists) == UNSHOWN_PATH, pasted


@pytest.mark.parametrize(
    ("path", "top"),
    [
        ("/etc/kafka/ca.pem", "/etc"),
        ("/etc", "/etc"),
        ("//etc/x", "/etc"),  # POSIX keeps a leading `//`: still the entry `etc`
        ("/./etc/x", "/etc"),
        ("/../etc/x", None),  # `/..` is `/` itself
        ("/", None),
        ("etc/x", None),
        ("", None),
    ],
)
def test_the_top_level_entry_of_a_path(path: str, top: str | None) -> None:
    assert path_top(path) == top


@pytest.mark.parametrize(
    ("username", "shown"),
    [
        ("bridge", "bridge"),
        ("KEY:s3cr3t", "KEY:" + MASK),
        ("KEY:s3:cr3t", "KEY:" + MASK),  # the first colon ends the name
        ("bridge:", "bridge:"),  # nothing after it to hide
        (":s3cr3t", ":" + MASK),
    ],
)
def test_a_user_name_shows_no_password_pasted_after_a_colon(username: str, shown: str) -> None:
    assert without_password(username) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h.example/v1/x?token=tok&a=1#frag", "https://h.example/v1/x"),
        ("https://user:pass@h.example:8443/p?X-Amz-Signature=sig", "https://h.example:8443/p"),
        ("//user:pass@h.example/p?q", "//h.example/p"),
        ("/v2/calls?after=3", "/v2/calls"),
        ("/a//b@c/d", "/a//b@c/d"),  # a path's `//` and `@` are no user info
        ("ws://[broken/v1?token=tok", "ws://[broken/v1"),  # urlsplit raised ValueError
        ("https://h.example", "https://h.example"),
        ("", ""),
        # A `\` is a `/` to a browser (WHATWG URL): user info after one is still user info.
        ("https:\\\\user:pass@h.example/p", "https:\\\\h.example/p"),
        ("https:/\\user:pass@h.example/p", "https:/\\h.example/p"),
        ("\\\\user:pass@h.example/p", "\\\\h.example/p"),
        # To urllib (websockets' parser) the authority runs to the `/`: user `h.example\a`,
        # host `b`; to a browser, host `h.example`. Neither side is shown.
        ("https://h.example\\a@b/c", "https://…"),
        ("wss://u:12\\ss@h.example/p", "wss://…"),  # websockets sends the password `12\ss`
        ("wss://u@x\\ss@h.example/p", "wss://…"),  # urllib's user `u@x\ss`: `x\ss` showed
        # A password holding an `@` and a `/`: what follows the first `@` is user info again.
        ("https://u@x:pa/ss@h.example/p", "https://…"),
        # Dropped by urllib and yarl (and browsers) before they read a URL: leading C0 controls
        # and spaces, a tab or newline anywhere. Read as no URL at all, it was quoted whole.
        (" https://u:p@h.example/p?q", "https://h.example/p"),
        ("\x01wss://u:p@h.example/p", "wss://h.example/p"),
        ("https:/\t/u:p@h.example/p", "https://h.example/p"),
        # A `#` or `?` before an `@`: a password holding one, or a query holding an `@`.
        ("http://u:p#w@h.example/", "http://…"),
        ("http://h.example?token=abc@def", "http://…"),
        ("http://h.example/p?token=abc@def", "http://h.example/p"),
        ("http://h.example?token=abc#f", "http://h.example"),  # a query straight after the host
        # A `/` (base64's) in a password: the authority ends there, its port no number.
        ("https://u:pa/ss@h.example/p?q", "https://…"),
        ("https://u:/ss@h.example", "https://…"),
        ("https://[::1]:pa/ss@h.example", "https://…"),
        # A port of digits before a path's `@` is a port (`u:12/34@h` is not told apart).
        ("https://h.example:443/calls/a@b?q", "https://h.example:443/calls/a@b"),
    ],
)
def test_a_url_is_quoted_without_its_query_fragment_or_user_info(url: str, shown: str) -> None:
    assert without_query(url) == shown
