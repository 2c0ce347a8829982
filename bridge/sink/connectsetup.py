"""A connection set-up timeout for aiokafka: Kafka's socket.connection.setup.timeout.ms (KIP-601).

aiokafka sets a connection up (TCP connect and TLS, its ApiVersions request, SASL) within its
request timeout, and opens every connection of a client under one lock (AIOKafkaClient._get_conn):
a broker whose host vanished (SYNs dropped, no RST) holds a metadata update or coordinator lookup
that picked it for the whole request timeout, and each other new connection of that client waits
behind it. aiokafka has no setting for it, and hands create_conn nothing of its client but the
client's options: the bound rides on the client id (`ClientId`, a str), which `client_options`
gives every client the bridge builds; aiokafka.client's create_conn, wrapped once, applies it.

The wrap also keeps whether the process's last connection set-up refused for its credentials
was followed by none that succeeded (`AUTHENTICATION`): aiokafka logs such a refusal and raises
only "Unable to bootstrap", or retries it unseen (a rebalance's coordinator), so the clients'
own errors cannot tell it. And it holds each connection set up while a client starts in a
`ConnectionTally` (clienttasks.start_client): one a cut start would drop unclosed.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiokafka.client
from aiokafka.errors import KafkaConnectionError

from bridge.kafkarefusals import refused_authentication

log = logging.getLogger(__name__)
CreateConn = Callable[..., Awaitable[Any]]
T = TypeVar("T")
_installed: list[bool] = []  # whether the wrap was tried; its outcome


class ClientId(str):
    """A Kafka client id carrying its client's connection set-up timeout, in seconds.

    With a `base` (BRIDGE_KAFKA__CLIENT_ID_PER_ROLE), each role's client is `<base>-<role>`.
    """

    connect_timeout_s: float
    base: str | None

    def __new__(cls, value: str, connect_timeout_s: float, base: str | None = None) -> ClientId:
        self = super().__new__(cls, value)
        self.connect_timeout_s = connect_timeout_s
        self.base = base
        return self

    def __getnewargs__(self) -> tuple[str, float, str | None]:  # type: ignore[override]
        return str(self), self.connect_timeout_s, self.base

    def for_role(self, role: str) -> ClientId:
        """This id for a client of `role`: `<base>-<role>` with a base, else itself."""
        if self.base is None:
            return self
        return ClientId(f"{self.base}-{role}", self.connect_timeout_s, self.base)


def for_role(options: Mapping[str, Any], role: str) -> dict[str, Any]:
    """A Kafka client's `options` for a client of `role` (its client id, per role if asked).

    Every Kafka client the bridge builds takes its options through here
    (tests/unit/sink/test_connectsetup.py walks them): a quota on `<client id>-<role>` then
    applies to that client alone. Options whose id is a plain string are kept as they are.
    """
    client_id = options.get("client_id")
    if isinstance(client_id, ClientId):
        return {**options, "client_id": client_id.for_role(role)}
    return dict(options)


class AuthenticationOutcome:
    """Whether the last connection set-up that settled it was refused for its credentials."""

    def __init__(self) -> None:
        self.refused = False

    def settled(self, exc: BaseException | None) -> None:
        """A set-up ended: succeeded (None), or failed with `exc`; a failure for another reason
        (unreachable, timed out) says nothing of the credentials, and changes nothing."""
        if exc is None:
            self.refused = False
        elif refused_authentication(exc):
            self.refused = True


# The process's own: each worker of a pod is a process, and judges its own clients.
AUTHENTICATION = AuthenticationOutcome()


class ConnectionTally:
    """The connections set up by a client's start (its task and the tasks it makes), held while
    the tally is open; closed by whoever cut the start short (clienttasks.start_client).

    aiokafka's bootstrap keeps its connection in a local variable until the metadata answers:
    cancelled meanwhile, it drops it unclosed ("Unclosed AIOKafkaConnection" when collected).
    """

    def __init__(self) -> None:
        self._held: list[Any] | None = []

    def add(self, conn: Any) -> None:
        if self._held is not None:
            self._held.append(conn)

    def close_open(self) -> int:
        """Close each connection held that is still open; how many were."""
        left = [conn for conn in self._held or () if conn.connected()]
        for conn in left:
            conn.close()
        return len(left)

    def end(self) -> None:
        """Hold nothing more: the client's tasks run on, and their later connections are its."""
        self._held = None


_TALLY: contextvars.ContextVar[ConnectionTally | None] = contextvars.ContextVar(
    "kafka_connection_tally", default=None
)


def run_tallied(start: Callable[[], Awaitable[T]], tally: ConnectionTally) -> asyncio.Task[T]:
    """`start` in a task of its own whose connection set-ups (and its tasks') `tally` holds."""
    context = contextvars.copy_context()
    context.run(_TALLY.set, tally)

    async def run() -> T:
        return await start()

    return asyncio.get_running_loop().create_task(run(), context=context)


def bounded(create_conn: CreateConn, outcome: AuthenticationOutcome = AUTHENTICATION) -> CreateConn:
    """`create_conn`, its set-up given up after the client id's connect timeout (if it has one),
    each outcome told to `outcome`.

    Given up, it raises KafkaConnectionError, which aiokafka's callers handle as its own
    connect timeout (TimeoutError): the metadata is refreshed and another broker tried. The
    cancelled set-up leaves nothing open: asyncio closes a socket whose connect or TLS handshake
    is cancelled, and aiokafka's connect closes its connection when a later step is.
    """

    async def create_bounded(host: str, port: int, **options: Any) -> Any:
        try:
            conn = await create_timed(host, port, **options)
        except Exception as exc:
            outcome.settled(exc)
            raise
        outcome.settled(None)
        tally = _TALLY.get()
        if tally is not None:
            tally.add(conn)
        return conn

    async def create_timed(host: str, port: int, **options: Any) -> Any:
        seconds = getattr(options.get("client_id"), "connect_timeout_s", None)
        if seconds is None:
            return await create_conn(host, port, **options)
        try:
            async with asyncio.timeout(seconds) as bound:
                return await create_conn(host, port, **options)
        except TimeoutError as exc:
            if not bound.expired():
                raise  # aiokafka's own request timeout, on a step of the set-up
            raise KafkaConnectionError(
                f"no connection to {host}:{port} set up within {seconds:g} s"
                " (BRIDGE_KAFKA__CONNECT_TIMEOUT_MS: is the host reachable, the port a Kafka"
                " listener, and BRIDGE_KAFKA__SECURITY_PROTOCOL its TLS or plaintext?)"
            ) from exc

    create_bounded.__wrapped__ = create_conn  # type: ignore[attr-defined]
    return create_bounded


def install() -> bool:
    """Make aiokafka's clients bound their connections' set-up (once); False if it cannot."""
    if not _installed:
        _installed.append(_wrap(aiokafka.client))
    return _installed[0]


def _wrap(module: Any) -> bool:
    create_conn = getattr(module, "create_conn", None)
    if not inspect.iscoroutinefunction(create_conn):
        log.warning(
            "aiokafka's client has changed: a connection's set-up waits out the request timeout",
            extra={"attribute": "aiokafka.client.create_conn"},
        )
        return False
    module.create_conn = bounded(create_conn)
    return True
