"""Fault injection: make the next matching requests fail, stall, lie or lose their connection.

Rules are added from any thread (usually the test thread, while the server runs in its
own) and consumed by a middleware on the server's loop; one lock guards them. A rule
matches by a regular expression searched in the request path (``re.search``) and an
optional method. Rules are tried in the order they were added; the first one that
matches *and fires* handles the request.

Which requests a rule fires on is decided by count, so a test is deterministic: ``skip``
lets the first matching requests through, ``every`` fires on one in so many after that,
and ``count`` bounds how many it fires on in all (``rate`` adds a seeded coin toss for
soak runs). What it does::

    srv.faults.add(r"/asample$", status=429, retry_after=0.2, count=3)  # 429 + Retry-After
    srv.faults.add(r"/asample$", status=429)                          # 429, no Retry-After
    srv.faults.add(r"/optim_step$", status=503, count=4)               # a 5xx burst
    srv.faults.add(r"/retrieve_future$", delay_s=2.0)                  # slow, then normal
    srv.faults.add(r"/forward_backward$", drop_connection=True)        # before it is applied
    srv.faults.add(r"/forward_backward$", drop_connection="after")     # after it is admitted
    srv.faults.add(r"/retrieve_future$", mangle="truncate")            # half the real body
    srv.faults.add(r"/retrieve_future$", mangle="garbage", zstd=True)  # zstd of junk
    srv.faults.add(r"/retrieve_future$", mangle="cut", keep_bytes=10)  # body cut mid-way
    srv.faults.add(r"/retrieve_futures$", stall=True, count=None)      # never answers
    srv.faults.add(r"", status=503, count=None, every=20)              # 1 in 20, forever

``drop_connection="after"`` and every ``mangle`` run the real handler first: the server
has done what the request asked (a training submit is admitted and will be applied, a
poll has consumed nothing it cannot give again) and the client loses or cannot read the
answer. A stalled request waits until :meth:`FaultInjector.release_stalled`, the client
giving up, the server stopping, or ``delay_s`` (when given) and is then dropped unanswered.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from .. import _proto
from ._errors import ApiError, json_response

__all__ = ["DroppedConnection", "Fault", "FaultInjector", "FaultRule", "apply_fault"]

Mangle = Literal["truncate", "garbage", "cut"]
"""How a real answer is spoilt: a complete response with part of the body (``truncate``),
one with junk of the same content type (``garbage``), or the real headers with part of
the body and then a closed connection (``cut``)."""

_MANGLES = ("truncate", "garbage", "cut")
_STALL_LIMIT_S = 3600.0
"""A stall with no ``delay_s`` ends after an hour at most (a server must not leak)."""
_PROTOBUF = "application/x-protobuf"
# Junk that no decoder can take for a message: an unterminated varint for protobuf,
# an unterminated object with invalid UTF-8 for JSON.
_GARBAGE_PROTOBUF = b"\xff" * 12
_GARBAGE_JSON = b'{"request_id": "\xff\xfe'
_GARBAGE_ZSTD = b"\x28\xb5\x2f\xfd" + b"\x00\xff" * 8  # a zstd magic, then junk


class DroppedConnection(Exception):
    """A fault closed the connection: there is no response to send."""


@dataclass(frozen=True)
class Fault:
    """What to do to one request (a snapshot of the rule that fired)."""

    status: int | None
    retry_after: float | None
    delay_s: float
    drop_connection: bool
    """Close the connection before the handler runs (nothing is applied)."""
    body: Mapping[str, Any] | None
    headers: Mapping[str, str]
    drop_after: bool = False
    """Run the handler, then close the connection without answering."""
    stall: bool = False
    mangle: Mangle | None = None
    keep_bytes: int | None = None
    """For ``truncate`` and ``cut``: how many body bytes to send (default: half)."""
    garbage: bytes | None = None
    zstd: bool = False
    """Send the (spoilt) body zstd-compressed, with ``Content-Encoding: zstd``."""

    def response_body(self) -> dict[str, Any]:
        """The JSON body of an injected status."""
        if self.body is not None:
            return dict(self.body)
        return {"detail": f"Injected fault: HTTP {self.status}"}

    def response_headers(self) -> dict[str, str]:
        """Headers of an injected status (``Retry-After`` plus any extras)."""
        headers = dict(self.headers)
        if self.retry_after is not None:
            # Whole seconds are written as integers, as RFC 9110 expects; fractions are kept
            # because the official SDK (and ours) accept them and tests want short waits.
            value = self.retry_after
            headers["Retry-After"] = str(int(value)) if float(value).is_integer() else f"{value:g}"
        return headers

    @property
    def runs_handler_first(self) -> bool:
        """Whether the request is handled (and its work admitted) before the fault acts."""
        return self.drop_after or self.mangle is not None


@dataclass(eq=False)
class FaultRule:
    """One registered rule. ``remaining`` is ``None`` for a rule that never runs out."""

    pattern: re.Pattern[str]
    method: str | None
    fault: Fault
    remaining: int | None
    rate: float
    skip: int = 0
    every: int = 1
    hits: int = 0
    """Requests the rule fired on."""
    seen: int = 0
    """Matching requests, fired on or not."""
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to this request (ignoring its budget and schedule)."""
        if self.method is not None and self.method != method.upper():
            return False
        return self.pattern.search(path) is not None

    def _fires(self) -> bool:
        """Count one matching request; whether the schedule picks it (lock held)."""
        self.seen += 1
        index = self.seen - self.skip - 1  # 0 for the first request after the skipped ones
        if index < 0 or index % self.every:
            return False
        return self.rate >= 1.0 or self._rng.random() < self.rate


class FaultInjector:
    """The server's fault rules. Every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._release: asyncio.Event | None = None
        self._release_loop: asyncio.AbstractEventLoop | None = None

    def add(
        self,
        path_pattern: str,
        status: int | None = None,
        count: int | None = 1,
        retry_after: float | None = None,
        delay_s: float = 0.0,
        drop_connection: bool | Literal["before", "after"] = False,
        body: Mapping[str, Any] | None = None,
        method: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        rate: float = 1.0,
        seed: int | None = None,
        skip: int = 0,
        every: int = 1,
        stall: bool = False,
        mangle: Mangle | None = None,
        keep_bytes: int | None = None,
        garbage: bytes | None = None,
        zstd: bool = False,
    ) -> FaultRule:
        """Inject a fault into matching requests; returns the rule (``hits`` counts them).

        What happens (one of):

        - ``status``: answer with this status and ``body`` (default ``{"detail": ...}``),
          plus ``Retry-After: retry_after`` when given and any extra ``headers``.
        - ``delay_s`` alone: wait this long, then handle the request normally.
        - ``drop_connection=True`` (or ``"before"``): close the connection without any
          response, before the handler runs (after ``delay_s``). ``"after"``: run the
          handler first (the request is admitted), then close without answering.
        - ``stall``: never answer; wait until :meth:`release_stalled`, the client leaves,
          the server stops or ``delay_s`` passes (default an hour), then drop.
        - ``mangle``: run the handler, then spoil its answer: ``"truncate"`` (a complete
          response carrying ``keep_bytes`` of the body, default half), ``"garbage"`` (the
          same status and content type, a body no decoder accepts, or ``garbage``),
          ``"cut"`` (the real headers and length, ``keep_bytes`` of the body, then the
          connection closes). ``zstd=True`` sends the spoilt body zstd-compressed with
          ``Content-Encoding: zstd``.

        Which matching requests (in arrival order): the first ``skip`` pass; after them
        one in ``every`` is picked, and of those a fraction ``rate`` (a coin seeded by
        ``seed``); at most ``count`` are hit in all (``None``: until removed).
        ``method`` restricts the rule to one HTTP method (case-insensitive).
        """
        drop_before = drop_connection is True or drop_connection == "before"
        drop_after = drop_connection == "after"
        if drop_connection not in (False, True, "before", "after"):
            raise ValueError("drop_connection must be a bool, 'before' or 'after'")
        if mangle is not None and mangle not in _MANGLES:
            raise ValueError(f"mangle must be one of {_MANGLES}")
        actions = [status is not None, drop_before or drop_after, stall, mangle is not None]
        if sum(actions) > 1:
            raise ValueError("choose one of status, drop_connection, stall and mangle")
        if not any(actions) and delay_s <= 0:
            raise ValueError("a fault needs a status, a delay, drop_connection, stall or mangle")
        if (keep_bytes is not None or garbage is not None or zstd) and mangle is None:
            raise ValueError("keep_bytes, garbage and zstd go with mangle")
        if keep_bytes is not None and keep_bytes < 0:
            raise ValueError("keep_bytes must be >= 0")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None for unlimited)")
        if not 0.0 < rate <= 1.0:
            raise ValueError("rate must be in (0, 1]")
        if skip < 0 or every < 1:
            raise ValueError("skip must be >= 0 and every >= 1")
        fault = Fault(
            status=status,
            retry_after=retry_after,
            delay_s=max(0.0, delay_s),
            drop_connection=drop_before,
            body=dict(body) if body is not None else None,
            headers=dict(headers or {}),
            drop_after=drop_after,
            stall=stall,
            mangle=mangle,
            keep_bytes=keep_bytes,
            garbage=garbage,
            zstd=zstd,
        )
        rule = FaultRule(
            pattern=re.compile(path_pattern),
            method=method.upper() if method else None,
            fault=fault,
            remaining=count,
            rate=rate,
            skip=skip,
            every=every,
            _rng=random.Random(seed),
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        """Drop one rule (no error if it is already spent or removed)."""
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        """Drop every rule and let stalled requests go (they are then dropped)."""
        with self._lock:
            self._rules.clear()
        self.release_stalled()

    @property
    def rules(self) -> list[FaultRule]:
        """The rules still active, in order."""
        with self._lock:
            return list(self._rules)

    def take(self, method: str, path: str) -> Fault | None:
        """The fault for this request, if a rule fires; spends one unit of its budget."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path) or not rule._fires():
                    continue
                rule.hits += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                return rule.fault
        return None

    # ------------------------------------------------------------------------------ stalls

    def release_stalled(self) -> None:
        """End every stall in progress (those requests are dropped unanswered)."""
        with self._lock:
            event, loop = self._release, self._release_loop
            self._release = self._release_loop = None
        if event is None or loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop closed in between
            pass

    def _stall_event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._release is None or self._release_loop is not loop:
                self._release, self._release_loop = asyncio.Event(), loop
            return self._release

    async def stall(self, limit_s: float) -> None:
        """Wait until released or ``limit_s`` passes (on the server's loop)."""
        event = self._stall_event()
        try:
            await asyncio.wait_for(event.wait(), limit_s)
        except asyncio.TimeoutError:
            pass


# ----------------------------------------------------------------------------- middleware


def _drop(request: web.Request) -> DroppedConnection:
    if request.transport is not None:
        request.transport.close()
    return DroppedConnection()


async def apply_fault(
    injector: FaultInjector, fault: Fault, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Handle ``request`` with ``fault`` (the middleware's work; runs on the server loop).

    Raises :class:`DroppedConnection` when the connection was closed with no answer.
    """
    if fault.delay_s > 0 and not fault.stall:
        await asyncio.sleep(fault.delay_s)
    if fault.stall:
        await injector.stall(fault.delay_s if fault.delay_s > 0 else _STALL_LIMIT_S)
        raise _drop(request)
    if fault.drop_connection:
        raise _drop(request)
    if fault.status is not None:
        return json_response(
            fault.response_body(), status=fault.status, headers=fault.response_headers()
        )
    try:
        response = await handler(request)
    except ApiError as exc:  # an error answer is lost or spoilt like any other
        response = exc.to_response()
    if fault.drop_after:
        raise _drop(request)
    if fault.mangle is not None:
        return await _mangled(fault, request, response)
    return response


async def _mangled(
    fault: Fault, request: web.Request, response: web.StreamResponse
) -> web.StreamResponse:
    """The handler's ``response`` spoilt as ``fault.mangle`` says."""
    real = response.body if isinstance(response, web.Response) else None
    if not isinstance(real, (bytes, bytearray)):
        # A streamed answer (a file download) has no body to spoil: drop it instead.
        raise _drop(request)
    content_type = response.content_type
    if fault.mangle == "garbage":
        full = fault.garbage if fault.garbage is not None else (
            _GARBAGE_ZSTD if fault.zstd else
            _GARBAGE_PROTOBUF if content_type == _PROTOBUF else _GARBAGE_JSON)
        sent = full
    else:
        full = bytes(real)
        if fault.zstd:
            full = _proto.compress(full)
        keep = len(full) // 2 if fault.keep_bytes is None else min(fault.keep_bytes, len(full))
        sent = full[:keep]
    headers = {k: v for k, v in response.headers.items()
               if k.lower() not in ("content-length", "content-type", "content-encoding")}
    if fault.zstd:
        headers["Content-Encoding"] = "zstd"
    if fault.mangle != "cut":
        return web.Response(status=response.status, headers=headers, body=sent,
                            content_type=content_type)
    # The real length is announced, part of the body sent, then the connection closed
    # (``close`` sends what is buffered first).
    stream = web.StreamResponse(status=response.status, headers=headers)
    stream.content_type = content_type
    stream.content_length = len(full)
    await stream.prepare(request)
    if sent:
        await stream.write(sent)
    raise _drop(request)
