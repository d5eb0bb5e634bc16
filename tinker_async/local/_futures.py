"""The server-side future store: queued work, its results, and the long-polls that wait.

A route that starts long work (``create_model``, ``forward_backward``, ``asample``, ...)
calls :meth:`FutureStore.submit` and answers ``{"request_id": ...}`` at once; clients then
poll ``retrieve_future`` (one id) or ``retrieve_futures`` (every completion of a sampling
session). Both polls are long-polls: a poller waits on an ``asyncio.Event`` that completion
sets, so it answers the moment the work is done and never busy-loops.

Results are encoded when the work completes (so encoder bugs fail the future, not the
poll) in their *primary* form: protobuf if the route gave a ``proto_encoder`` (or the work
returned ``bytes``) and the dialect allows protobuf, else JSON. The other form is encoded
lazily if a client asks for it.

Everything here runs on the server's event loop; other threads go through
``LocalServer``, which hops onto the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

__all__ = [
    "PROTOBUF",
    "FutureFailure",
    "FutureState",
    "FutureStore",
    "JsonEncoder",
    "ProtoEncoder",
    "ServerFuture",
    "Work",
]

logger = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_ENCODER = msgspec.json.Encoder()
# Completions nobody acknowledges (a client polling per request) must not pile up forever.
_MAX_QUEUED_COMPLETIONS = 100_000

FutureState = Literal["pending", "finished", "failed", "expired"]
"""``expired`` futures answer 410 (the SDK then resubmits a sample)."""

Work = Awaitable[Any] | Callable[[], Any]
"""An awaitable, or a callable returning a value or an awaitable."""
JsonEncoder = Callable[[Any], Any]
"""Turns a work result into something msgspec can encode as JSON."""
ProtoEncoder = Callable[[Any], bytes]
"""Turns a work result into protobuf bytes."""


class FutureFailure(Exception):
    """Raise from submitted work to fail its future with a message and a category.

    ``category`` is the SDK's ``RequestErrorCategory``: ``"user"``, ``"server"`` or
    ``"unknown"``. Any other exception fails the future with category ``"server"``.
    """

    def __init__(self, message: str, category: str = "user") -> None:
        super().__init__(message)
        self.message = message
        self.category = category


@dataclass(eq=False)
class ServerFuture:
    """One submitted request and, once done, its outcome."""

    request_id: str
    kind: str
    session_id: str | None
    queue_key: tuple[str, int] | None
    created_at: float
    json_encoder: JsonEncoder | None = None
    proto_encoder: ProtoEncoder | None = None
    state: FutureState = "pending"
    value: Any = None
    error: str | None = None
    category: str = "unknown"
    completed_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _json: bytes | None = None
    _proto: bytes | None = None

    @property
    def has_proto(self) -> bool:
        """Whether a protobuf form exists."""
        return self.proto_encoder is not None or isinstance(self.value, (bytes, bytearray))

    @property
    def has_json(self) -> bool:
        """Whether a JSON form exists (raw ``bytes`` results have none unless encoded)."""
        return self.json_encoder is not None or not isinstance(self.value, (bytes, bytearray))

    def json_bytes(self) -> bytes:
        """The JSON result (encoded on first use)."""
        if self._json is None:
            value = self.json_encoder(self.value) if self.json_encoder else self.value
            self._json = _ENCODER.encode(value)
        return self._json

    def proto_bytes(self) -> bytes:
        """The protobuf result (encoded on first use)."""
        if self._proto is None:
            if self.proto_encoder is not None:
                self._proto = self.proto_encoder(self.value)
            else:
                self._proto = bytes(self.value)
        return self._proto

    def payload(self, *, want_proto: bool, allow_proto: bool = True) -> tuple[bytes, str]:
        """``(body, content type)`` for a client that does or does not accept protobuf."""
        if self.has_proto and allow_proto and (want_proto or not self.has_json):
            return self.proto_bytes(), PROTOBUF
        return self.json_bytes(), _JSON

    def encode_primary(self, allow_proto: bool) -> int:
        """Encode the form most clients will fetch; return its size in bytes."""
        if self.has_proto and allow_proto:
            return len(self.proto_bytes())
        return len(self.json_bytes())


@dataclass(eq=False)
class _CompletionQueue:
    """Completions of one (sampling session, clone), in order, each with a cursor."""

    events: deque[tuple[int, dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=_MAX_QUEUED_COMPLETIONS)
    )
    last_cursor: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, completion: dict[str, Any]) -> None:
        self.last_cursor += 1
        self.events.append((self.last_cursor, completion))
        # Wake every current waiter, then give later waiters a fresh event.
        self.changed.set()
        self.changed = asyncio.Event()


class FutureStore:
    """Submitted work, its outcomes, and the long-polls waiting for them (loop-only)."""

    def __init__(
        self,
        *,
        poll_hold_s: float = 10.0,
        allow_proto: bool = True,
        max_completions_per_poll: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.poll_hold_s = poll_hold_s
        """How long a ``retrieve_future`` / ``retrieve_futures`` poll is held open."""
        self.allow_proto = allow_proto
        self._max_per_poll = max_completions_per_poll
        self._clock = clock
        self._futures: dict[str, ServerFuture] = {}
        self._queues: dict[tuple[str, int], _CompletionQueue] = {}
        self._closing = False

    # ------------------------------------------------------------------------------ submit

    def submit(
        self,
        work: Work,
        *,
        kind: str = "generic",
        session_id: str | None = None,
        sampling_session_id: str | None = None,
        cloned_sampler_id: int = 0,
        json_encoder: JsonEncoder | None = None,
        proto_encoder: ProtoEncoder | None = None,
        in_thread: bool = False,
        request_id: str | None = None,
    ) -> str:
        """Start ``work`` as a task and return its request id.

        - ``kind``: a label (``"ForwardBackward"``, ``"Sample"``, ...) for logs and tests.
        - ``session_id``: the future expires (410) if that session expires.
        - ``sampling_session_id`` / ``cloned_sampler_id``: the completion is also announced
          to ``retrieve_futures`` pollers of that sampling session and clone.
        - ``in_thread``: ``work`` is a blocking callable; run it in the default executor
          so numpy work does not stall the loop.
        - ``json_encoder`` / ``proto_encoder``: how to serve the result (see module doc).
        """
        if in_thread and not callable(work):
            raise TypeError("in_thread work must be a callable")
        rid = request_id or str(uuid.uuid4())
        if rid in self._futures:
            raise ValueError(f"duplicate request id {rid!r}")
        future = ServerFuture(
            request_id=rid,
            kind=kind,
            session_id=session_id,
            queue_key=(sampling_session_id, cloned_sampler_id) if sampling_session_id else None,
            created_at=self._clock(),
            json_encoder=json_encoder,
            proto_encoder=proto_encoder,
        )
        self._futures[rid] = future
        future.task = asyncio.get_running_loop().create_task(
            self._run(future, work, in_thread), name=f"tinker-local-future-{rid}"
        )
        return rid

    async def _run(self, future: ServerFuture, work: Work, in_thread: bool) -> None:
        try:
            if in_thread:
                assert callable(work)
                value = await asyncio.to_thread(work)
            elif callable(work):
                value = work()
                if inspect.isawaitable(value):
                    value = await value
            else:
                value = await work
        except asyncio.CancelledError:
            # cancel() already recorded the outcome; on shutdown there is nobody to tell.
            raise
        except FutureFailure as exc:
            self._complete(future, "failed", error=exc.message, category=exc.category)
        except Exception as exc:
            logger.exception("request %s (%s) failed", future.request_id, future.kind)
            self._complete(
                future, "failed", error=f"{type(exc).__name__}: {exc}", category="server"
            )
        else:
            self._complete(future, "finished", value=value)

    def _complete(
        self,
        future: ServerFuture,
        state: FutureState,
        *,
        value: Any = None,
        error: str | None = None,
        category: str = "unknown",
    ) -> None:
        if future.state != "pending":
            return  # the first outcome wins (e.g. a test failed it before it finished)
        size: int | None = None
        if state == "finished":
            future.value = value
            try:
                size = future.encode_primary(self.allow_proto)
            except Exception as exc:
                logger.exception("encoding the result of %s failed", future.request_id)
                state, error, category = "failed", f"result encoding failed: {exc}", "server"
                future.value = None
        future.state = state
        future.error = error
        future.category = category
        future.completed_at = self._clock()
        future.done.set()
        if future.queue_key is not None:
            completion: dict[str, Any] = {
                "state": "finished" if state == "finished" else "failed",
                "request_id": future.request_id,
            }
            if size is not None:
                completion["response_payload_uncompressed_size"] = size
            self._queue(future.queue_key).push(completion)

    # ------------------------------------------------------------------------------ lookup

    def get(self, request_id: str) -> ServerFuture | None:
        """A future by id, or ``None`` if unknown (or cleaned up)."""
        return self._futures.get(request_id)

    def __len__(self) -> int:
        return len(self._futures)

    async def wait(self, future: ServerFuture, timeout: float) -> None:
        """Return when ``future`` completes, ``timeout`` passes, or the store closes."""
        if future.state != "pending" or timeout <= 0 or self._closing:
            return
        try:
            await asyncio.wait_for(future.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------------- outcomes

    def resolve(self, request_id: str, value: Any) -> None:
        """Finish a pending future now with ``value`` (``KeyError`` if unknown)."""
        future = self._futures[request_id]
        if future.state == "pending" and future.task is not None:
            future.task.cancel()
        self._complete(future, "finished", value=value)

    def fail(self, request_id: str, error: str, category: str = "user") -> None:
        """Fail a pending future now (``KeyError`` if unknown; no-op if already done)."""
        future = self._futures[request_id]
        if future.state == "pending" and future.task is not None:
            future.task.cancel()
        self._complete(future, "failed", error=error, category=category)

    def expire(self, request_id: str) -> None:
        """Make a pending future answer 410 ("promise expired"); ``KeyError`` if unknown."""
        future = self._futures[request_id]
        if future.state == "pending" and future.task is not None:
            future.task.cancel()
        self._complete(future, "expired", error="Promise expired", category="server")

    def cancel(self, request_id: str) -> bool:
        """``cancel_future``: stop pending work. False if the id is unknown."""
        future = self._futures.get(request_id)
        if future is None:
            return False
        if future.state == "pending":
            if future.task is not None:
                future.task.cancel()
            self._complete(future, "failed", error="Request was cancelled", category="user")
        return True

    def expire_session(self, session_id: str) -> int:
        """Expire every pending future of a session; return how many."""
        pending = [
            f.request_id
            for f in self._futures.values()
            if f.session_id == session_id and f.state == "pending"
        ]
        for rid in pending:
            self.expire(rid)
        return len(pending)

    def forget(self, request_ids: Iterable[str]) -> None:
        """Drop the payloads of finished futures (pending ones are kept)."""
        for rid in request_ids:
            future = self._futures.get(rid)
            if future is not None and future.state != "pending":
                del self._futures[rid]

    def cleanup(self, max_age_s: float) -> int:
        """``cleanup_futures``: drop finished futures older than ``max_age_s``; count them."""
        cutoff = self._clock() - max_age_s
        old = [
            rid
            for rid, f in self._futures.items()
            if f.completed_at is not None and f.completed_at <= cutoff
        ]
        for rid in old:
            del self._futures[rid]
        return len(old)

    # ------------------------------------------------------------------- session long-poll

    def _queue(self, key: tuple[str, int]) -> _CompletionQueue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _CompletionQueue()
        return queue

    def has_queue(self, sampling_session_id: str) -> bool:
        """Whether any future was ever announced to this sampling session."""
        return any(key[0] == sampling_session_id for key in self._queues)

    async def poll_completions(
        self,
        sampling_session_id: str,
        cloned_sampler_id: int,
        *,
        prev_cursor: int,
        timeout: float | None,
        retrieved_request_ids: Iterable[str] = (),
    ) -> tuple[list[dict[str, Any]], int]:
        """``retrieve_futures``: completions after ``prev_cursor``, and the new cursor.

        Acknowledges first: events at or before ``prev_cursor`` are trimmed and the payloads
        of ``retrieved_request_ids`` dropped. Then, if nothing new is there, waits up to
        ``min(timeout, poll_hold_s)`` (``timeout=None`` means the hold; ``0`` returns at once).
        """
        queue = self._queue((sampling_session_id, cloned_sampler_id))
        # A cursor from the future (say, from before a restart) must not ack unseen events.
        prev_cursor = min(max(prev_cursor, 0), queue.last_cursor)
        while queue.events and queue.events[0][0] <= prev_cursor:
            queue.events.popleft()
        self.forget(retrieved_request_ids)

        hold = self.poll_hold_s if timeout is None else min(max(timeout, 0.0), self.poll_hold_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        while not queue.events and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(queue.changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        fresh = [event for event in queue.events][: self._max_per_poll]
        cursor = fresh[-1][0] if fresh else prev_cursor
        return [completion for _, completion in fresh], cursor

    # ----------------------------------------------------------------------------- close

    async def close(self) -> None:
        """Cancel pending work and release every waiting poller."""
        self._closing = True
        tasks = [f.task for f in self._futures.values() if f.task is not None and not f.task.done()]
        for task in tasks:
            task.cancel()
        for future in self._futures.values():
            future.done.set()  # waiters see a still-pending future and answer try_again
        for queue in self._queues.values():
            queue.changed.set()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
