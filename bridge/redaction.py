"""A secret kept out of what is logged: the start of a text, every spelling of the secret in it
replaced whole, even where the cut splits one. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import overload
from urllib.parse import quote, quote_plus


def url_spellings(secret: str) -> list[str]:
    """`secret` as an echoed URL spells it, longest first: as it is, or URL-encoded (the feed's
    error pages and notices may quote the URL that carried it)."""
    return _longest_first({secret, quote_plus(secret), quote(secret, safe="")})


def json_spellings(secret: str) -> list[str]:
    """`secret` as a JSON echo spells it, longest first: a `"`, `\\` or non-ASCII character of it
    escaped (and `/` by some encoders)."""
    inner = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    inner |= {s.replace("/", "\\/") for s in inner}
    return _longest_first(inner)


def echo_spellings(*secrets: str) -> list[str]:
    """Each of `secrets` as a request's echo spells it, longest first: as sent (a header), in
    its JSON body, or in its URL."""
    return _longest_first({s for x in secrets for s in (*json_spellings(x), *url_spellings(x))})


def overhang(spellings: Sequence[str]) -> int:
    """How far past a cut to read so that a spelling the cut splits is still found whole."""
    return max((len(s.encode()) for s in spellings), default=0)


@overload
def hidden(text: str, spellings: Sequence[str], limit: int, mark: str) -> str: ...
@overload
def hidden(text: bytes, spellings: Sequence[str], limit: int, mark: str) -> bytes: ...
def hidden(text: str | bytes, spellings: Sequence[str], limit: int, mark: str) -> str | bytes:
    """The first `limit` characters (bytes) of `text`, each of `spellings` in them replaced whole
    by `mark`, even where the cut splits it: a cut alone hides none of a secret that fits in it."""
    if isinstance(text, bytes):
        raw = text[: limit + overhang(spellings)]
        for spelling in spellings:
            raw = raw.replace(spelling.encode(), mark.encode())
        return raw[:limit]
    head = text[: limit + overhang(spellings)]
    for spelling in spellings:
        head = head.replace(spelling, mark)
    return head[:limit]


# What an error says in place of a path setting's value it does not repeat (`shown_path`).
UNSHOWN_PATH = (
    "given (not repeated: it is no absolute path under a directory found here, so it may be a"
    " secret pasted in place of its path)"
)


def path_top(path: str) -> str | None:
    """The top-level entry of absolute `path` (`/etc` of `/etc/kafka/ca.pem`); None when `path`
    is relative or names no entry under `/`."""
    parts = PurePosixPath(path).parts
    if len(parts) < 2 or not parts[0].startswith("/") or parts[1] == "..":
        return None
    return "/" + parts[1]


def shown_path(path: str, exists: Callable[[str], bool]) -> str:
    """A path setting's value as an error may quote it: quoted when absolute and its top-level
    entry `exists`, else UNSHOWN_PATH (a token or password pasted in its place is neither)."""
    # Printed by `check` and at every start, which operators ship to shared log stores: an opaque
    # token (a JWT is refused by its shape) or a key password pasted for the path would be in
    # both. A leading `/` alone was no proof: one standard base64 secret in 64 starts with one.
    # A top-level directory (`/etc`, `/var`, a mount) that exists is: no secret's first segment
    # is one. Only absolute: the setting is a Path by then, which has dropped a leading `./`.
    top = path_top(path)
    return repr(path) if top is not None and exists(top) else UNSHOWN_PATH


# How `check` shows a secret's value: pydantic's own mask of a SecretStr in JSON.
MASK = "**********"


def without_password(username: str) -> str:
    """A user name as `check` may show it: a `name:secret` pair pasted whole shows the name
    only, the part after its first colon masked."""
    name, colon, rest = username.partition(":")
    return name + colon + MASK if rest else username


# A URL's scheme and `//`, its authority (user info and host), and the rest. A `\` counts as a
# `/`, as browsers read it (WHATWG URL): `https:\\user:pass@host` showed the password. After a
# scheme browsers treat as special (not `file`) any run of slashes, none included, comes before
# the authority: a browser reads `https:///u:p@h` (and `https:u:p@h`) as user `u`, password `p`.
_AUTHORITY = re.compile(
    r"(?P<before>(?:https?|wss?|ftp):[/\\]*|(?:[A-Za-z][A-Za-z0-9+.-]*:)?[/\\]{2})"
    r"(?P<host>[^/\\]*)(?P<path>.*)",
    re.S | re.I,
)
# Where a query or a fragment starts.
_QUERY = re.compile(r"[?#]")
# What urllib and yarl (so websockets and aiohttp) drop before reading a URL, as browsers do:
# C0 controls and spaces before it, a tab or newline anywhere (`https:/\t/u:p@h` has user info).
_LEADING = "".join(map(chr, range(0x21)))
_DROPPED = re.compile(r"[\t\n\r]")


def split_authority(url: str) -> tuple[str, str, str]:
    """`url`'s scheme and `//`, its authority as given (not cut at a `?` or `#`) and the rest; a
    relative reference has no authority (all of it is the rest)."""
    # Split by hand, not urlsplit: a server's Location may be no URL (`http://[x` raises). Not
    # cut at a `?` or `#`: the cut would hide an `@` after one (a password holding one).
    url = _DROPPED.sub("", url.lstrip(_LEADING))
    authority = _AUTHORITY.match(url)
    if authority is None:
        return "", "", url
    return authority["before"], authority["host"], authority["path"]


def has_userinfo(url: str) -> bool:
    """Whether `url` may carry a user's name or password before its host: an `@` in its
    authority as given or up to its first `/`, or after a port that is no number."""
    before, authority, rest = split_authority(url)
    # A `/` (base64's) in a password ends the authority there: `user:pa/ss@host` reads as host
    # `user`, port `pa`, the `@` left in the rest. A port of digits is not told apart from a
    # path's `@` (`host:443/calls/a@b`), and need not be: urllib, yarl and websockets all read
    # `key:12/34@h` as host `key`, port 12, path `/34@h`, and send no credentials.
    _, colon, port = authority.rpartition("]")[2].partition(":")
    # urllib (websockets' parser) reads a `\` as part of the authority, which ends at a `/`
    # only: websockets sends `u:12\ss@h`'s password `12\ss`.
    to_slash = (authority + rest).partition("/")[0] if before else ""
    return "@" in to_slash or (bool(colon) and not port.isdigit() and "@" in rest)


def without_query(url: str) -> str:
    """`url` as an error may quote it: without its query or fragment, nor a user's name and
    password before its host (credentials ride there: a token kept by a redirect, a signature)."""
    before, host, path = split_authority(url)
    if has_userinfo(url) and (
        "@" not in host or _QUERY.search(host) or "@" in path.partition("/")[0]
    ):
        # Where the user info ends is unclear: `u:p#w@h` (cut at `#`, `u:p` showed),
        # `h?t=a@b` (cut at the `@`, `b` showed), `u:pa/ss@h` (cut at the `/`, all of it
        # showed) or `u@p\ss@h` (cut at the `\`, urllib's `p\ss` showed): neither side is shown.
        return before + "…"
    shown = before + _QUERY.split(host.rpartition("@")[2] + path, maxsplit=1)[0]
    # A password holding an `@` and a `/` (`u@x:pa/ss@h`): what is left reads as user info again.
    return before + "…" if has_userinfo(shown) else shown


def _longest_first(spellings: set[str]) -> list[str]:
    # Longest first: a shorter spelling within a longer one, replaced first, would leave the rest
    # of the longer one showing.
    return sorted(spellings - {""}, key=len, reverse=True)
