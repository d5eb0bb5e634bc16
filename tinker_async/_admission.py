"""Admission control for sampling: how many samples of one target may be on the server.

A sampling pipeline fans out far beyond what a server serves at once. Without admission
control every call goes to the server, which answers the excess with 429s (or queues it
out of sight); with it, calls beyond the current **limit** wait here, in a FIFO queue in
the client, and go out as earlier ones finish. Rate limiting alone never fails a call: a
call ends early only when the caller's own deadline (``call_timeout``, a cancel) runs out.

Pieces:

- :class:`Limiter` (a Protocol): the admission decision and its queue. The SamplingClient
  calls ``acquire`` before it submits a sample, ``signal`` when the server accepts the
  submit or says it is paused, and ``release`` with the outcome once the sample's result
  (or failure) is in. Any object with these methods can be plugged in
  (``SamplingClient.set_limiter``): for example one that holds a share of a limit kept by
  a Ray actor, so that many processes together stay under one server's capacity. Its
  methods are called on the caller's event loop (possibly on two loops, from two threads,
  for one client: a blocked plain call runs on the background loop), and ``release`` and
  ``signal`` must not block.
- :class:`AdaptiveLimiter` (the default) and :class:`FixedLimiter` (``max_concurrency=``,
  for users who know their quota), both FIFO queues (:class:`QueueLimiter`).

The adaptive algorithm is AIMD with slow start, in the style of TCP and of Netflix's
concurrency-limits, fed by what the server says:

- **Slow start.** The limit starts at ``initial_limit`` (32) and grows by one for each
  submit the server accepts (``Signal.ADMITTED``), so it doubles every submit round trip
  until the first sign of congestion. Growing on acceptance rather than on completion
  matters for long generations: a server that takes everything is filled in a few round
  trips, not in a few generation times. The overshoot when the server first says no is
  about one round trip's worth of submits (about ``initial_limit``).
- **Multiplicative decrease** on a 429 (the server's answer to the
  ``X-Tinker-Sampling-Backpressure: 1`` submits), or a ``paused_*`` queue state: the
  limit becomes ``min(backoff * limit, admitted)``, where ``admitted`` counts this
  target's samples the server has accepted and not finished (at the moment of a 429 that
  is the server's capacity for us, plus the results on their way back). At most one
  decrease per window: a signal from a call admitted before the last decrease is already
  accounted for. If the server holds none of our samples (it is paused for everyone) the
  limit drops to ``min_limit`` to probe, and slow start takes it back up to the level it
  had (``ssthresh``) once the server accepts again.
- **Additive increase** in congestion avoidance: about ``max(1, limit / 64)`` per round
  trip while the limit is in use (below 32, ``limit / 32``: small limits probe gently, so
  that 429s stay a few percent of requests even at a capacity of 4). The limit never
  grows while less than half of it is used.
- **Latency brake** (the gradient of Netflix's Gradient2): a short (about 10 samples) and
  a long (about 500) moving average of the time from admission to result. When the short
  one exceeds ``latency_tolerance`` (2) times the long one, the server is queueing our
  work instead of refusing it: the limit is multiplied by ``tolerance * long / short``
  (at least 0.75), once per window. The tolerance is loose because sample latency also
  follows generation length.

``Retry-After`` delays only the call that got the 429 (it waits that long, holding no
slot, then takes the head of the queue): the decrease above already slows the target,
and holding everything back for a second would idle a server that frees slots in
milliseconds.

Hot path: under the limit, ``acquire`` takes a lock, counts and returns; ``release``
counts and updates a few floats. No future, task or timer is made unless a call waits.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import math
import os
import threading
import time
import weakref
from typing import Protocol, runtime_checkable

__all__ = [
    "AdaptiveLimiter",
    "AdmissionTimeout",
    "FixedLimiter",
    "Limiter",
    "Outcome",
    "Permit",
    "QueueLimiter",
    "Signal",
]


class Outcome(enum.Enum):
    """How an admitted call ended, as told to :meth:`Limiter.release`."""

    #: the server served it
    OK = "ok"
    #: the server refused it for load (429); the call will be retried with a new permit
    THROTTLED = "throttled"
    #: it failed for another reason (neither success nor a sign of load)
    FAILED = "failed"
    #: the caller gave up (cancel, deadline)
    CANCELLED = "cancelled"


class Signal(enum.Enum):
    """What the server said about an admitted call while it was in flight."""

    #: the server accepted the submit (the work is queued or running there)
    ADMITTED = "admitted"
    #: the server says sampling is paused (a ``paused_*`` queue state): a sign of load
    PAUSED = "paused"


class AdmissionTimeout(TimeoutError):
    """The caller's deadline ran out while the call waited in the admission queue."""


class Permit:
    """One admitted call. ``epoch`` is the limiter's decrease count when it was granted."""

    __slots__ = ("admitted", "epoch", "granted_at")

    def __init__(self, epoch: int, granted_at: float) -> None:
        self.epoch = epoch
        self.granted_at = granted_at
        #: the server accepted it (``Signal.ADMITTED``)
        self.admitted = False


@runtime_checkable
class Limiter(Protocol):
    """How many calls of one sampling target may be in flight, and the queue of the rest.

    ``acquire`` waits (first come, first served; ``first=True`` goes to the head of the
    queue, for a call retried after a 429) until the call may go, and returns a
    :class:`Permit`; it raises :class:`AdmissionTimeout` after ``timeout`` seconds (None:
    no limit), and on cancellation leaves the queue. Every permit is given back exactly
    once with ``release(permit, outcome)``. ``signal`` reports what the server said about
    an admitted call. ``limit``, ``in_flight`` and ``queued`` are read by ``stats()``.
    """

    @property
    def limit(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...

    async def acquire(self, timeout: float | None = None, *, first: bool = False) -> Permit: ...

    def signal(self, permit: Permit | None, signal: Signal) -> None: ...

    def release(self, permit: Permit, outcome: Outcome) -> None: ...


class _Waiter:
    __slots__ = ("fut", "gone", "granted", "loop")

    def __init__(self, fut: asyncio.Future[Permit], loop: asyncio.AbstractEventLoop) -> None:
        self.fut = fut
        self.loop = loop
        self.granted = False  # popped and counted in flight (its permit is on the way)
        self.gone = False  # left the queue (cancelled, timed out) before being granted


#: every queue limiter, so that a forked child can forget its parent's calls
_all: weakref.WeakSet[QueueLimiter] = weakref.WeakSet()


def _after_fork() -> None:
    for limiter in list(_all):
        limiter._forget_calls()


os.register_at_fork(after_in_child=_after_fork)


class QueueLimiter:
    """A FIFO admission queue under a limit; subclasses decide how the limit moves.

    Thread-safe: a client may be used from its home loop and from the background loop at
    once. Waiters are woken on their own loop.
    """

    def __init__(self, limit: float) -> None:
        self._lock = threading.Lock()
        self._limit = float(limit)
        self._in_flight = 0
        self._queued = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._epoch = 0
        _all.add(self)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} limit={self.limit} in_flight={self._in_flight} "
                f"queued={self._queued}>")

    @property
    def limit(self) -> int:
        """The current limit (whole calls)."""
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        """Admitted calls not released yet."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for admission."""
        return self._queued

    async def acquire(self, timeout: float | None = None, *, first: bool = False) -> Permit:
        """Wait for a slot (see :class:`Limiter`)."""
        with self._lock:
            if self._in_flight < self.limit and (first or not self._queued):
                self._in_flight += 1
                return Permit(self._epoch, time.monotonic())
            loop = asyncio.get_running_loop()
            waiter = _Waiter(loop.create_future(), loop)
            if first:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            self._queued += 1
        timer = None if timeout is None else loop.call_later(
            max(timeout, 0.0), _expire, waiter.fut)
        try:
            return await waiter.fut
        except BaseException:
            with self._lock:
                if waiter.granted:
                    # Granted as we gave up: hand the slot on.
                    self._in_flight -= 1
                    woken = self._grant()
                else:
                    waiter.gone = True
                    self._queued -= 1
                    woken = []
            _deliver_all(woken, self._epoch)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def signal(self, permit: Permit | None, signal: Signal) -> None:
        """Record what the server said about an admitted call (see :class:`Limiter`)."""
        if signal is Signal.ADMITTED and permit is not None:
            permit.admitted = True

    def release(self, permit: Permit, outcome: Outcome) -> None:
        """Give a permit back; the next waiters go if the limit allows."""
        with self._lock:
            self._in_flight -= 1
            self._adjust(permit, outcome, time.monotonic())
            woken = self._grant() if self._queued else []
        if woken:
            _deliver_all(woken, self._epoch)

    def _adjust(self, permit: Permit, outcome: Outcome, now: float) -> None:
        """Move the limit for ``outcome`` (lock held); a fixed limit does not move."""

    def _grant(self) -> list[_Waiter]:
        """Pop the waiters that may go now and count them in flight (lock held)."""
        woken: list[_Waiter] = []
        limit = self.limit
        while self._waiters and self._in_flight < limit:
            waiter = self._waiters.popleft()
            if waiter.gone:
                continue
            waiter.granted = True
            self._in_flight += 1
            self._queued -= 1
            woken.append(waiter)
        return woken

    def set_limit(self, value: float) -> None:
        """Set the limit now (a limit kept elsewhere, e.g. a share of a cluster-wide one);
        the waiters it lets go are woken on their loops."""
        with self._lock:
            woken = self._set_limit(float(value))
        _deliver_all(woken, self._epoch)

    def _set_limit(self, value: float) -> list[_Waiter]:
        """Change the limit (lock held); the waiters it lets go."""
        self._limit = value
        return self._grant() if self._queued else []

    def _forget_calls(self) -> None:
        """In a forked child: the parent's calls (and their waiters) are not ours."""
        self._lock = threading.Lock()
        self._in_flight = 0
        self._queued = 0
        self._waiters = collections.deque()


def _expire(fut: asyncio.Future[Permit]) -> None:
    if not fut.done():
        fut.set_exception(AdmissionTimeout())


def _deliver_all(woken: list[_Waiter], epoch: int) -> None:
    """Hand each granted waiter its permit, on its own loop."""
    if not woken:
        return
    now = time.monotonic()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for waiter in woken:
        permit = Permit(epoch, now)
        if waiter.loop is running:
            _deliver(waiter, permit)
        else:
            try:
                waiter.loop.call_soon_threadsafe(_deliver, waiter, permit)
            except RuntimeError:
                pass  # its loop is closed: its task is gone, and so is the call


def _deliver(waiter: _Waiter, permit: Permit) -> None:
    # A waiter that gave up in the meantime hands the slot on itself (see acquire).
    if not waiter.fut.done():
        waiter.fut.set_result(permit)


class FixedLimiter(QueueLimiter):
    """At most ``limit`` calls in flight, always (``max_concurrency=``)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {limit}")
        super().__init__(limit)


class AdaptiveLimiter(QueueLimiter):
    """The default: AIMD with slow start and a latency brake (see the module docstring).

    Parameters: ``initial_limit`` (32), ``min_limit`` (1), ``max_limit`` (4096),
    ``backoff`` (0.9, the multiplicative decrease), ``latency_tolerance`` (2.0).
    """

    def __init__(
        self,
        initial_limit: int = 32,
        *,
        min_limit: int = 1,
        max_limit: int = 4096,
        backoff: float = 0.9,
        latency_tolerance: float = 2.0,
    ) -> None:
        if not 1 <= min_limit <= initial_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        if not 0.0 < backoff < 1.0:
            raise ValueError("backoff must be between 0 and 1")
        if latency_tolerance <= 1.0:
            raise ValueError("latency_tolerance must be above 1")
        super().__init__(initial_limit)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff = backoff
        self.latency_tolerance = latency_tolerance
        #: below this the limit grows by one per accepted call (slow start)
        self._ssthresh = float(max_limit)
        #: admitted calls the server accepted and has not finished
        self._admitted = 0
        self._short = 0.0  # moving averages of admission-to-result latency (s)
        self._long = 0.0
        self._seen = 0
        #: when a permit-less signal (a paused queue state) last cut the limit
        self._paused_cut_at = -math.inf

    @property
    def slow_start(self) -> bool:
        """Whether the limit still doubles per round trip."""
        return self._limit < self._ssthresh

    def signal(self, permit: Permit | None, signal: Signal) -> None:
        if signal is Signal.ADMITTED:
            if permit is None or permit.admitted:
                return
            permit.admitted = True
            with self._lock:
                self._admitted += 1
                woken = []
                if self._limit < self._ssthresh and 2 * self._in_flight >= self._limit:
                    woken = self._set_limit(min(self._limit + 1.0, self._ssthresh,
                                                float(self.max_limit)))
            _deliver_all(woken, self._epoch)
        elif signal is Signal.PAUSED:
            with self._lock:
                now = time.monotonic()
                # No permit to tell which window it belongs to: at most one cut per
                # (short) round trip.
                if permit is not None and permit.epoch != self._epoch:
                    return
                if permit is None and now - self._paused_cut_at < max(self._short, 0.05):
                    return
                self._paused_cut_at = now
                self._congested()

    def _adjust(self, permit: Permit, outcome: Outcome, now: float) -> None:
        if permit.admitted:
            self._admitted -= 1
        if outcome is Outcome.OK:
            self._on_success(permit, now)
        elif outcome is Outcome.THROTTLED and permit.epoch == self._epoch:
            self._congested()

    def _congested(self) -> None:
        """One multiplicative decrease (lock held), and a new window."""
        self._epoch += 1
        before = self._limit
        if self._admitted == 0:
            # The server holds none of our work: it is paused (for everyone) rather than
            # full of ours. Probe with one call; regrow fast to where we were.
            self._ssthresh = max(float(self.min_limit), self.backoff * before)
            self._limit = float(self.min_limit)
        else:
            self._limit = max(float(self.min_limit),
                              min(self.backoff * before, float(self._admitted)))
            self._ssthresh = self._limit

    def _on_success(self, permit: Permit, now: float) -> None:
        latency = now - permit.granted_at
        self._seen += 1
        if self._seen == 1:
            self._short = self._long = latency
        else:
            self._short += (latency - self._short) * 0.1
            self._long += (latency - self._long) * 0.002
            if self._long > 2.0 * self._short:
                self._long *= 0.95  # recover after a spell of slow answers (as Gradient2)
        used = 2 * (self._in_flight + 1) >= self._limit
        if (self._seen >= 20 and self._short > self.latency_tolerance * self._long
                and permit.epoch == self._epoch and used):
            # The server queues our work instead of refusing it.
            gradient = max(0.75, self.latency_tolerance * self._long / self._short)
            self._epoch += 1
            self._limit = self._ssthresh = max(float(self.min_limit), self._limit * gradient)
            return
        if not used:
            return
        limit = self._limit
        if limit < self._ssthresh:
            if not permit.admitted:  # no ADMITTED signal for it (a blocking sample route)
                self._limit = min(limit + 1.0, self._ssthresh, float(self.max_limit))
            return
        step = limit / 32.0 if limit < 32.0 else max(1.0, limit / 64.0)
        self._limit = min(float(self.max_limit), limit + step / limit)

    def _forget_calls(self) -> None:
        super()._forget_calls()
        self._admitted = 0
