"""A raw HTTP/1.1 client on asyncio streams, for requests no well-behaved client sends:
chunked or truncated bodies, lying lengths, duplicate or malformed headers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# length: a true Content-Length; chunked: Transfer-Encoding chunked; none: no framing header;
# short: a Content-Length below the body's length (the rest reads as the next request);
# long: a Content-Length above it, then the client stops sending (a truncated body).
Framing = Literal["length", "chunked", "none", "short", "long"]
Header = tuple[str | bytes, str | bytes]


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; the last of a repeated header wins
    body: bytes


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def build_request(
    method: str,
    target: str,
    headers: Sequence[Header],
    body: bytes = b"",
    *,
    framing: Framing = "length",
    chunk_sizes: Sequence[int] = (),
    keep_alive: bool = False,
) -> bytes:
    """The request's bytes; `Host` and `Connection: close` come first, then `headers` as given.

    `chunk_sizes` splits a chunked body (cycled; the default is one chunk). `keep_alive` leaves
    out `Connection: close`, for a request followed by another on its connection.
    """
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if not keep_alive:
        lines.append(b"Connection: close")
    lines.extend(_bytes(name) + b": " + _bytes(value) for name, value in headers)
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "short":
        lines.append(b"Content-Length: %d" % max(len(body) // 2, 0))
    elif framing == "long":
        lines.append(b"Content-Length: %d" % (len(body) + 1 + len(body) // 2))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = _chunked(body, chunk_sizes)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _chunked(body: bytes, sizes: Sequence[int]) -> bytes:
    pieces, at, n = [], 0, 0
    while at < len(body):
        size = max(sizes[n % len(sizes)], 1) if sizes else len(body)
        piece = body[at : at + size]
        pieces.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        at, n = at + size, n + 1
    return b"".join(pieces) + b"0\r\n\r\n"


async def exchange(
    host: str, port: int, request: bytes, *, half_close: bool = False, within: float = 30.0
) -> RawResponse | None:
    """Send `request`, read to the end; the first response, or None if the server sent none.

    `half_close` shuts the sending side after the request, so a server waiting for more body
    sees end-of-file. A connection the server resets counts as no response.
    """
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            try:
                writer.write(request)
                await writer.drain()
                if half_close:
                    writer.write_eof()
            except ConnectionError:
                pass  # the server may answer (e.g. 413) and close before it has read everything
            try:
                received = await reader.read()
            except ConnectionError:
                return None
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    return parse_response(received)


def parse_response(received: bytes) -> RawResponse | None:
    """The first final response in `received` (after any 100 Continue), or None if it has none."""
    head, separator, rest = received.partition(b"\r\n\r\n")
    if not separator:
        return None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None
    if 100 <= int(parts[1]) < 200:  # interim: the final response follows
        return parse_response(rest)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(rest)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = rest[: int(headers["content-length"])]
    else:
        body = rest
    return RawResponse(int(parts[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    body = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        body += data[:size]
        data = data[size + 2 :]
    return bytes(body)


class RawConnection:
    """One connection written and read step by step: a slow client, or one kept alive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """Write `data`; False if the server has closed the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            return False
        return not self.writer.is_closing()

    def half_close(self) -> None:
        """Shut the sending side (shutdown(SHUT_WR)): the server reads end-of-file."""
        self.writer.write_eof()

    async def dribble(self, data: bytes, every: float) -> None:
        """Send `data` a byte at a time, `every` seconds apart, until sent or refused."""
        for byte in data:
            if not await self.send(bytes([byte])):
                return
            await asyncio.sleep(every)

    async def response(self, within: float = 10.0) -> RawResponse | None:
        """The next response (head and Content-Length body), or None if the server closed first."""
        async with asyncio.timeout(within):
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            parsed = parse_response(head)
            if parsed is None:
                return None
            length = int(parsed.headers.get("content-length", "0"))
            body = await self.reader.readexactly(length)
        return parse_response(head + body)

    async def closed(self, within: float) -> bytes:
        """What the server sends until it closes; TimeoutError if still open after `within`."""
        received = bytearray()
        async with asyncio.timeout(within):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except ConnectionError:
                    break
                if not chunk:
                    break
                received += chunk
        return bytes(received)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
