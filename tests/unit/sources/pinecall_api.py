"""A fake of Pinecall's `/v1/webhook` (one webhook per organisation), served over real HTTP."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bridge.config import PinecallSettings
from tests.sockets import refusing_address


class FakeApi:
    """The platform's one webhook per organisation, as `pinecall_runtime.alerts` serves it."""

    def __init__(self) -> None:
        self.hook: dict[str, Any] | None = None  # {"url", "secret"}
        self.puts = 0
        self.gets = 0
        self.failing = False  # answer every request 503, as a Pinecall having a bad moment
        # Refuse a PUT 422 echoing its input, as FastAPI's validation errors do.
        self.refuse_put_echoing = False
        # Refuse a wrong key 401 echoing the request's Authorization header, as a debugging proxy
        # or framework does.
        self.echo_refused_key = False
        app = web.Application()
        app.router.add_route("*", "/v1/webhook", self.webhook)
        app.router.add_post("/v1/webhook/test", self.test)
        self.server = TestServer(app)
        # Its api_url is the server's, once started.
        self.settings = PinecallSettings(
            api_url=f"http://{refusing_address()}", api_key=SecretStr("k")
        )

    async def __aenter__(self) -> FakeApi:
        await self.server.start_server()
        base = str(self.server.make_url("")).rstrip("/")
        self.settings = self.settings.model_copy(update={"api_url": base})
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.server.close()

    async def webhook(self, request: web.Request) -> web.Response:
        if (given := request.headers.get("Authorization")) != "Bearer k":
            echo = {"authorization": given} if self.echo_refused_key else {}
            return web.json_response({"error": "unauthorized", **echo}, status=401)
        if self.failing:
            return web.json_response({"error": "unavailable"}, status=503)
        hook = self.hook
        if request.method == "GET":
            self.gets += 1
            shown = hook and {"url": hook["url"], "signed": hook["secret"] is not None}
            return web.json_response(shown)
        if request.method == "PUT":
            body = await request.json()
            if self.refuse_put_echoing:
                detail = {"loc": ["body", "secret"], "msg": "too short", "input": body["secret"]}
                return web.json_response({"detail": [detail]}, status=422)
            self.puts += 1
            self.hook = {"url": body["url"], "secret": body.get("secret") or None}
            return web.Response(status=204)
        if hook is None:
            return web.json_response({"detail": "alerts go nowhere"}, status=404)
        self.hook = None
        return web.Response(status=204)

    async def test(self, _: web.Request) -> web.Response:
        return web.json_response({"sent": False, "error": "ConnectError: refused"})
