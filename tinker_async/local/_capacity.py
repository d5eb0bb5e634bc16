"""Sampling capacity of the embedded server: samples in flight per model and per key.

Off by default (``ServerConfig.sample_capacity``, a :class:`~._config.SampleCapacity`).
When on, each accepted sample holds a slot of its base model and of its credential from
acceptance until its work ends (result, failure, cancel or expiry). A sample that would
exceed either capacity is answered the way real servers answer:

- a submit with ``X-Tinker-Sampling-Backpressure: 1`` (the official SDK and tinker_async
  send it on every ``asample``) gets **429** with ``Retry-After`` (whole seconds, rounded
  up) and ``retry-after-ms`` (exact), the header ``X-Tinker-Sampling-Backpressure: 1``
  back, and the body ``{"detail", "queue_state": "paused_rate_limit",
  "queue_state_reason"}``. Nothing is queued or remembered for it.
- a submit without the header is accepted and waits in the server's FIFO queue for a
  slot; until it has one, polls of it answer ``try_again`` with the queue state
  ``paused_rate_limit`` (:func:`queue_state_of`).

While samples wait in the server's queue, a backpressure submit is refused even if a slot
is free, so that it cannot overtake them. :class:`SampleSlots` also counts what happened
(``counts()``), so tests and benchmarks can hold a client's ``stats()`` against the
server's own numbers.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ._auth import credential_from_headers
from ._config import SampleCapacity
from ._errors import json_response
from ._routing import ServerContext

__all__ = ["BACKPRESSURE_HEADER", "SampleSlots", "queue_state_of", "sample_slots"]

BACKPRESSURE_HEADER = "X-Tinker-Sampling-Backpressure"
_EXTRAS_KEY = "sample_slots"
_PAUSED = "paused_rate_limit"
#: ``Retry-After`` without a service time to estimate from (the official SDK's backoff)
_DEFAULT_RETRY_AFTER_S = 1.0
_MIN_RETRY_AFTER_S = 0.001

Bucket = tuple[str, str]
"""(base model, key id): the two counters a sample occupies."""


def key_id(headers: Mapping[str, str]) -> str:
    """Who a request's samples count against: a digest of its credential (never the
    credential itself), or ``anonymous``."""
    credential = credential_from_headers(headers, bearer=False)
    if credential is None:
        return "anonymous"
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


class SampleSlots:
    """Samples in flight per model and per key, the server's queue, and counts (loop-only)."""

    def __init__(self) -> None:
        self.by_model: collections.Counter[str] = collections.Counter()
        self.by_key: collections.Counter[str] = collections.Counter()
        self.peak_by_model: collections.Counter[str] = collections.Counter()
        self.peak_by_key: collections.Counter[str] = collections.Counter()
        self._waiting: collections.deque[tuple[Bucket, asyncio.Future[None]]] = (
            collections.deque())
        #: request ids of accepted samples still waiting for a slot
        self.waiting_ids: set[str] = set()
        self.admitted = 0
        self.refused = 0
        self.finished = 0
        self.queued_peak = 0

    def counts(self) -> dict[str, Any]:
        """What happened so far: ``admitted`` (accepted samples), ``refused`` (429s),
        ``finished``, ``in_flight``, ``queued``, ``queued_peak``, and the peaks of
        samples in flight per model and per key (keys by digest)."""
        return {
            "admitted": self.admitted, "refused": self.refused, "finished": self.finished,
            "in_flight": sum(self.by_model.values()), "queued": len(self.waiting_ids),
            "queued_peak": self.queued_peak,
            "peak_by_model": dict(self.peak_by_model), "peak_by_key": dict(self.peak_by_key),
        }

    def _fits(self, capacity: SampleCapacity, bucket: Bucket) -> bool:
        model, key = bucket
        return ((capacity.per_model is None or self.by_model[model] < capacity.per_model)
                and (capacity.per_key is None or self.by_key[key] < capacity.per_key))

    def _take(self, bucket: Bucket) -> None:
        model, key = bucket
        self.by_model[model] += 1
        self.by_key[key] += 1
        if self.by_model[model] > self.peak_by_model[model]:
            self.peak_by_model[model] = self.by_model[model]
        if self.by_key[key] > self.peak_by_key[key]:
            self.peak_by_key[key] = self.by_key[key]

    def try_take(self, capacity: SampleCapacity, bucket: Bucket) -> bool:
        """Take a slot now if one is free and nobody waits for one."""
        if self._waiting or not self._fits(capacity, bucket):
            return False
        self._take(bucket)
        return True

    async def take(self, capacity: Callable[[], SampleCapacity], bucket: Bucket,
                   request_id: str) -> None:
        """Wait in the server's FIFO queue for a slot."""
        if not self._waiting and self._fits(capacity(), bucket):
            self._take(bucket)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((bucket, fut))
        self.waiting_ids.add(request_id)
        self.queued_peak = max(self.queued_peak, len(self.waiting_ids))
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(bucket, capacity())  # granted as it was cancelled
            raise
        finally:
            self.waiting_ids.discard(request_id)

    def release(self, bucket: Bucket, capacity: SampleCapacity) -> None:
        """A sample ended: free its slot and let the waiters that now fit go, in order."""
        model, key = bucket
        self.by_model[model] -= 1
        self.by_key[key] -= 1
        while self._waiting:
            waiting, fut = self._waiting[0]
            if fut.done():  # cancelled while waiting
                self._waiting.popleft()
                continue
            if not self._fits(capacity, waiting):
                break  # first come, first served: nobody overtakes the head
            self._waiting.popleft()
            self._take(waiting)
            fut.set_result(None)

    def retry_after(self, capacity: SampleCapacity) -> float:
        """When a slot should be free, as the 429's ``Retry-After``."""
        if capacity.retry_after_s is not None:
            return capacity.retry_after_s
        if capacity.service_time_s <= 0:
            return _DEFAULT_RETRY_AFTER_S
        binding = min(c for c in (capacity.per_model, capacity.per_key) if c is not None) \
            if capacity.per_model is not None or capacity.per_key is not None else 1
        return max(_MIN_RETRY_AFTER_S, capacity.service_time_s / binding)

    def refusal(self, capacity: SampleCapacity, bucket: Bucket) -> web.Response:
        """The 429 for a backpressure submit above capacity."""
        self.refused += 1
        model, key = bucket
        if capacity.per_model is not None and self.by_model[model] >= capacity.per_model:
            reason = (f"concurrent sampling limit hit: {self.by_model[model]} samples of "
                      f"{model} in flight (capacity {capacity.per_model})")
        elif capacity.per_key is not None and self.by_key[key] >= capacity.per_key:
            reason = (f"concurrent sampling limit hit: {self.by_key[key]} samples of this "
                      f"API key in flight (capacity {capacity.per_key})")
        else:
            reason = "concurrent sampling limit hit: samples are queued ahead"
        seconds = self.retry_after(capacity)
        headers = {
            "Retry-After": str(max(0, math.ceil(seconds))),
            "retry-after-ms": f"{seconds * 1000:.3f}",
            BACKPRESSURE_HEADER: "1",
        }
        body = {"detail": f"Sampling is paused: {reason}. Retry later.",
                "queue_state": _PAUSED, "queue_state_reason": reason}
        return json_response(body, status=429, headers=headers)

    def wrap(self, work: Callable[[], Any], ctx: ServerContext, bucket: Bucket,
             request_id: str, holding: bool) -> Callable[[], Any]:
        """``work`` that holds a slot while it runs (taking one first unless ``holding``)
        and lasts at least the configured service time."""
        self.admitted += 1

        def capacity() -> SampleCapacity:
            return ctx.config.sample_capacity

        async def run() -> Any:
            took = holding
            try:
                if not holding:
                    await self.take(capacity, bucket, request_id)
                    took = True
                service_time = capacity().service_time_s
                if service_time > 0:
                    await asyncio.sleep(service_time)
                value = work()
                if inspect.isawaitable(value):
                    value = await value
                return value
            finally:
                self.finished += 1
                if took:
                    self.release(bucket, capacity())

        return run


def sample_slots(ctx: ServerContext) -> SampleSlots:
    """The server's slots (made on first use)."""
    found = ctx.extras.get(_EXTRAS_KEY)
    if isinstance(found, SampleSlots):
        return found
    created = SampleSlots()
    ctx.extras[_EXTRAS_KEY] = created
    return created


def queue_state_of(ctx: ServerContext, request_id: str) -> dict[str, str]:
    """The queue-state fields of a ``try_again`` answer for ``request_id``."""
    found = ctx.extras.get(_EXTRAS_KEY)
    if isinstance(found, SampleSlots) and request_id in found.waiting_ids:
        return {"queue_state": _PAUSED,
                "queue_state_reason": "concurrent sampling limit hit: waiting for a slot"}
    return {"queue_state": "active"}
