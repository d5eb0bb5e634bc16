"""SamplingClient: text generation and prompt logprobs from a base model or saved weights.

``await sc.sample_async(prompt, num_samples, params)`` runs entirely on the caller's loop
(one ``asample`` request, then the shared poller); ``sc.sample(...)`` is the same call as an
:class:`APIFuture`. Thousands can be in flight from one client.

A SamplingClient pickles without the API key: the process that unpickles it reads
``TINKER_API_KEY`` from its own environment and joins the same server session with its
own block of sequence ids (as the official SDK's clones do). Unpickled where the original
ServiceClient still lives (the same process, or a forked child), the copy shares that
client instead and needs no key from the environment. A client carried across
``os.fork`` takes a new block of sequence ids on first use in the child. A copy's block
number comes from the server's ``join_sampling_session`` when it hands them out, else it
is random. ``get_sampler_handle()`` / ``from_sampler_handle()`` do the same with a string
in the official SDK's format.

Admission control (:mod:`._admission`): samples beyond the target's current concurrency
limit wait in a FIFO queue in the client; the limit adapts to the server's 429s, paused
queue states and latency (or is fixed with ``max_concurrency``). A 429 is never an error
by itself: the call waits (``Retry-After``) and resubmits with the same seq id and
idempotency key, and fails only when the caller's own deadline (``call_timeout``) runs
out, with a :class:`RateLimitError` that says how long it waited and what the server said.
``stats()`` shows the queue, the limit and the counters; see :mod:`._sampling_target`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from . import _argcheck, _budget, _otel, _proto, _requests, _sync
from . import types as t
from ._admission import (
    AdaptiveLimiter,
    AdmissionTimeout,
    FixedLimiter,
    Limiter,
    Outcome,
    Permit,
    Signal,
)
from ._api_future import APIFuture, ClientFuture, forward_client_methods
from ._config import RetryPolicy, credential_sources
from ._family import Family
from ._futures import PromiseExpired, QueueState
from ._loops import LoopLock
from ._retrying import retry_after as _retry_after
from ._sampler_handle import decode_handle, encode_handle, without_credentials
from ._sampling_target import QueueStateCallback, SamplingStats, SamplingTarget
from ._sync import homed
from ._transport import Response, new_idempotency_key, status_error
from ._validate import check_sampling
from .errors import (
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    TinkerError,
)
from .telemetry import Telemetry
from .types import _wire

if TYPE_CHECKING:
    from .service import ServiceClient

__all__ = ["BackcompatSamplingClientFuture", "SamplingClient", "SamplingStats", "family_stats"]

log = logging.getLogger("tinker_async")

_CLONE_BLOCK = 1_000_000_000
_RESUBMITS_ON_EXPIRY = 3
#: times a submit whose answer cannot be read is asked for again (same seq id and key)
_UNREADABLE_RESENDS = 2
_BACKPRESSURE_HEADER = "X-Tinker-Sampling-Backpressure"
#: a 429 on a submit comes back to the sampling code (admission control), not retried below
_THROTTLE_STATUSES = frozenset({429})
_cancels: set[asyncio.Task[None]] = set()


@functools.lru_cache(maxsize=8)
def _submit_retry(policy: RetryPolicy) -> RetryPolicy:
    """The client's policy for submitting a sample: other failures as configured; 429s
    are answered by the admission loop itself (``_THROTTLE_STATUSES``)."""
    return policy.replace(deadline=3600.0)


_QUEUE_STATE_LOG_INTERVAL_S = 60.0
#: a blocking ``sample`` answers only when done: allow a long generation
_SYNC_SAMPLE_TIMEOUT_S = 600.0
_PAUSE_REASONS = {
    QueueState.PAUSED_RATE_LIMIT: "concurrent sampler weights limit hit",
    QueueState.PAUSED_CAPACITY: "the server is running short on capacity, please wait",
}


async def _existing_session_client(
    holder: ServiceClient, sampling_session_id: str, model_path: str | None,
    base_model: str | None, record_stability_info: bool,
) -> SamplingClient:
    await holder.connect_async()
    if base_model is None:
        sampler = await holder.create_rest_client().get_sampler_async(sampling_session_id)
        base_model = sampler.base_model
    from .service import family_of

    return SamplingClient(family_of(holder), sampling_session_id, base_model=base_model,
                          model_path=model_path, record_stability_info=record_stability_info)


def _accepted(resp: Response) -> tuple[str, Any]:
    """The request id (and ``sample_sequence_ids``, if any) of an ``asample`` answer."""
    data = resp.json()
    request_id = data.get("request_id") if isinstance(data, dict) else None
    if not isinstance(request_id, str):
        raise APIResponseValidationError(f"asample answered without a request_id: {data!r}")
    return request_id, data.get("sample_sequence_ids")


def _attach_sequence_ids(result: t.SampleResponse, sequence_ids: Any) -> None:
    """Write the ids a server sent beside the result into its sequences."""
    if not sequence_ids:
        return
    if len(sequence_ids) != len(result.sequences):
        raise APIError(f"{len(sequence_ids)} sequence ids for "
                       f"{len(result.sequences)} sequences from the server")
    for sequence, sequence_id in zip(result.sequences, sequence_ids, strict=True):
        sequence.sequence_id = sequence_id


def _decode_sample(resp: Response) -> t.SampleResponse:
    if resp.is_protobuf:
        return _proto.decode_sample_response(resp.body)
    return _wire.decode_sample_response_json(resp.body)


class _Throttled:
    """A submit the server refused with a 429 (what to wait before going again)."""

    __slots__ = ("retry_after",)

    def __init__(self, retry_after: float | None) -> None:
        self.retry_after = retry_after


class _AdmissionDeadline(RateLimitError):
    """A RateLimitError raised because the caller's deadline ran out while rate limited."""


#: the admission state of each client family's sampling sessions in this process
_targets: weakref.WeakKeyDictionary[Family, dict[str, SamplingTarget]] = (
    weakref.WeakKeyDictionary())
_targets_lock = threading.Lock()


def _target_of(family: Family, sampling_session_id: str) -> SamplingTarget:
    with _targets_lock:
        by_session = _targets.get(family)
        if by_session is None:
            by_session = _targets[family] = {}
            # Calls waiting for admission wait for these results to free slots: the poller
            # then fetches completions at once rather than batching them (FuturePoller.urgent).
            family.poller.urgent = _admission_waiting(by_session)
        target = by_session.get(sampling_session_id)
        if target is None:
            target = by_session[sampling_session_id] = SamplingTarget(sampling_session_id)
        return target


def _admission_waiting(by_session: dict[str, SamplingTarget]) -> Callable[[str], bool]:
    def urgent(sampling_session_id: str) -> bool:
        """Whether calls of this sampling session wait in the admission queue."""
        target = by_session.get(sampling_session_id)
        return target is not None and target.limiter.queued > 0

    return urgent


def family_stats(family: Family) -> SamplingStats:
    """The sampling stats of every sampler of ``family`` in this process, added up
    (latency percentiles over all their recent samples)."""
    with _targets_lock:
        targets = list(_targets.get(family, {}).values())
    latencies = [value for target in targets for value in target.latencies()]
    return SamplingStats.combine([target.stats() for target in targets], latencies)


class SamplingClient:
    """Samples from one sampling session. Made by ServiceClient or TrainingClient.

    Admission control: ``max_concurrency`` fixes the sampler's concurrency limit (else it
    adapts to the server), ``limiter`` plugs in another :class:`Limiter`, and
    ``on_queue_state(state, reason)`` hears each change of the sampler's queue state.
    """

    def __init__(
        self,
        family: Family,
        sampling_session_id: str,
        *,
        base_model: str | None = None,
        model_path: str | None = None,
        record_stability_info: bool = False,
        clone_id: int = 0,
        max_concurrency: int | None = None,
        limiter: Limiter | None = None,
        on_queue_state: QueueStateCallback | None = None,
    ) -> None:
        self._family = family
        self._home = family.home
        self.sampling_session_id = sampling_session_id
        self._base_model = base_model
        self.model_path = model_path
        self._record_stability_info = record_stability_info
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._clone_id = clone_id
        self._next_seq = clone_id * _CLONE_BLOCK
        #: the process in which this client's clone number is settled (the original's is 0;
        #: a copy's comes from the server where it hands them out, else from random)
        self._settled_pid: int | None = os.getpid() if clone_id == 0 else None
        self._join_lock = LoopLock()
        #: the pause the official hook last logged, and when
        self._hook_state = QueueState.ACTIVE
        self._queue_state_logged_at: float | None = None
        self._queue_state_callback: QueueStateCallback | None = on_queue_state
        self._admission = _target_of(family, sampling_session_id)
        self._admission.clients.add(self)
        if limiter is not None:
            self.set_limiter(limiter)
        elif max_concurrency is not None:
            self.set_max_concurrency(max_concurrency)

    @staticmethod
    def create(
        holder: ServiceClient,
        *,
        model_path: str | None = None,
        base_model: str | None = None,
        sampling_session_id: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> APIFuture[SamplingClient]:
        """A SamplingClient of ``holder`` (a ServiceClient), as an APIFuture.

        With ``sampling_session_id``, a client for that existing sampling session of the
        holder's server session; otherwise a new sampling session on ``model_path`` or
        ``base_model`` (as :meth:`ServiceClient.create_sampling_client`).
        """
        if sampling_session_id is None:
            return holder.create_sampling_client(
                model_path=model_path, base_model=base_model, retry_config=retry_config,
                record_stability_info=record_stability_info)
        return _sync.call(holder, _existing_session_client(
            holder, sampling_session_id, model_path, base_model, record_stability_info))

    def __repr__(self) -> str:
        return (f"SamplingClient(sampling_session_id={self.sampling_session_id!r}, "
                f"base_model={self._base_model!r})")

    # -- pickling: no key, a fresh clone id on the other side ---------------------------

    def __reduce__(self) -> Any:
        return (_unpickle_sampling_client, (self._clone_state(),))

    def _clone_state(self) -> dict[str, Any]:
        """What another process needs to make a copy of this client (no credentials)."""
        family = self._family
        config = family.transport.config
        dialect = family.transport.dialect
        if family.session.id is not None:
            # A copy made in this process (or a forked child) joins through this client.
            _live_families[(config.base_url, family.session.id)] = family
        return {
            "base_url": config.base_url,
            "default_headers": without_credentials(config.default_headers),
            "dialect": dialect.name,
            "route_prefix": dialect.route_prefix,
            "flags": dict(dialect.flags),
            "has_client_config": dialect.has_client_config,
            "dynamic_flags": dict(dialect.dynamic_flags),
            "session_id": family.session.id,
            "sampling_session_id": self.sampling_session_id,
            "base_model": self._base_model,
            "model_path": self.model_path,
            "record_stability_info": self._record_stability_info,
        }

    def get_sampler_handle(self) -> str:
        """A string that makes a copy of this client in any process, any number of times
        (:meth:`from_sampler_handle`); a pickle-free way to hand a sampler to workers.

        It carries no credentials (the copy uses its own process's key) and has the
        official SDK's format, so either library reads the other's handles.
        """
        if self._family.session.id is None:
            raise RuntimeError("this SamplingClient has no server session yet to hand over")
        return encode_handle(self._clone_state())

    @classmethod
    def from_sampler_handle(cls, handle: str, *, api_key: str | None = None) -> SamplingClient:
        """A SamplingClient for the sampler behind ``handle`` (from :meth:`get_sampler_handle`).

        It authenticates with ``api_key``, else this process's key (``TINKER_API_KEY``...),
        joins the sampler's server session and numbers its requests in a block of its own.
        Nothing is sent until its first sample.
        """
        return _unpickle_sampling_client(decode_handle(handle), api_key=api_key)

    async def _settle_clone(self) -> None:
        """A copy (unpickled, from a handle, or in a forked child) asks the server for its
        clone number when the server hands them out (``sample_join_sampling_session``)."""
        if self._settled_pid == os.getpid():
            return
        transport = self._family.transport
        if not transport.dialect.flag("sample_join_sampling_session"):
            self._settled_pid = os.getpid()  # _take_seq picks a random block
            return
        async with self._join_lock():
            if self._settled_pid == os.getpid():
                return
            data = (await transport.request(
                "POST", "join_sampling_session",
                json=t.JoinSamplingSessionRequest(
                    sampling_session_id=self.sampling_session_id))).json()
            counter = data.get("client_counter") if isinstance(data, dict) else None
            if not isinstance(counter, int) or isinstance(counter, bool) or counter < 1:
                raise APIError(f"join_sampling_session answered without a clone number: {data!r}")
            with self._lock:
                self._pid = self._settled_pid = os.getpid()
                self._clone_id = counter
                self._next_seq = counter * _CLONE_BLOCK

    def _take_seq(self) -> tuple[int, int]:
        """(seq id, clone id) for the next request; a forked child starts a new block."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._clone_id = random.randrange(1, _CLONE_BLOCK)
                self._next_seq = self._clone_id * _CLONE_BLOCK
            seq = self._next_seq
            self._next_seq += 1
            return seq, self._clone_id

    # -- local getters ------------------------------------------------------------------

    def get_base_model(self) -> str:
        """The base model's name."""
        return self._base_model or ""

    def get_tokenizer(self) -> Any:
        """The model's tokenizer (the embedded server's byte tokenizer needs no extras)."""
        from ._tokenizers import tokenizer_for_model, tokenizer_id_for

        return tokenizer_for_model(tokenizer_id_for(self.get_base_model(), None))

    # -- sampling -----------------------------------------------------------------------

    def _request(
        self,
        prompt: t.ModelInput,
        num_samples: int,
        params: t.SamplingParams,
        include_prompt_logprobs: bool,
        topk_prompt_logprobs: int,
        topk_sample_logprobs: int,
        target_prompt_logprobs: t.TensorData | None,
        prompt_alt_tokens_k: int,
        prompt_logprobs_last_n: int | None,
    ) -> t.SampleRequest:
        """The sample request in the shape this server takes (seq id written in later).

        Sampling parameters are always sent in full (servers' defaults differ); optional
        features only when used (the Struct leaves defaults out), because strict servers
        reject default-valued extras."""
        request = t.SampleRequest(
            prompt=prompt, sampling_params=params, num_samples=num_samples,
            sampling_session_id=self.sampling_session_id,
            prompt_logprobs=True if include_prompt_logprobs else None,
            topk_prompt_logprobs=topk_prompt_logprobs,
            topk_sample_logprobs=topk_sample_logprobs,
            target_prompt_logprobs=target_prompt_logprobs,  # type: ignore[arg-type]
            prompt_alt_tokens_k=prompt_alt_tokens_k,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
            record_stability_info=True if self._record_stability_info else None,
        )
        return _requests.sample_body(request, self._family.transport.dialect)

    @homed
    async def sample_async(
        self,
        prompt: t.ModelInput,
        num_samples: int,
        sampling_params: t.SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: t.TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> t.SampleResponse:
        """Generate ``num_samples`` continuations of ``prompt``.

        Returns a SampleResponse whose sequences carry tokens, logprobs, stop reason and
        the server's sequence id; with ``include_prompt_logprobs`` also the prompt's
        logprobs (``None`` for the first token).
        """
        check_sampling(prompt, num_samples, sampling_params, topk_prompt_logprobs,
                       topk_sample_logprobs, prompt_alt_tokens_k, prompt_logprobs_last_n,
                       include_prompt_logprobs)
        if target_prompt_logprobs is not None and (
            target_prompt_logprobs.dtype != "int64" or len(target_prompt_logprobs.shape or []) != 2
        ):
            raise InvalidRequestError("target_prompt_logprobs must be a 2-D int64 TensorData")
        self._family.check_open()
        if self._settled_pid != os.getpid():
            await self._settle_clone()
        request = self._request(prompt, num_samples, sampling_params, include_prompt_logprobs,
                                topk_prompt_logprobs, topk_sample_logprobs,
                                target_prompt_logprobs, prompt_alt_tokens_k,
                                prompt_logprobs_last_n)
        seq, clone = self._take_seq()
        response = await self._sample_admitted(msgspec.structs.replace(request, seq_id=seq), clone)
        if prompt_alt_tokens_k and response.prompt_alt_tokens is None:
            raise RuntimeError("the server ignored prompt_alt_tokens_k (it may predate it)")
        return response

    # -- admission control (see _admission and _sampling_target) -------------------------

    async def _sample_admitted(self, body: t.SampleRequest, clone: int) -> t.SampleResponse:
        """One sample under the target's admission control. A 429 gives the slot back;
        the call waits (Retry-After) and goes again at the head of the queue, with the
        same seq id and idempotency key, until it is served or its deadline runs out."""
        target = self._admission
        limiter = target.limiter  # calls finish under the limiter they started with
        called = time.monotonic()
        budget = _budget.current()
        deadline = None if budget is None else budget.limit(self._family.transport.config)
        otel = _otel.get()
        span = None
        if otel is not None and otel.active:
            span = otel.start_span(target.otel_attributes())
        headers = {_BACKPRESSURE_HEADER: "1", "X-Idempotency-Key": new_idempotency_key()}
        throttles = 0
        waited = 0.0
        duration: float | None = None
        error: BaseException | None = None
        try:
            while True:
                permit = await self._admit(limiter, target, called, deadline, throttles > 0)
                if not throttles:
                    waited = permit.granted_at - called
                    target.admitted_after(waited)
                try:
                    result = await self._submit(body, clone, headers, target, limiter, permit)
                except BaseException as exc:
                    limiter.release(permit, Outcome.CANCELLED if isinstance(
                        exc, asyncio.CancelledError) else Outcome.FAILED)
                    raise
                if isinstance(result, _Throttled):
                    limiter.release(permit, Outcome.THROTTLED)
                    throttles += 1
                    await self._wait_out(result, limiter, target, called, deadline, throttles)
                    continue
                duration = time.monotonic() - permit.granted_at
                limiter.release(permit, Outcome.OK)
                target.record_latency(duration)
                return result
        except asyncio.CancelledError as exc:
            error = exc
            raise
        except BaseException as exc:
            error = exc
            target.failed += 1
            if isinstance(exc, (APITimeoutError, _AdmissionDeadline)):
                target.timeouts += 1
            raise
        finally:
            retried = 0 if budget is None else budget.retries  # HTTP retries in this call
            if retried:
                target.retries += retried
            if otel is not None and (span is not None or otel.active):
                outcome = ("ok" if error is None else "cancelled"
                           if isinstance(error, asyncio.CancelledError) else "failed")
                otel.finish(span, target.otel_attributes(), outcome, waited, duration,
                            throttles, error if outcome == "failed" else None)

    async def _admit(self, limiter: Limiter, target: SamplingTarget, called: float,
                     deadline: _budget.Limit | None, first: bool) -> Permit:
        """Wait for admission, up to the call's own deadline."""
        timeout = None if deadline is None else deadline.at - time.monotonic()
        try:
            return await limiter.acquire(timeout, first=first)
        except AdmissionTimeout:
            raise self._deadline_error(limiter, target, called, deadline) from None

    async def _wait_out(self, throttle: _Throttled, limiter: Limiter, target: SamplingTarget,
                        called: float, deadline: _budget.Limit | None, throttles: int) -> None:
        """Sleep before resubmitting a refused sample: Retry-After, else a backoff."""
        delay = throttle.retry_after
        if delay is None:
            policy = self._family.transport.config.retry
            delay = random.uniform(
                0.0, min(policy.max_delay, policy.base_delay * 2.0 ** min(throttles - 1, 16)))
        if deadline is not None and time.monotonic() + delay >= deadline.at:
            raise self._deadline_error(limiter, target, called, deadline)
        target.retries += 1
        await asyncio.sleep(delay)

    def _deadline_error(self, limiter: Limiter, target: SamplingTarget, called: float,
                        deadline: _budget.Limit | None) -> _AdmissionDeadline:
        waited = time.monotonic() - called
        if target.last_refusal is None or target.last_refusal_at is None:
            said = "the server has not refused or paused any call of this sampler"
        else:
            ago = time.monotonic() - target.last_refusal_at
            said = f"the server last said ({ago:.1f} s ago): {target.last_refusal}"
        reason = deadline.reason if deadline is not None else "its deadline ran out"
        option = deadline.option if deadline is not None else "call_timeout"
        transport = self._family.transport
        return _AdmissionDeadline(
            f"sample on sampler {self.sampling_session_id} gave up after {waited:.1f} s "
            f"waiting to be served (rate limited: {limiter.in_flight} in flight, "
            f"{limiter.queued} queued in the client, limit {limiter.limit}): {reason}; "
            f"{said}. Allow more time ({option}=...), send fewer samples at once, or set "
            f"max_concurrency to your quota if you know it.",
            status_code=429, method="POST", url=transport.url("asample"))

    def _throttled(self, resp: Response, endpoint: str, target: SamplingTarget) -> _Throttled:
        """Record a 429 on a submit: what the server said, and the target is paused."""
        transport = self._family.transport
        error = status_error(resp.status, resp.body, resp.headers, method="POST",
                             url=transport.url(endpoint), scrub=transport.credentials.secrets())
        retry_after = _retry_after(resp.headers, transport.config.retry.retry_after_cap)
        data = error.body if isinstance(error.body, dict) else {}
        try:
            state = QueueState(data.get("queue_state", QueueState.PAUSED_RATE_LIMIT.value))
        except ValueError:
            state = QueueState.PAUSED_RATE_LIMIT
        if state is QueueState.ACTIVE:
            state = QueueState.PAUSED_RATE_LIMIT
        reason = data.get("queue_state_reason")
        if not isinstance(reason, str) or not reason:
            reason = _PAUSE_REASONS.get(state, "the server answered 429")
        target.rate_limited += 1
        target.refused(f"{error}" + (f" (Retry-After {retry_after:g} s)"
                                     if retry_after is not None else ""))
        target.paused(state, reason, None)
        return _Throttled(retry_after)

    async def _submit(self, body: t.SampleRequest, clone: int, headers: dict[str, str],
                      target: SamplingTarget, limiter: Limiter, permit: Permit,
                      ) -> t.SampleResponse | _Throttled:
        self._family.check_open()
        if self._family.transport.dialect.sync_sample:
            answer = await self._sample_blocking(body, headers, target)
            if answer is not None:
                return answer
        return await self._submit_and_wait(body, clone, headers, target, limiter, permit)

    async def _sample_blocking(self, body: t.SampleRequest, headers: dict[str, str],
                               target: SamplingTarget) -> t.SampleResponse | _Throttled | None:
        """A server's blocking ``POST sample`` (tinkercloud): the answer is the result.
        None if the server has no such route (then the future-based ``asample`` is used)."""
        transport = self._family.transport
        target.requests += 1
        try:
            resp = await transport.request(
                "POST", "sample", json=body, headers=headers, idempotency_key=False,
                retry=_submit_retry(transport.config.retry), ok_statuses=_THROTTLE_STATUSES,
                timeout=_SYNC_SAMPLE_TIMEOUT_S)
        except NotFoundError as exc:
            transport.dialect.lacks("sync_sample", exc)
            return None
        if resp.status in _THROTTLE_STATUSES:
            return self._throttled(resp, "sample", target)
        if target.state is not QueueState.ACTIVE:
            target.active(self)
        try:
            return _decode_sample(resp)
        except TinkerError:
            raise
        except ValueError as exc:  # as the poller types an unreadable result
            raise APIResponseValidationError(
                f"The server's sample result cannot be decoded: {exc}") from exc

    async def _submit_and_wait(self, body: t.SampleRequest, clone: int, headers: dict[str, str],
                               target: SamplingTarget, limiter: Limiter, permit: Permit,
                               ) -> t.SampleResponse | _Throttled:
        family = self._family
        transport = family.transport
        use_proto = transport.dialect.protobuf
        expired = unreadable = 0
        while True:
            submitted = time.time()
            target.requests += 1
            resp = await transport.request(
                "POST", "asample", json=body, headers=headers, idempotency_key=False,
                retry=_submit_retry(transport.config.retry), ok_statuses=_THROTTLE_STATUSES,
            )
            if resp.status in _THROTTLE_STATUSES:
                return self._throttled(resp, "asample", target)
            try:
                request_id, sequence_ids = _accepted(resp)
            except APIResponseValidationError as exc:
                # The server may have accepted it: the same seq id and idempotency key get
                # the same answer again without a second sample.
                if unreadable == _UNREADABLE_RESENDS:
                    raise
                unreadable += 1
                target.retries += 1
                log.warning("asample: the server's answer cannot be read (%s); asking again "
                            "with the same seq id", exc)
                continue
            limiter.signal(permit, Signal.ADMITTED)
            if target.state is not QueueState.ACTIVE:
                target.active(self)
            try:
                result = await family.poller.result(
                    request_id, "Sample", _decode_sample, protobuf=use_proto,
                    sampling_session=(self.sampling_session_id, clone), submitted_at=submitted,
                    on_queue_state=self._observe_queue_state)
            except PromiseExpired:
                if expired == _RESUBMITS_ON_EXPIRY:
                    raise
                expired += 1
                log.info("sample %s expired on the server; resubmitting", request_id)
                target.retries += 1
                # A new key: the old one would be answered with the expired request's id.
                headers["X-Idempotency-Key"] = new_idempotency_key()
                continue
            except asyncio.CancelledError:
                # Abandoned (a timeout or a cancel): let the server stop the work if it can.
                # (A failed sample needs no cancel: the server is done with it.)
                if transport.dialect.dynamic_flags.get("sample_cancel_enabled"):
                    task = asyncio.get_running_loop().create_task(
                        family.poller.cancel(request_id))
                    _cancels.add(task)  # the loop keeps only a weak reference
                    task.add_done_callback(_cancels.discard)
                raise
            _attach_sequence_ids(result, sequence_ids)
            return result

    @homed
    async def compute_logprobs_async(
        self, prompt: t.ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> list[float | None]:
        """The logprob of each prompt token given the ones before (``None`` for the first)."""
        response = await self.sample_async(
            prompt, 1, t.SamplingParams(max_tokens=1), include_prompt_logprobs=True,
            prompt_logprobs_last_n=prompt_logprobs_last_n)
        return list(response.prompt_logprobs or [])

    def on_queue_state_change(
        self, queue_state: QueueState, queue_state_reason: str | None
    ) -> None:
        """Called with the queue state of each ``try_again`` answer to this client's samples,
        and with each change of its sampler's state (a 429 pauses it; see ``stats()``).

        Logs a WARNING when sampling is paused, at most once a minute (sooner only for a
        pause of another kind), as the official SDK does. Override it, or set it on the
        instance, to act on the state yourself. (Every change is also logged once at
        INFO, with the admission numbers, whatever this method does.)
        """
        if queue_state is QueueState.ACTIVE:
            return
        now = time.monotonic()
        last = self._queue_state_logged_at
        if (queue_state is self._hook_state and last is not None
                and now - last < _QUEUE_STATE_LOG_INTERVAL_S):
            return
        self._hook_state = queue_state
        self._queue_state_logged_at = now
        reason = queue_state_reason or _PAUSE_REASONS.get(queue_state, "unknown")
        log.warning("Sampling is paused for sampler %s. Reason: %s",
                    self.sampling_session_id, reason)

    def _observe_queue_state(self, state: QueueState, reason: str | None) -> None:
        """The poller's observer: a try-again answer's queue state, for the sampler's
        state (and limit), then for the official hook."""
        target = self._admission
        if state is QueueState.ACTIVE:
            target.active(self)
        elif state is not QueueState.UNKNOWN:
            target.limiter.signal(None, Signal.PAUSED)
            reason_text = reason or _PAUSE_REASONS.get(state, "unknown")
            target.refused(f"queue state {state.value}: {reason_text}")
            target.paused(state, reason_text, self)
        self.on_queue_state_change(state, reason)

    @property
    def queue_state(self) -> QueueState:
        """The sampler's queue state: the last one the server reported (by a try-again
        answer or a 429), back to ACTIVE once the server has served it again for a while."""
        return self._admission.state

    # -- admission control: public surface --------------------------------------------------

    def stats(self) -> SamplingStats:
        """In flight, queued, the current limit, 429s seen, retries, timeouts, latency
        p50/p95/p99 and mean queue wait of this client's sampler (shared by every client
        of the same sampling session in this process)."""
        return self._admission.stats()

    @property
    def limiter(self) -> Limiter:
        """The admission limiter of this client's sampler (see ``tinker_async._admission``)."""
        return self._admission.limiter

    def set_max_concurrency(self, max_concurrency: int | None) -> None:
        """Fix the sampler's concurrency limit (for users who know their quota), or with
        ``None`` go back to the adaptive limit. Calls already queued keep their place
        under the old limiter. Applies to every client of this sampling session here."""
        self.set_limiter(AdaptiveLimiter() if max_concurrency is None
                         else FixedLimiter(max_concurrency))

    def set_limiter(self, limiter: Limiter) -> None:
        """Use ``limiter`` (any :class:`tinker_async._admission.Limiter`, e.g. one that
        shares a limit between processes) for this sampler's calls from now on."""
        if not isinstance(limiter, Limiter):
            raise TypeError(f"{limiter!r} lacks the Limiter methods (acquire, signal, "
                            "release, limit, in_flight, queued)")
        self._admission.limiter = limiter

    def set_queue_state_callback(self, callback: QueueStateCallback | None) -> None:
        """Call ``callback(state, reason)`` on each change of the sampler's queue state
        (``None`` removes it); it runs on the event loop and must not block."""
        self._queue_state_callback = callback

    def get_telemetry(self) -> Telemetry:
        """This client family's local request counters (nothing is sent anywhere)."""
        return self._family.telemetry

    @homed
    async def get_base_model_async(self) -> str:
        """The base model's name (for code written against the async twin)."""
        return self.get_base_model()

    # --- BEGIN GENERATED SYNC FORMS (scripts/gen_sync.py; do not edit) ---
    def sample(self, prompt: t.ModelInput, num_samples: int, sampling_params: t.SamplingParams, include_prompt_logprobs: bool=False, topk_prompt_logprobs: int=0, topk_sample_logprobs: int=0, target_prompt_logprobs: t.TensorData | None=None, prompt_alt_tokens_k: int=0, prompt_logprobs_last_n: int | None=None) -> APIFuture[t.SampleResponse]:
        """Generate ``num_samples`` continuations of ``prompt``.

        Sync form of :meth:`sample_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.sample_async, locals())
        return _sync.call(self, self.sample_async(prompt, num_samples, sampling_params, include_prompt_logprobs, topk_prompt_logprobs, topk_sample_logprobs, target_prompt_logprobs, prompt_alt_tokens_k, prompt_logprobs_last_n))

    def compute_logprobs(self, prompt: t.ModelInput, prompt_logprobs_last_n: int | None=None) -> APIFuture[list[float | None]]:
        """The logprob of each prompt token given the ones before (``None`` for the first).

        Sync form of :meth:`compute_logprobs_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.compute_logprobs_async, locals())
        return _sync.call(self, self.compute_logprobs_async(prompt, prompt_logprobs_last_n))
    # --- END GENERATED SYNC FORMS ---


#: client families whose SamplingClients were pickled, by (base URL, session id)
_live_families: weakref.WeakValueDictionary[tuple[str, str], Family] = (
    weakref.WeakValueDictionary())


#: client families made to join a session in this process, by session and credential
_shadows: weakref.WeakValueDictionary[tuple[Any, ...], Family] = (
    weakref.WeakValueDictionary())


def _unpickle_sampling_client(state: dict[str, Any], api_key: str | None = None) -> SamplingClient:
    from .service import join_session

    family = None if api_key is not None else _live_families.get(
        (state["base_url"], state["session_id"]))
    if family is None or family.closed:
        # Another process (or another key): join the session with this process's key. One
        # joining client per session and credential, however many copies are made (each
        # would otherwise bring a connection pool, and a JWT exchange, of its own).
        headers = state.get("default_headers") or {}
        key, command = credential_sources(api_key, state["base_url"], state["dialect"])
        shadow_key = (state["base_url"], state["session_id"], state["dialect"],
                      hashlib.sha256(f"{key}\0{command}".encode()).hexdigest(),
                      tuple(sorted(headers.items())))
        family = _shadows.get(shadow_key)
        if family is None or family.closed:
            family = _shadows[shadow_key] = join_session(
                base_url=state["base_url"], dialect=state["dialect"],
                route_prefix=state["route_prefix"], flags=state["flags"],
                has_client_config=state["has_client_config"], session_id=state["session_id"],
                dynamic_flags=state.get("dynamic_flags"), default_headers=headers,
                api_key=api_key,
            )
    return SamplingClient(
        family, state["sampling_session_id"], base_model=state["base_model"],
        model_path=state["model_path"], record_stability_info=state["record_stability_info"],
        clone_id=random.randrange(1, _CLONE_BLOCK),
    )


class BackcompatSamplingClientFuture(ClientFuture[SamplingClient], SamplingClient):
    """The future of a call that makes a SamplingClient. It is also a SamplingClient (as
    in the official SDK): its client methods and attributes wait for the client and
    forward to it, with a one-time FutureWarning (call ``.result()`` or ``await`` it)."""

    __slots__ = ()


forward_client_methods(BackcompatSamplingClientFuture, SamplingClient)
