"""Reading an API answer whole up to a cap, over real HTTP: with and without a Content-Length."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.sources.capped import BodyTooLargeError, read_capped

BODY = b"x" * 1000


async def sized(_: web.Request) -> web.Response:
    return web.Response(body=BODY)


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for n in range(0, len(BODY), 10):
        await response.write(BODY[n : n + 10])
    await response.write_eof()
    return response


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_get("/sized", sized)
    app.router.add_get("/chunked", chunked)
    test_server = TestServer(app)
    await test_server.start_server()
    yield test_server
    await test_server.close()


@pytest.mark.parametrize("path", ["/sized", "/chunked"])
async def test_an_answer_up_to_the_cap_is_read_whole(server: TestServer, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.make_url(path)) as response:
        assert await read_capped(response, len(BODY)) == BODY


@pytest.mark.parametrize("path", ["/sized", "/chunked"])
async def test_an_answer_over_the_cap_is_refused(server: TestServer, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.make_url(path)) as response:
        with pytest.raises(BodyTooLargeError, match=f"over {len(BODY) - 1}"):
            await read_capped(response, len(BODY) - 1)
