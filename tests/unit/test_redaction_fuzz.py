"""Properties of the URL user-info rule: it agrees with the parsers the bridge's clients use."""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import assume, example, given
from hypothesis import strategies as st
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri
from yarl import URL

import tests.fuzz  # noqa: F401  (the Hypothesis profiles)
from bridge.redaction import has_userinfo, without_query

# URL-like text from the characters that move an authority's end or its `@`: a URL setting, a
# CloudEvents source or a redirect's Location, well-formed or not.
_PIECES = ["u", "1", ".", ":", "/", "\\", "@", "?", "#", "[", "]", "%40", "\t", "\n", " ", "\x01"]
_STARTS = ["https://", "wss://", "HTTPS://", "https:", "https:/", "//", " https://", "\x01wss://"]
urls = st.builds(
    lambda start, middle, end: start + "".join(middle) + end,
    st.sampled_from(_STARTS),
    st.lists(st.sampled_from(_PIECES), max_size=10),
    st.sampled_from(["@h", "@h/p", "@h?q", ""]),
)


def read_userinfo(url: str) -> list[str]:
    """The parsers that read `url` with a user's name or password before its host: urllib's
    (websockets', through it), yarl's (aiohttp's)."""
    readers = []
    try:
        if "@" in urlsplit(url).netloc:
            readers.append("urllib")
    except ValueError:  # an unclosed `[`
        pass
    try:
        parsed = URL(url)
    except ValueError:  # yarl refuses a `\` in the authority
        pass
    else:
        if parsed.user is not None or parsed.password is not None:
            readers.append("yarl")
    try:
        if parse_uri(url).user_info is not None:
            readers.append("websockets")
    except (InvalidURI, ValueError):
        pass
    return readers


@given(urls)
@example("wss://u:12\\ss@h")  # websockets sends the password `12\ss`
@example(" https://u:p@h")  # urllib and yarl drop the space first
@example("https:/\t/u:p@h")  # and a tab anywhere
def test_user_info_any_client_parser_reads_is_user_info_to_the_rule(url: str) -> None:
    assert not read_userinfo(url) or has_userinfo(url), read_userinfo(url)


@given(urls)
@example("wss://u@x\\ss@h/p")  # urllib's user `u@x\ss`
@example("https://u@x:pa/ss@h")  # a password holding an `@` and a `/`
@example(" https://u:p@h")
def test_a_quoted_url_carries_no_user_info_for_any_reader(url: str) -> None:
    shown = without_query(url)
    assert not read_userinfo(shown), shown
    assert not has_userinfo(shown), shown


# Schemes a browser (WHATWG URL) reads an authority after whatever slashes follow, none included.
_SPECIAL = ["https:", "http:", "WSS:", "ws:", "ftp:"]
# What may follow them: _PIECES without the tab and newline every reader drops first.
rests = st.builds(
    lambda middle, end: "".join(middle) + end,
    st.lists(st.sampled_from([p for p in _PIECES if p not in "\t\n"]), max_size=10),
    st.sampled_from(["@h", "@h/p", "@h?q", ""]),
)


@given(st.sampled_from(_SPECIAL), st.lists(st.sampled_from(["/", "\\"]), max_size=4), rests)
@example("https:", ["/", "/", "/"], "u:p@h")  # an empty authority first: a browser's `u:p`
@example("https:", [], "u:p@h")
def test_after_a_special_scheme_the_slashes_change_no_user_info(
    scheme: str, slashes: list[str], rest: str
) -> None:
    assume(not rest.startswith(("/", "\\")))
    url = scheme + "".join(slashes) + rest
    assert has_userinfo(url) == has_userinfo(scheme + "//" + rest), url
    assert not has_userinfo(without_query(url)), without_query(url)
