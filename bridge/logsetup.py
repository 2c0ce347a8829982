"""Structured logs: one JSON object per line in production, a readable line in development."""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import ModuleType, TracebackType
from typing import Any, ClassVar, Generic

from aiohttp.http_exceptions import HttpProcessingError
from aiokafka.errors import KafkaConnectionError

from bridge import jsoncodec, logthrottle
from bridge.connlimit import out_of_descriptors, say_out_of_descriptors
from bridge.logthrottle import EVERY, K, Throttle, say_held

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
# What `extra=` must not name: a LogRecord attribute (logging raises KeyError at the call, in an
# error path as likely as not) or a JSON line's own key (the field would replace it).
RESERVED_FIELDS = _STANDARD | {"ts", "level", "logger", "msg", "exc", "msg_args", "msg_error"}


# A field's text past this is cut: a value echoed from input (an SSE event's type may be nearly
# 1 MiB) must not make a line that log shippers split (16 KiB) or a log store refuses.
MAX_FIELD_CHARS = 4096


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: _field(v)
        for k, v in vars(record).items()
        if k not in _STANDARD and not k.startswith("_")
    }


def _field(value: Any) -> Any:
    """A field's value as logged: long text cut, saying how long it was; NaN and infinities as
    text, which JSON has no number for (orjson writes null, as if the field were unset)."""
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return f"{value[:MAX_FIELD_CHARS]}… ({len(value)} chars)"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _repr(value: Any, text: Callable[[Any], str] = repr) -> str:
    """`text(value)`, or the value's type when that raises: one broken __repr__ loses no line."""
    try:
        return text(value)
    except Exception as exc:  # any: the code is the value's own, not the bridge's
        return f"<{type(value).__name__}: {text.__name__}() raised {type(exc).__name__}>"


def _jsonable(value: Any) -> Any:
    """A value orjson cannot write as JSON (bytes, an exception, any object): a set as a list,
    anything else as its repr."""
    return list(value) if isinstance(value, set | frozenset) else _repr(value)


def _text(text: str) -> str:
    # A lone surrogate (from surrogateescape-decoded bytes, say) is no UTF-8: spelt as \udcxx.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    try:
        jsoncodec.dumps(value, default=_jsonable)
    except jsoncodec.JSONEncodeError:  # a lone surrogate inside, an int past 64 bits, too deep
        return _text(_repr(value))
    return value


def _dumps(entry: dict[str, Any]) -> bytes:
    """The entry as JSON, whatever its fields hold: a log line is never dropped."""
    try:
        return jsoncodec.dumps(entry, default=_jsonable)
    except jsoncodec.JSONEncodeError:
        # Rare, so field by field only now: the fields that cannot be written become text.
        return jsoncodec.dumps({_text(k): _safe(v) for k, v in entry.items()}, default=_jsonable)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **_message(record),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = _dumps(entry).decode()
        # JSON lets these stand raw in a string, yet they end a line for Python's splitlines(),
        # JavaScript before ES2019, and some log viewers: escaped, the line stays one line.
        return _SEPARATORS.sub(_json_escape, line) if _SEPARATORS.search(line) else line


_SEPARATORS = re.compile("[\u0085\u2028\u2029]")


def _message(record: logging.LogRecord) -> dict[str, str]:
    """`msg`, or for a template its arguments do not fit (the log call's bug) the template, its
    arguments and the error: logging would write `--- Logging error ---` and a traceback instead."""
    try:
        return {"msg": record.getMessage()}
    except Exception as exc:  # any: the template and arguments are the caller's
        return {
            "msg": _repr(record.msg, str),
            "msg_args": _repr(record.args),
            "msg_error": f"{type(exc).__name__}: {_repr(exc, str)}",
        }


def _json_escape(char: re.Match[str]) -> str:
    return f"\\u{ord(char.group()):04x}"


# C0 and C1 controls, DEL and the Unicode line separators: in a console line they would start a
# new, forged line (an untrusted call id or type holding `\n2026 ERROR ...`) or move the cursor.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: re.Match[str]) -> str:
    c = char.group()
    return _ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _one_line(value: Any) -> str:
    """`value` as text on one line: control characters escaped as in a Python literal."""
    text = _text(_repr(value, str))
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{_one_line(k)}={_one_line(v)}" for k, v in _fields(record).items())
        message = _one_line(record.getMessage())
        line = f"{stamp} {record.levelname:<7} {record.name}: {message} {extras}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _ThrottledFilter(logging.Filter, ABC, Generic[K]):
    """A filter whose lines are thinned by key (bridge.logthrottle): each states what it matches,
    its key, and in `flush` what it says at stop of what it still holds back."""

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._every = every
        self._clock = clock
        self._throttle: Throttle[K] = Throttle(every, clock)
        logthrottle.register(self)

    def _admit(self, record: logging.LogRecord, key: K) -> bool:
        """Whether to log the record, which then carries the count held back before it."""
        held = self._throttle.admit(key)
        if held is None:
            return False
        for name, value in held.fields().items():
            setattr(record, name, value)
        return True

    @abstractmethod
    def flush(self) -> None: ...

    def forget(self) -> None:
        self._throttle = Throttle(self._every, self._clock)


class _TransientKafkaFilter(_ThrottledFilter[tuple[str, int, str, str]]):
    """Holds back aiokafka's ERRORs for what passes by itself and the bridge reports anyway.

    A topic not yet in metadata is routine right after creating it, and one that stays missing
    keeps the bridge unready: dropped. A broker it cannot connect to, and the consumer group's
    coordinator lookups, heartbeats and fetches that fail with it, are retried all through an
    outage or a rebalance, which the bridge logs itself (`Kafka not ready yet`, readiness,
    `kafka_connected`), as is a new topic's start offset asked before its leader is ready:
    WARNINGs, so the address and the reason stay in the log. Each is thinned (bridge.logthrottle)
    by message, and by broker for a connection: retried through an outage, they came 100 a second.
    """

    _DROPPED = ("Topic %s not found in cluster metadata",)
    # Message -> the position of its error among the arguments when aiokafka gives up on a
    # non-retriable one (an authorization failure stays an ERROR), None when always retried.
    _DEMOTED: ClassVar[Mapping[str, int | None]] = {
        'Unable connect to "%s:%s": %s': None,
        "Unable connect to node with id %s: %s": None,
        "Unable to update metadata from %s": None,
        "Group Coordinator Request failed: %s": 0,
        "Error sending %s to node %s [%s] -- marking coordinator dead": 2,
        "Heartbeat send request failed: %s. Will retry.": None,
        "Heartbeat session expired - marking coordinator dead": None,
        "Failed fetch messages from %s: %s": None,
        # Looking up where to start (ListOffsets), retried until it succeeds: routine at every
        # first start, a partition of a topic just created not led by its broker yet.
        "Failed fetch offsets from %s: %s": 1,
    }

    _UNREACHABLE = ('Unable connect to "%s:%s": %s', "Unable connect to node with id %s: %s")
    # A background task dead of a reset connection (aiokafka#1038: under uvloop a write to it
    # raises RuntimeError): the bridge replaces the client and logs that at ERROR, naming the
    # cause (bridge.sink.clienttasks). Any other death stays aiokafka's ERROR too.
    _RESET_DEATHS = (
        "Unexpected error in sender routine",
        "Unexpected error in coordinator routine",
        "Unexpected error in fetcher routine",
    )

    _flushing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self._flushing:  # the count of what was held back, through this logger: said
            return True
        msg = str(record.msg)
        if msg in self._DROPPED:
            return False
        if (
            record.levelno > logging.WARNING
            and (
                (msg in self._DEMOTED and self._retried(record))
                or (msg in self._RESET_DEATHS and _reset(record.exc_info))
            )
            and not _demote(record)
        ):
            return False  # demoted below the logger's level
        where = ""
        if msg in self._UNREACHABLE and isinstance(record.args, tuple) and record.args:
            *rest, error = record.args
            where = ":".join(map(str, rest))
            if not str(error):
                record.args = (*rest, _unexplained(error))
        else:
            # And by the errors it names (aiokafka's classes: a fixed set): a broker refusing
            # with NotEnoughReplicas after a run of NotLeaderForPartition is news, not a repeat.
            where = ",".join(_error_kinds(record.args))
        # By logger, level, message template (aiokafka's fixed set) and, for a connection, the
        # broker: a 60 s outage logged some 100 lines/s of retries, each the same few messages.
        return self._admit(record, (record.name, record.levelno, msg, where))

    def flush(self) -> None:
        self._flushing = True
        try:
            for (name, level, msg, where), held in self._throttle.drain():
                # The template's placeholders left unfilled: the lines it stands for differ there.
                said = re.sub(r"%[sdr]", "…", msg) + (f" ({where})" if where else "")
                say_held(logging.getLogger(name), level, said, held)
        finally:
            self._flushing = False

    def _retried(self, record: logging.LogRecord) -> bool:
        at = self._DEMOTED[str(record.msg)]
        if at is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return len(args) > at and getattr(args[at], "retriable", False) is True


def _reset(exc_info: Any) -> bool:
    """Whether a logged exception is a connection reset: aiokafka's, the OS's, or uvloop's
    RuntimeError writing to a transport just closed (aiokafka#1038)."""
    exc = exc_info[1] if isinstance(exc_info, tuple) else None
    if isinstance(exc, KafkaConnectionError | ConnectionError):
        return True
    return isinstance(exc, RuntimeError) and "the handler is closed" in str(exc)


class _SenderCallbackFilter(_ThrottledFilter[str]):
    """Demotes asyncio's ERROR for aiokafka's `Sender._fail_all` failing: a WARNING, thinned.

    When an idempotent producer's sender dies, aiokafka's callback fails in turn (no transaction
    to fail: AttributeError). The death itself is the bridge's ERROR, the producer replaced.
    """

    _MSG = "Exception in callback Sender._fail_all"

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if (
            record.levelno > logging.WARNING
            and msg.startswith("Exception in callback")
            and "Sender._fail_all" in msg.partition("\n")[0]
        ):
            # Once per producer death, the same traceback each time: connections reset again and
            # again gave one a death while the deaths' other lines (aiokafka's, the bridge's) were
            # thinned.
            return _demote(record) and self._admit(record, self._MSG)
        return True

    def flush(self) -> None:
        for _, held in self._throttle.drain():
            say_held(logging.getLogger("asyncio"), logging.WARNING, self._MSG, held)


class _AcceptOutOfDescriptorsFilter(logging.Filter):
    """Says asyncio's ERROR for a listener's accept() out of descriptors as the sources' is:
    one thinned WARNING (bridge/connlimit.py), not a traceback per try.

    asyncio (3.11) tries again at once on EMFILE, up to the listen backlog's times per wake-up
    (128, aiohttp's), each try an ERROR with its traceback: measured, 1,024 lines in 2.5 s.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not str(record.msg).startswith(ACCEPT_FAILED) or error is None:
            return True
        if not out_of_descriptors(error):  # ENOBUFS, ENOMEM: asyncio's line as it is
            return True
        say_out_of_descriptors("http_accept", f"{type(error).__name__}: {error}")
        return False


# asyncio's message (selector_events._accept_connection) for EMFILE, ENFILE, ENOBUFS, ENOMEM.
# Never uvloop's (`run`'s loop): libuv accepts and closes such connections itself, unsaid
# (tests/integration/test_accept_out_of_descriptors.py).
ACCEPT_FAILED = "socket.accept() out of system resource"


def _demote(record: logging.LogRecord) -> bool:
    """Makes an ERROR a WARNING; False when its logger is set above WARNING (the demo's ERROR)."""
    # The logger let it through at ERROR, before its filters ran: a WARNING is checked again.
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    return logging.getLogger(record.name).isEnabledFor(logging.WARNING)


def _error_kinds(args: object) -> list[str]:
    """The class names of the exceptions (or exception classes) among a record's arguments."""
    if not isinstance(args, tuple):
        return []
    return [
        (arg if isinstance(arg, type) else type(arg)).__name__
        for arg in args
        if isinstance(arg, BaseException)
        or (isinstance(arg, type) and issubclass(arg, BaseException))
    ]


def _unexplained(error: object) -> str:
    """A reason for a connection error whose text is empty: the line ended at its colon.

    A timeout or a reset is what a port that is no Kafka listener, or a TLS mismatch, gives.
    """
    name = type(error).__name__
    if isinstance(error, TimeoutError):
        return (
            f"{name}: no answer within BRIDGE_KAFKA__REQUEST_TIMEOUT_MS (is the port a Kafka"
            " listener, and does BRIDGE_KAFKA__SECURITY_PROTOCOL match its TLS or plaintext?)"
        )
    if isinstance(error, ConnectionError):
        return (
            f"{name}: the listener closed the connection (does BRIDGE_KAFKA__SECURITY_PROTOCOL"
            " match its TLS or plaintext?)"
        )
    return name


def _malformed(msg: str, exc: BaseException) -> bool:
    """Whether aiohttp's server logged a request (head or body) its parser refused."""
    if msg.startswith("Error handling request"):  # a head, answered 400 before any handler
        return isinstance(exc, HttpProcessingError)
    if msg.startswith("Unhandled exception"):
        # A body's framing refused while aiohttp drained it after an early answer (413, 415):
        # its pure-Python parser fails the body's reader, and the drain's read raises that.
        from aiohttp.web_protocol import RequestPayloadError  # loaded: it is what raised

        return isinstance(exc, HttpProcessingError | RequestPayloadError)
    return False


class MalformedRequestFilter(_ThrottledFilter[str]):
    """Turns aiohttp's ERROR-with-traceback for a malformed request into a short WARNING, at most
    one per `every` seconds: a hostile client must not be able to flood the logs."""

    _MSG = "malformed HTTP request refused"

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not _malformed(str(record.msg), exc):
            return True
        if not self._admit(record, self._MSG):
            return False
        record.msg, record.args = self._MSG, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        record.error = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
        return True

    def flush(self) -> None:
        for _, held in self._throttle.drain():
            say_held(logging.getLogger("aiohttp.server"), logging.WARNING, self._MSG, held)


class StaticFields(logging.Filter):
    """Adds the same fields to every record, e.g. a worker process's index."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self._fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self._fields.items():
            setattr(record, name, value)
        return True


# Python's own reports, each by default several raw lines on stderr, logged as one line instead.
_PYTHON_LOGGER = "py.errors"


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    """sys.excepthook: the exception that ends the program."""
    logging.getLogger(_PYTHON_LOGGER).critical(
        "uncaught exception", exc_info=(kind, value, traceback)
    )


def _exc_info(
    kind: type[BaseException], value: BaseException | None, traceback: TracebackType | None
) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
    """A hook's exception as logging takes it; None when the hook was given no value."""
    return None if value is None else (kind, value, traceback)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook: an exception that ended a thread (its SystemExit ends it quietly)."""
    if args.exc_type is SystemExit:
        return
    logging.getLogger(_PYTHON_LOGGER).error(
        "uncaught exception in a thread",
        exc_info=_exc_info(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"thread_name": args.thread.name if args.thread is not None else None},
    )


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """sys.unraisablehook: an exception Python can only ignore (raised in `__del__`, say)."""
    # Only its repr, never the object itself, outlives the call: it may be being finalized.
    fields = {} if unraisable.object is None else {"object": _repr(unraisable.object)}
    logging.getLogger(_PYTHON_LOGGER).error(
        unraisable.err_msg or "Exception ignored in",
        exc_info=_exc_info(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
        extra=fields,
    )


_HOOKS: tuple[tuple[ModuleType, str, Callable[..., None]], ...] = (
    (sys, "excepthook", _log_uncaught),
    (threading, "excepthook", _log_thread_exception),
    (sys, "unraisablehook", _log_unraisable),
)
_replaced: dict[tuple[str, str], Any] = {}  # the hook each of ours replaced, put back by console


def _python_reports_logged(logged: bool) -> None:
    """Warnings and Python's exception reports through logging (JSON), or Python's own (console).

    A log store taking stderr line by line would split a traceback Python wrote into lines that
    are no JSON, each on its own: the console, for a person, keeps Python's.
    """
    logging.captureWarnings(logged)
    for module, name, ours in _HOOKS:
        current = getattr(module, name)
        if logged and current is not ours:
            _replaced[module.__name__, name] = current
            setattr(module, name, ours)
        elif not logged and current is ours:
            setattr(
                module, name, _replaced.pop((module.__name__, name), getattr(module, f"__{name}__"))
            )


def configure(level: str, fmt: str, fields: Mapping[str, Any] | None = None) -> None:
    """Log to stderr at `level`; `fields` are added to every line (a worker's `worker: <i>`)."""
    _python_reports_logged(fmt == "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    if fields:
        handler.addFilter(StaticFields(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka's INFO is per connection and per group event; the bridge reports outages itself.
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))
    # A logger's filters see only its own records, not its children's: each module's logger.
    for name in (
        "aiokafka",  # client.py
        "aiokafka.cluster",
        "aiokafka.consumer.group_coordinator",
        "aiokafka.consumer.fetcher",
        "aiokafka.producer.sender",  # `Got error produce response`, per request and retry
    ):
        noisy = logging.getLogger(name)
        if not any(isinstance(f, _TransientKafkaFilter) for f in noisy.filters):
            noisy.addFilter(_TransientKafkaFilter())
    loop_errors = logging.getLogger("asyncio")
    for kind in (_SenderCallbackFilter, _AcceptOutOfDescriptorsFilter):
        if not any(isinstance(f, kind) for f in loop_errors.filters):
            loop_errors.addFilter(kind())
    # At DEBUG websockets logs the handshake's headers and URL (the API key, the feed token) and
    # every frame: never below INFO, whatever the root level.
    logging.getLogger("websockets").setLevel(max(logging.getLevelName(level), logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    # A fresh one: configuring again must not inherit an earlier configuration's quiet period.
    for stale in [f for f in server.filters if isinstance(f, MalformedRequestFilter)]:
        server.removeFilter(stale)
        stale.flush()
    server.addFilter(MalformedRequestFilter())
