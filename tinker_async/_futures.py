"""One poller per client family for every pending server future.

Submitting a training step or a sample returns a request id; its result is fetched with
``retrieve_future``. :class:`FuturePoller` owns that for every client of a ServiceClient:

- **Batch long-poll** (the server's ``sample_use_retrieve_futures`` flag): one
  ``retrieve_futures`` request per sampling session waits for *all* of its pending
  samples; each completion is then fetched once. Thousands of samples in flight cost one
  open poll, not thousands. An outage (connection errors, 5xx, 429) only pauses it, as
  in the official SDK; an answer it cannot use (another 4xx, a malformed body) fails
  every waiter at once, and later ones, rather than leaving them waiting forever.
- **Per-request polling** otherwise: ``retrieve_future`` long-polls, at most
  ``max_concurrent_polls`` at a time across the family (a semaphore, not a loop per
  future). ``try_again`` and 408 poll again at once when the server held the request,
  and back off briefly when it answered at once (servers that do not hold, such as
  tinkercloud's ``{"status": "pending"}``).

Errors stay typed: a failed future is :class:`RequestFailedError`; a poll that the
server refuses raises the status error itself (the official SDK wraps these in
``ValueError``). A 410 means the promise expired: :class:`PromiseExpired` lets sampling
resubmit.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec

from . import _budget
from . import types as t
from ._budget import Limit
from ._config import PollTuning
from ._loops import in_guest_run
from ._transport import PROTOBUF, Response, Transport
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    RateLimitError,
    RequestFailedError,
    RequestNotFoundError,
    SessionExpiredError,
    TinkerError,
)

__all__ = ["FuturePoller", "PromiseExpired", "QueueState", "QueueStateObserver"]

log = logging.getLogger("tinker_async")
T = TypeVar("T")

_FAST_ANSWER_S = 0.05  # a "not yet" faster than this means the server does not hold polls
_MAX_IDLE_WAIT_S = 1.0
_UNCLAIMED_LIMIT = 10_000
#: answers that cannot be read in a row before a wait gives up (a poll is safe to repeat)
_UNREADABLE_POLLS = 3
# The tunable knobs (direct fetches, batch window, outage pause, poll retries) are
# ``ClientConfig.polling`` (``_config.PollTuning``).


class QueueState(enum.Enum):
    """What a server's ``try_again`` answer says of the queue a request waits in."""

    ACTIVE = "active"
    PAUSED_CAPACITY = "paused_capacity"
    PAUSED_RATE_LIMIT = "paused_rate_limit"
    UNKNOWN = "unknown"


QueueStateObserver = Callable[[QueueState, "str | None"], None]


def _report_queue_state(resp: Response, observer: QueueStateObserver) -> None:
    """Tell ``observer`` the queue state a not-ready answer carries (if it carries one)."""
    if resp.is_protobuf:
        return
    try:
        data = resp.json()
    except ValueError:
        return
    if not isinstance(data, dict) or "queue_state" not in data:
        return
    try:
        state = QueueState(data["queue_state"])
    except ValueError:
        state = QueueState.UNKNOWN
    reason = data.get("queue_state_reason")
    try:
        observer(state, reason if isinstance(reason, str) else None)
    except Exception:  # an observer's bug must not fail the request it watches
        log.exception("queue-state observer failed")


class _Patience:
    """When to say that a wait goes on: after a minute, then at each doubling of the wait
    (so a long wait logs a handful of lines, not one a minute)."""

    __slots__ = ("next_at",)

    def __init__(self, transport: Transport) -> None:
        self.next_at = transport.config.waiting_log_after

    def due(self, waited: float) -> bool:
        if waited < self.next_at:
            return False
        self.next_at = max(2 * self.next_at, waited)
        return True


_POLL_ANSWERS = frozenset({408, 410})
"""Statuses a ``retrieve_future`` poll reads as answers: 408 not ready, 410 expired."""


def _mark_iteration(headers: dict[str, str], iteration: int, submitted_at: float | None) -> None:
    """The SDK's per-poll headers: the iteration, and on the first poll how long the
    submit took to be accepted."""
    headers["X-Tinker-Request-Iteration"] = str(iteration)
    if iteration == 0 and submitted_at is not None:
        headers["X-Tinker-Create-Promise-Roundtrip-Time"] = f"{time.time() - submitted_at:.4f}"
    else:
        headers.pop("X-Tinker-Create-Promise-Roundtrip-Time", None)


def _progress_limit(transport: Transport, last_answer: float, *waiting_for: object) -> Limit:
    """No answer for ``progress_timeout`` after ``last_answer``; ``waiting_for`` (what the
    message names) is formatted only if it runs out."""
    seconds = transport.config.progress_timeout
    return Limit(last_answer + seconds, "progress_timeout", "no answer from the server for "
                 "{:g} s while waiting for {} {} (progress_timeout)", seconds, *waiting_for)


class PromiseExpired(RequestFailedError):
    """HTTP 410 while polling: the server dropped the request before its result was read.

    Sampling resubmits it; a training step's result is lost (the step may have been
    applied), which is a :class:`RequestFailedError`."""


#: how servers word a failure over something that does not exist
_NOT_FOUND = re.compile(r"\bnot found\b|\bdoes not exist\b|\bno such\b", re.IGNORECASE)


def _failure(data: dict[str, Any], request_id: str) -> RequestFailedError:
    """The error of a failed future; one over a missing thing is a NotFoundError too, as
    a 404 from any other method is."""
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("message", error)
    category = str(data.get("category", "unknown"))
    message = f"Request {request_id} failed on the server: {error}"
    if category != "server" and _NOT_FOUND.search(str(error)):
        return RequestNotFoundError(message, request_id=request_id, category=category)
    return RequestFailedError(message, request_id=request_id, category=category)


def _transient(exc: BaseException, polling: PollTuning) -> bool:
    """An error that says the server is away for now, not that the poll is wrong."""
    if isinstance(exc, APIConnectionError):  # timeouts included
        return True
    return (isinstance(exc, APIStatusError)
            and polling.poll_retry.should_retry_status(exc.status_code))


class _SessionLongPoll:
    """The ``retrieve_futures`` loop of one sampling session."""

    def __init__(self, poller: FuturePoller, sampling_session_id: str, clone_id: int) -> None:
        self.poller = poller
        self.sampling_session_id = sampling_session_id
        self.target = t.SamplingSessionFuturesTarget(
            sampling_session_id=sampling_session_id, cloned_sampler_id=clone_id)
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        #: when each waiter started (insertion order, so the first is the oldest)
        self.since: dict[str, float] = {}
        self.unclaimed: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.fetched: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: samples of this session being waited for, by either route
        self.in_flight = 0
        self.cursor = 0
        self.retrieved: list[str] = []
        self.task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    def wait(self, request_id: str) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        if self.failure is not None:
            fut.set_exception(self.failure)
            return fut
        done = self.unclaimed.pop(request_id, None)
        if done is not None:
            fut.set_result(done)
            return fut
        self.waiters[request_id] = fut
        self.since[request_id] = time.monotonic()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._run(), name="tinker-async-retrieve-futures")
        return fut

    def mark_retrieved(self, request_id: str) -> None:
        self.retrieved.append(request_id)

    def mark_fetched(self, request_id: str) -> None:
        """``request_id`` was fetched without the long-poll: ack it, and drop its completion
        when a later answer reports it."""
        self.retrieved.append(request_id)
        self.fetched[request_id] = None
        while len(self.fetched) > _UNCLAIMED_LIMIT:
            self.fetched.popitem(last=False)

    async def _run(self) -> None:
        _budget.detach()  # serves every waiter, not the call that happened to start it
        transport = self.poller.transport
        polling = transport.config.polling
        last_answer = cycle_start = time.monotonic()
        patience = _Patience(transport)
        unreadable = 0
        while self.waiters:
            self._say_if_waiting_long(patience, last_answer)
            sent_ids = self.retrieved
            self.retrieved = []
            body = t.FuturesRetrieveRequest(target=self.target, prev_cursor=self.cursor,
                                            retrieved_request_ids=sent_ids)
            asked = time.monotonic()
            try:
                resp = await transport.request(
                    "POST", "retrieve_futures", json=body,
                    timeout=transport.config.poll_timeout, retry=polling.poll_retry,
                    ok_statuses=frozenset({408}), idempotency_key=False,
                    deadline=_progress_limit(transport, last_answer, len(self.waiters),
                                             "sample(s)"),
                )
            except BaseException as exc:
                self.retrieved = sent_ids + self.retrieved  # re-send the acks next time
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if isinstance(exc, RateLimitError):
                    last_answer = time.monotonic()  # throttled, but alive
                if await self._poll_again_after(exc, last_answer):
                    continue
                return
            last_answer = time.monotonic()
            if resp.status == 408:
                continue
            try:
                taken = self._take(resp.json())
            except Exception as exc:  # an answer we cannot read must not strand the waiters
                # The poll is safe to send again (the cursor and the acks did not move);
                # only answers unreadable again and again fail the waiters (not the session).
                self.retrieved = sent_ids + self.retrieved
                unreadable += 1
                if unreadable > _UNREADABLE_POLLS:
                    self._fail_all(APIResponseValidationError(
                        f"{unreadable} unreadable retrieve_futures answers in a row: {exc!r}"),
                        permanent=False)
                    return
                log.warning("an unreadable retrieve_futures answer (%s); polling again", exc)
                continue
            unreadable = 0
            if self.waiters and taken < polling.batch_target and not self._urgent():
                await self._gather_window(taken, cycle_start, asked)
            cycle_start = asked

    async def _poll_again_after(self, exc: BaseException, last_answer: float) -> bool:
        """After a poll that failed with ``exc``: pause and say True to poll again, or fail
        the waiters and say False."""
        transport = self.poller.transport
        polling = transport.config.polling
        away = time.monotonic() - last_answer
        if _transient(exc, polling) and away < transport.config.progress_timeout:
            # An outage outlasted the retries: the work is still on the server, so keep
            # asking (as the official SDK does), but not forever: past the limit the
            # waiters get the connection error instead of a hang.
            log.info("retrieve_futures failed (%s); polling again", exc)
            await asyncio.sleep(polling.outage_pause_s)
            return True
        if _transient(exc, polling):
            # Fail these waiters, but not the session: a later sample polls afresh.
            self._fail_all(exc if isinstance(exc, APITimeoutError) else APITimeoutError(
                f"No answer from the server for {away:.0f} s while waiting for "
                f"{len(self.waiters)} sample(s) (progress_timeout): {exc}"),
                permanent=False)
            return False
        self._fail_all(exc if isinstance(exc, Exception) else TinkerError(str(exc)))
        return False

    def _urgent(self) -> bool:
        """Whether calls of this session wait for admission (their slots free up as these
        results arrive, so they are fetched at once rather than batched)."""
        urgent = self.poller.urgent
        return urgent is not None and urgent(self.sampling_session_id)

    async def _gather_window(self, taken: int, cycle_start: float, asked: float) -> None:
        """Few completions per answer: wait long enough (at the rate they have been
        arriving) for the next answer to carry about ``batch_target`` of them."""
        polling = self.poller.transport.config.polling
        now = time.monotonic()
        rate = taken / max(now - cycle_start, 1e-3)
        window = polling.batch_target / rate if rate > 0 else polling.rearm_max_s
        window = min(max(window, polling.rearm_min_s), polling.rearm_max_s) - (now - asked)
        if window > 0:
            await asyncio.sleep(window)

    def _say_if_waiting_long(self, patience: _Patience, last_answer: float) -> None:
        if not self.since:
            return
        now = time.monotonic()
        oldest = now - next(iter(self.since.values()))
        if patience.due(oldest):
            log.warning(
                "%d sample(s) of sampling session %s (clone %s) still waiting, the oldest "
                "for %.0f s; the server last answered %.1f s ago",
                len(self.waiters), self.target.sampling_session_id,
                self.target.cloned_sampler_id, oldest, now - last_answer)

    def _take(self, data: Any) -> int:
        """Record one ``retrieve_futures`` answer: wake the waiters whose requests are done.

        Returns how many completions it carried."""
        cursor = int(data.get("cursor", self.cursor))
        completions = data.get("completions", ())
        request_ids = [c["request_id"] for c in completions]
        if not all(isinstance(rid, str) for rid in request_ids):
            raise ValueError(f"completions without request ids: {completions!r}")
        self.cursor = cursor
        for rid, completion in zip(request_ids, completions, strict=True):
            fut = self.waiters.pop(rid, None)
            self.since.pop(rid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(completion)
            elif rid in self.fetched:  # its result was fetched directly already
                del self.fetched[rid]
            else:
                self.unclaimed[rid] = completion
                while len(self.unclaimed) > _UNCLAIMED_LIMIT:
                    self.unclaimed.popitem(last=False)
        return len(completions)

    def _fail_all(self, exc: Exception, *, permanent: bool = True) -> None:
        """Fail every waiter; a permanent failure also fails every later wait at once."""
        failure = exc if isinstance(exc, (APIConnectionError, APIResponseValidationError,
                                          ClientClosedError, SessionExpiredError)) else TinkerError(
            f"retrieve_futures polling failed: {exc}")
        if failure is not exc:
            failure.__cause__ = exc
        if permanent:
            self.failure = failure
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(failure)
        self.waiters.clear()
        self.since.clear()

    def forget(self, request_id: str) -> None:
        self.waiters.pop(request_id, None)
        self.since.pop(request_id, None)


async def _within_call_limit(
    fut: asyncio.Future[T], transport: Transport, request_type: str, request_id: str
) -> T:
    """Await ``fut``, but not past the current call's whole-call limit (if it has one)."""
    budget = _budget.current()
    limit = None if budget is None else budget.limit(transport.config)
    if limit is None:
        return await fut
    try:
        return await asyncio.wait_for(fut, max(limit.at - time.monotonic(), 0.0))
    except asyncio.TimeoutError:
        if fut.done() and not fut.cancelled() and fut.exception() is not None:
            raise
        raise APITimeoutError(
            f"{limit.reason} while waiting for {request_type} {request_id}. If the server "
            f"is only slow, give the client a larger {limit.option}=...") from None


def _decoded(decode: Callable[[Response], T], outcome: Response, request_type: str,
             request_id: str) -> T:
    """``decode(outcome)``, with any failure to read it typed and naming the request."""
    try:
        return decode(outcome)
    except TinkerError:
        raise
    except ValueError as exc:
        raise APIResponseValidationError(
            f"The server's {request_type} result for request {request_id} cannot be "
            f"decoded: {exc}", request_id=request_id) from exc


class FuturePoller:
    """Resolves the server futures of one client family."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.max_concurrent_polls = transport.config.polling.max_concurrent_polls
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self._guest_slots: asyncio.Semaphore | None = None
        self._sessions: dict[tuple[str, int], _SessionLongPoll] = {}
        self.polls_sent = 0
        #: whether calls of a sampling session wait for slots (admission control): their
        #: completions are then fetched at once instead of batched (see _SessionLongPoll)
        self.urgent: Callable[[str], bool] | None = None
        transport.home.on_move(self._forget_loop_state)

    def _forget_loop_state(self) -> None:
        self._slots = self._guest_slots = None
        self._sessions = {}

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if in_guest_run() and loop is not self._slots_loop:
            # Guest runs (``_loops``) all happen on the background loop.
            if self._guest_slots is None:
                self._guest_slots = asyncio.Semaphore(self.max_concurrent_polls)
            return self._guest_slots
        if self._slots is None or self._slots_loop is not loop:
            self._slots = asyncio.Semaphore(self.max_concurrent_polls)
            self._slots_loop = loop
        return self._slots

    async def result(
        self,
        request_id: str,
        request_type: str,
        decode: Callable[[Response], T],
        *,
        protobuf: bool = False,
        sampling_session: tuple[str, int] | None = None,
        submitted_at: float | None = None,
        on_queue_state: QueueStateObserver | None = None,
    ) -> T:
        """Wait for ``request_id`` and decode its result (``decode`` gets the response).

        ``sampling_session`` (id, clone id) routes the wait through that session's batch
        long-poll when the server offers one. ``on_queue_state`` hears the queue state of
        every ``try_again`` answer.
        """
        # A guest run polls its own request: the session long-polls live on the home loop.
        if (sampling_session is not None and self.transport.dialect.retrieve_futures
                and not in_guest_run()):
            session = self._sessions.get(sampling_session)
            if session is None:
                session = self._sessions[sampling_session] = _SessionLongPoll(self, *sampling_session)
            session.in_flight += 1
            # Light load: one held retrieve_future (two round trips in all, like the
            # official per-request path) costs less than long-poll plus fetch.
            direct = (session.in_flight <= self.transport.config.polling.direct_fetch_max
                      and session.failure is None)
            try:
                if not direct:
                    try:
                        await _within_call_limit(session.wait(request_id), self.transport,
                                                 request_type, request_id)
                    except BaseException:
                        session.forget(request_id)
                        raise
                try:
                    return await self._poll(request_id, request_type, decode, protobuf,
                                            submitted_at, on_queue_state)
                finally:
                    if direct:
                        session.mark_fetched(request_id)
                    else:
                        session.mark_retrieved(request_id)
            finally:
                session.in_flight -= 1
        return await self._poll(request_id, request_type, decode, protobuf, submitted_at,
                                on_queue_state)

    async def _poll(
        self,
        request_id: str,
        request_type: str,
        decode: Callable[[Response], T],
        protobuf: bool,
        submitted_at: float | None,
        on_queue_state: QueueStateObserver | None = None,
    ) -> T:
        headers = {"X-Tinker-Request-Type": request_type,
                   "Accept": PROTOBUF if protobuf else "application/json"}
        body = t.FutureRetrieveRequest(request_id=request_id)
        transport = self.transport
        endpoint = (f"retrieve_future/{quote(request_id, safe='')}"
                    if transport.dialect.future_id_in_path else "retrieve_future")
        idle_wait, iteration, unreadable = 0.01, 0, 0
        slots = self._semaphore()
        waiting_since = last_answer = time.monotonic()
        patience = _Patience(transport)
        budget = _budget.current()
        while True:
            if patience.due(last_answer - waiting_since):
                log.warning("%s: still waiting for %s %s after %.0f s; the server answers "
                            "that it is not ready yet", budget.what if budget else "a call",
                            request_type, request_id, last_answer - waiting_since)
            _mark_iteration(headers, iteration, submitted_at)
            async with slots:
                started = time.monotonic()
                self.polls_sent += 1
                resp = await transport.request(
                    "POST", endpoint, json=body, headers=headers,
                    timeout=transport.config.poll_timeout,
                    retry=transport.config.polling.poll_retry,
                    ok_statuses=_POLL_ANSWERS, idempotency_key=False,
                    deadline=_progress_limit(transport, last_answer, request_type,
                                             request_id),
                )
            last_answer = time.monotonic()
            iteration += 1
            if resp.status == 410:
                raise PromiseExpired(f"Request {request_id} expired on the server (HTTP 410) "
                                     "before its result was read", request_id=request_id,
                                     category="server")
            if resp.status != 408 and (resp.is_protobuf or resp.status == 200):
                try:
                    outcome = self._interpret(resp, request_id)
                    if outcome is not None:
                        return _decoded(decode, outcome, request_type, request_id)
                except APIResponseValidationError as exc:
                    # Asking again is safe (a poll changes nothing) and gets a good copy
                    # when the answer was spoilt on the way; a few times, then typed.
                    unreadable += 1
                    if unreadable > _UNREADABLE_POLLS:
                        raise
                    log.warning("%s %s: an unreadable answer (%s); polling again",
                                request_type, request_id, exc)
                    continue
            if on_queue_state is not None and resp.status in (200, 408):
                _report_queue_state(resp, on_queue_state)
            # Not ready. A server that held the poll can be asked again at once; one that
            # answered at once gets a short, growing pause instead of a busy loop.
            if time.monotonic() - started < _FAST_ANSWER_S:
                await asyncio.sleep(idle_wait)
                idle_wait = min(idle_wait * 2, _MAX_IDLE_WAIT_S)

    @staticmethod
    def _interpret(resp: Response, request_id: str) -> Response | None:
        """The result response, None if not ready yet; raises for a failed future."""
        if resp.is_protobuf:
            return resp
        data = resp.json()
        if not isinstance(data, dict):
            return resp
        if data.get("type") == "try_again":
            return None
        status = data.get("status")
        if status in ("pending", "running", "queued"):
            return None
        if status == "failed" or (data.get("error") is not None and "result" not in data):
            raise _failure(data, request_id)
        if status == "completed" and "result" in data:
            return Response(resp.status, resp.headers, _reencode(data["result"]))
        return resp

    async def cancel(self, request_id: str) -> None:
        """Ask the server to drop ``request_id`` (when it says it supports that)."""
        if not self.transport.dialect.dynamic_flags.get("sample_cancel_enabled"):
            return
        _budget.detach()  # runs after its call gave up: not bound by that call's budget
        if self.transport.closing or self.transport.closed:
            log.debug("cancel_future %s dropped: the client is closing", request_id)
            return
        try:
            await self.transport.request(
                "POST", "cancel_future", json=t.CancelFutureRequest(request_id=request_id),
                timeout=30
            )
        except TinkerError as exc:  # a closed client, say: nothing more to do
            log.debug("cancel_future %s failed: %s", request_id, exc)


def _reencode(value: Any) -> bytes:
    return msgspec.json.encode(value)
