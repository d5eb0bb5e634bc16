"""What one sampling target's clients share in a process: its limiter, counters and state.

A sampling target is one sampling session of one ServiceClient. Every SamplingClient of
it in this process (copies unpickled here included) shares one :class:`SamplingTarget`:
one admission queue (:mod:`._admission`), the counters behind ``stats()``, and the queue
state the server last reported, with its hooks.

Queue state: a 429 on a submit (the embedded server's body says which state) or a
``paused_*`` try-again answer makes the target *paused*; it is *active* again once
:data:`RESUME_AFTER_S` pass with no such sign. Each change is logged once, at INFO, with
the admission numbers, and reaches every client's ``on_queue_state_change`` (the official
hook) and its optional callback (``set_queue_state_callback``). The short hold keeps a limit that probes the server's
capacity (one 429 every few round trips) from flapping the state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _otel
from ._admission import AdaptiveLimiter, FixedLimiter, Limiter
from ._futures import QueueState

if TYPE_CHECKING:
    from .sampling import SamplingClient

__all__ = ["RESUME_AFTER_S", "QueueStateCallback", "SamplingStats", "SamplingTarget"]

log = logging.getLogger("tinker_async")

#: a paused target is active again after this long without a 429 or paused answer
RESUME_AFTER_S = 5.0
#: latencies kept for the percentiles (the most recent ones)
_LATENCY_WINDOW = 4096

QueueStateCallback = Callable[[QueueState, "str | None"], None]
_KINDS: dict[type, str] = {AdaptiveLimiter: "adaptive", FixedLimiter: "fixed"}


@dataclasses.dataclass(frozen=True)
class SamplingStats:
    """A snapshot of sampling through one client (or, from ``ServiceClient.stats()``, all).

    Counts are since the target's first call in this process. Latencies are in seconds
    from admission (the submit) to the result, over the last 4,096 samples; the time a
    call waited in the client's admission queue before that is ``queue_wait_mean``.
    """

    #: the sampling session, or None for an aggregate over several
    sampling_session_id: str | None
    #: admitted calls not finished yet
    in_flight: int
    #: calls waiting in the client's admission queue
    queued: int
    #: the current concurrency limit (the sum, in an aggregate)
    limit: int
    #: "adaptive", "fixed" (``max_concurrency``) or the class name of a plugged limiter
    limiter: str
    #: submit requests sent (served or refused)
    requests: int
    #: samples that returned a result
    completed: int
    #: calls that failed (timeouts included)
    failed: int
    #: 429 answers from the server
    rate_limited: int
    #: resubmits (after a 429 or an expired promise) and retried HTTP attempts
    retries: int
    #: calls that ran out of time (in the queue or on the server)
    timeouts: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    #: mean seconds a call waited for admission
    queue_wait_mean: float | None
    queue_state: QueueState
    queue_state_reason: str | None

    def __repr__(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1e3:.0f}"

        wait = "-" if self.queue_wait_mean is None else f"{self.queue_wait_mean:.3g} s"
        share = f" ({self.rate_limited / self.requests:.1%})" if self.requests else ""
        state = self.queue_state.value + (
            f": {self.queue_state_reason}" if self.queue_state_reason else "")
        who = self.sampling_session_id or "all samplers"
        return (f"SamplingStats({who}: in_flight={self.in_flight}, queued={self.queued}, "
                f"limit={self.limit} {self.limiter}, requests={self.requests}, "
                f"completed={self.completed}, failed={self.failed}, "
                f"rate_limited={self.rate_limited}{share}, retries={self.retries}, "
                f"timeouts={self.timeouts}, latency p50/p95/p99={ms(self.latency_p50)}/"
                f"{ms(self.latency_p95)}/{ms(self.latency_p99)} ms, queue_wait_mean={wait}, "
                f"queue_state={state})")

    @staticmethod
    def combine(parts: list[SamplingStats], latencies: list[float]) -> SamplingStats:
        """The aggregate of several targets' stats (``latencies``: their raw samples)."""
        waits = [(s.queue_wait_mean, s.completed + s.failed) for s in parts
                 if s.queue_wait_mean is not None]
        weight = sum(n for _, n in waits)
        states = {s.queue_state for s in parts} - {QueueState.ACTIVE}
        state = states.pop() if len(states) == 1 else (
            QueueState.ACTIVE if not states else QueueState.UNKNOWN)
        p50, p95, p99 = _percentiles(latencies)
        return SamplingStats(
            sampling_session_id=None,
            in_flight=sum(s.in_flight for s in parts),
            queued=sum(s.queued for s in parts),
            limit=sum(s.limit for s in parts),
            limiter=",".join(sorted({s.limiter for s in parts})) or "adaptive",
            requests=sum(s.requests for s in parts),
            completed=sum(s.completed for s in parts),
            failed=sum(s.failed for s in parts),
            rate_limited=sum(s.rate_limited for s in parts),
            retries=sum(s.retries for s in parts),
            timeouts=sum(s.timeouts for s in parts),
            latency_p50=p50, latency_p95=p95, latency_p99=p99,
            queue_wait_mean=(sum(w * n for w, n in waits) / weight) if weight else None,
            queue_state=state,
            queue_state_reason=None,
        )


def _percentiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    ordered = sorted(values)
    last = len(ordered) - 1
    return tuple(ordered[min(last, round(q * last))] for q in (0.5, 0.95, 0.99))  # type: ignore[return-value]


class SamplingTarget:
    """The shared admission state of one sampling session in this process."""

    def __init__(self, sampling_session_id: str, limiter: Limiter | None = None) -> None:
        self.sampling_session_id = sampling_session_id
        self.limiter: Limiter = limiter or AdaptiveLimiter()
        self.requests = 0
        self.completed = 0
        self.failed = 0
        self.rate_limited = 0
        self.retries = 0
        self.timeouts = 0
        self._latencies: list[float] = []
        self._next_latency = 0
        self._waited = 0.0
        self._admissions = 0
        self.state = QueueState.ACTIVE
        self.reason: str | None = None
        #: what the server said last when it refused or paused, and when (monotonic)
        self.last_refusal: str | None = None
        self.last_refusal_at: float | None = None
        self._paused_at = 0.0
        self._resume_timer: asyncio.TimerHandle | None = None
        #: the SamplingClients of this target (their hooks and callbacks hear changes)
        self.clients: weakref.WeakSet[SamplingClient] = weakref.WeakSet()
        self._attributes = {"tinker.sampling_session_id": sampling_session_id}
        _otel.register(self)  # its counters become metrics once OpenTelemetry is in use

    def __repr__(self) -> str:
        return f"<SamplingTarget {self.sampling_session_id} {self.limiter!r}>"

    # -- counters -------------------------------------------------------------------------

    def admitted_after(self, waited: float) -> None:
        """A call was admitted after waiting ``waited`` seconds in the queue."""
        self._admissions += 1
        self._waited += waited

    def record_latency(self, seconds: float) -> None:
        """A sample completed ``seconds`` after its admission."""
        self.completed += 1
        if len(self._latencies) < _LATENCY_WINDOW:
            self._latencies.append(seconds)
        else:
            self._latencies[self._next_latency] = seconds
            self._next_latency = (self._next_latency + 1) % _LATENCY_WINDOW

    def latencies(self) -> list[float]:
        """The latencies behind the percentiles (a copy)."""
        return list(self._latencies)

    def stats(self) -> SamplingStats:
        """A snapshot (see :class:`SamplingStats`)."""
        limiter = self.limiter
        kind = _KINDS.get(type(limiter)) or type(limiter).__name__
        p50, p95, p99 = _percentiles(self._latencies)
        return SamplingStats(
            sampling_session_id=self.sampling_session_id,
            in_flight=limiter.in_flight, queued=limiter.queued, limit=limiter.limit,
            limiter=kind, requests=self.requests, completed=self.completed,
            failed=self.failed, rate_limited=self.rate_limited, retries=self.retries,
            timeouts=self.timeouts, latency_p50=p50, latency_p95=p95, latency_p99=p99,
            queue_wait_mean=self._waited / self._admissions if self._admissions else None,
            queue_state=self.state, queue_state_reason=self.reason,
        )

    def otel_attributes(self) -> dict[str, str]:
        return self._attributes

    def otel_values(self) -> dict[str, int]:
        limiter = self.limiter
        return {"requests": self.requests, "completed": self.completed,
                "failed": self.failed, "rate_limited": self.rate_limited,
                "retries": self.retries, "timeouts": self.timeouts,
                "in_flight": limiter.in_flight, "queued": limiter.queued,
                "limit": limiter.limit}

    # -- queue state ----------------------------------------------------------------------

    def refused(self, what: str) -> None:
        """Remember what the server said when it refused or paused (for error messages)."""
        self.last_refusal = what
        self.last_refusal_at = time.monotonic()

    def paused(self, state: QueueState, reason: str | None, source: SamplingClient | None,
               ) -> None:
        """The server says this target is paused (a 429, or a paused try-again answer)."""
        self._paused_at = time.monotonic()
        if state is not self.state:
            self._change(state, reason, source)
        else:
            self.reason = reason  # the latest words, without a new change
        if self._resume_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._resume_timer = loop.call_later(RESUME_AFTER_S, self._check_resume)

    def active(self, source: SamplingClient | None) -> None:
        """A sign the server serves this target (an accepted submit, an active answer)."""
        if (self.state is not QueueState.ACTIVE
                and time.monotonic() - self._paused_at >= RESUME_AFTER_S):
            self._change(QueueState.ACTIVE, None, source)

    def _check_resume(self) -> None:
        self._resume_timer = None
        if self.state is QueueState.ACTIVE:
            return
        left = self._paused_at + RESUME_AFTER_S - time.monotonic()
        if left <= 0:
            self._change(QueueState.ACTIVE, None, None)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._resume_timer = loop.call_later(left, self._check_resume)

    def _change(self, state: QueueState, reason: str | None, source: SamplingClient | None,
                ) -> None:
        """Log one state change and tell every client's hook and the callbacks."""
        was = self.state
        self.state, self.reason = state, reason
        limiter = self.limiter
        numbers = (f"{limiter.in_flight} in flight, {limiter.queued} queued in the client, "
                   f"limit {limiter.limit}")
        if state is QueueState.ACTIVE:
            log.info("sampler %s: sampling active again (was %s); %s",
                     self.sampling_session_id, was.value, numbers)
        else:
            log.info("sampler %s: sampling %s (%s); calls wait in the client's queue: %s",
                     self.sampling_session_id, state.value, reason or "no reason given",
                     numbers)
        for client in list(self.clients):
            if client is not source:  # the source hears every answer itself
                _call_quietly(client.on_queue_state_change, state, reason)
            callback = client._queue_state_callback
            if callback is not None:
                _call_quietly(callback, state, reason)


def _call_quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # a hook's bug must not fail the sample that triggered it
        log.exception("queue-state hook %r failed", fn)
