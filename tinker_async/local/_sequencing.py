"""Per-model ordering of training requests by ``seq_id`` (official semantics, SDK §2.4).

Every request that changes or reads a training model (``forward_backward`` chunks,
``optim_step``, the ``save_*`` calls, ``load_weights``) carries a ``seq_id``: 1, 2, 3, ...
per model (a create-via-load is sequence 0). The server must *apply* them in that order,
one at a time, even when they *arrive* out of order: the official SDK submits the chunks
of one ``forward_backward`` concurrently and sends chunk 1 last on purpose.

A :class:`Sequencer` enforces that for one model:

- :meth:`Sequencer.admit` decides what a submit means: a retry of a request already
  admitted (same ``seq_id``, or same ``X-Idempotency-Key``) gets the request id it got the
  first time, so the work is never applied twice; a ``seq_id`` below the ones already
  applied that is not a known retry is a ``409 Sequence conflict``; anything else is new.
- :meth:`Sequencer.run` waits for the request's turn (bounded: a predecessor that never
  arrives fails it after ``hold_timeout_s``), runs the work (inline, or in a worker thread
  so the event loop keeps answering polls and heartbeats), then lets the next one go.

Everything here runs on the server's event loop, except the work handed to a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

from ._errors import conflict
from ._futures import FutureFailure

__all__ = ["HOLD_TIMEOUT_S", "Sequencer", "remember"]

HOLD_TIMEOUT_S = 60.0
"""How long a request waits for a missing predecessor before it fails."""
_MEMORY = 4096
"""How many recent seq ids (and idempotency keys) a model remembers for retries."""

_K = TypeVar("_K")
_V = TypeVar("_V")
_T = TypeVar("_T")


def remember(table: dict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """Insert into a dict used as a bounded FIFO cache (dicts keep insertion order)."""
    table[key] = value
    while len(table) > limit:
        del table[next(iter(table))]


class Sequencer:
    """Applies one model's requests in ``seq_id`` order, one at a time (loop-only)."""

    def __init__(self, next_seq: int = 1, *, hold_timeout_s: float = HOLD_TIMEOUT_S) -> None:
        self.next_seq = next_seq
        """The next ``seq_id`` to apply; everything below it has been applied (or failed)."""
        self.hold_timeout_s = hold_timeout_s
        self._finished: set[int] = set()  # finished out of order, above next_seq
        self._highest = next_seq - 1  # highest seq id admitted so far
        self._by_seq: dict[int, str] = {}  # seq id -> request id, for retries
        self._by_key: dict[str, str] = {}  # X-Idempotency-Key -> request id
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------------- admission

    def admit(self, seq_id: int | None, idempotency_key: str | None) -> tuple[int, str | None]:
        """``(seq, request id of an earlier identical submit or None)``.

        ``seq_id=None`` (clients that send none) means "after everything admitted so far".
        Raises a 409 for a stale ``seq_id`` that is not a retry.
        """
        if idempotency_key is not None:
            earlier = self._by_key.get(idempotency_key)
            if earlier is not None:
                return seq_id if seq_id is not None else self._highest, earlier
        seq = seq_id if seq_id is not None else max(self.next_seq, self._highest + 1)
        earlier = self._by_seq.get(seq)
        if earlier is not None:
            return seq, earlier
        if seq < self.next_seq:
            raise conflict(f"Sequence conflict: expected {self._expected()}, got {seq}")
        return seq, None

    def record(self, seq: int, idempotency_key: str | None, request_id: str) -> None:
        """Remember an admitted request so that its retries find it."""
        remember(self._by_seq, seq, request_id, _MEMORY)
        if idempotency_key is not None:
            remember(self._by_key, idempotency_key, request_id, _MEMORY)
        self._highest = max(self._highest, seq)

    def _expected(self) -> int:
        """The lowest seq id not yet admitted (what a well-behaved client sends next)."""
        seq = self.next_seq
        while seq in self._by_seq:
            seq += 1
        return seq

    # ---------------------------------------------------------------------------- turns

    def finish(self, seq: int) -> None:
        """Mark ``seq`` done (applied, failed or abandoned) and wake the waiters."""
        if seq < self.next_seq:
            return
        self._finished.add(seq)
        while self.next_seq in self._finished:
            self._finished.discard(self.next_seq)
            self.next_seq += 1
        # Wake every current waiter, then give later waiters a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_turn(self, seq: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold_timeout_s
        while self.next_seq < seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                missing = self.next_seq
                self.finish(seq)  # so that the requests after this one are not stuck too
                raise FutureFailure(
                    f"Timed out after {self.hold_timeout_s:g} s waiting for seq_id {missing} "
                    f"before seq_id {seq}: a model applies its requests in seq_id order",
                    "user",
                )
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                continue

    async def run(
        self,
        seq: int,
        work: Callable[[], _T],
        *,
        executor: concurrent.futures.Executor | None = None,
    ) -> _T:
        """Run ``work`` in turn ``seq``: inline, or in ``executor`` when one is given.

        If the waiting request is cancelled (``cancel_future``, an expired session), its
        turn is released; if it is cancelled while its work runs in a thread, the turn is
        released only when the thread is done, so two operations never touch the model's
        weights at once.
        """
        try:
            await self._wait_turn(seq)
        except asyncio.CancelledError:
            self.finish(seq)
            raise
        if executor is None:
            try:
                return work()
            finally:
                self.finish(seq)
        loop = asyncio.get_running_loop()
        job = executor.submit(work)
        try:
            return await asyncio.wrap_future(job)
        finally:
            if job.done():
                self.finish(seq)
            else:
                job.add_done_callback(lambda _: _call_soon(loop, self.finish, seq))


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[int], None], arg: int) -> None:
    """``loop.call_soon_threadsafe``, quiet if the loop closed meanwhile (shutdown)."""
    try:
        loop.call_soon_threadsafe(fn, arg)
    except RuntimeError:
        pass
