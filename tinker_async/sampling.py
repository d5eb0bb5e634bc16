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
from typing import TYPE_CHECKING, Any

from . import _argcheck, _proto, _sync
from . import types as t
from ._api_future import APIFuture, ClientFuture, forward_client_methods
from ._config import RetryPolicy, credential_sources
from ._futures import PromiseExpired, QueueState
from ._loops import LoopLock
from ._sampler_handle import decode_handle, encode_handle, without_credentials
from ._sync import homed
from ._transport import Response
from ._validate import check_sampling
from .errors import (
    APIError,
    APIResponseValidationError,
    InvalidRequestError,
    NotFoundError,
    TinkerError,
)
from .telemetry import Telemetry
from .types import _wire

if TYPE_CHECKING:
    from .service import ServiceClient

__all__ = ["BackcompatSamplingClientFuture", "SamplingClient"]

log = logging.getLogger("tinker_async")

_CLONE_BLOCK = 1_000_000_000
_RESUBMITS_ON_EXPIRY = 3
_ASAMPLE_HEADERS = {"X-Tinker-Sampling-Backpressure": "1"}
_cancels: set[asyncio.Task[None]] = set()


@functools.lru_cache(maxsize=8)
def _submit_retry(policy: RetryPolicy) -> RetryPolicy:
    """The client's policy for submitting a sample: a busy server (429) is waited out for
    up to an hour, as the official SDK's sampling RetryHandler does."""
    return policy.replace(max_429_retries=1000, deadline=3600.0)


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
    return SamplingClient(holder, sampling_session_id, base_model=base_model,
                          model_path=model_path, record_stability_info=record_stability_info)


def _decode_sample(resp: Response) -> t.SampleResponse:
    if resp.is_protobuf:
        return _proto.decode_sample_response(resp.body)
    return _wire.decode_sample_response_json(resp.body)


class SamplingClient:
    """Samples from one sampling session. Made by ServiceClient or TrainingClient."""

    def __init__(
        self,
        service: ServiceClient,
        sampling_session_id: str,
        *,
        base_model: str | None = None,
        model_path: str | None = None,
        record_stability_info: bool = False,
        clone_id: int = 0,
    ) -> None:
        self._service = service
        self._home = service._home
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
        self._queue_state = QueueState.ACTIVE
        self._queue_state_logged_at: float | None = None

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
        svc = self._service
        config = svc._transport.config
        dialect = svc._transport.dialect
        if svc._session.id is not None:
            # A copy made in this process (or a forked child) joins through this client.
            _live_services[(config.base_url, svc._session.id)] = svc
        return {
            "base_url": config.base_url,
            "default_headers": without_credentials(config.default_headers),
            "dialect": dialect.name,
            "route_prefix": dialect.route_prefix,
            "flags": dict(dialect.flags),
            "has_client_config": dialect.has_client_config,
            "dynamic_flags": dict(dialect.dynamic_flags),
            "session_id": svc._session.id,
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
        if self._service._session.id is None:
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
        transport = self._service._transport
        if not transport.dialect.flag("sample_join_sampling_session"):
            self._settled_pid = os.getpid()  # _take_seq picks a random block
            return
        async with self._join_lock():
            if self._settled_pid == os.getpid():
                return
            data = (await transport.request(
                "POST", "join_sampling_session",
                json={"sampling_session_id": self.sampling_session_id,
                      "type": "join_sampling_session"})).json()
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

    def _body(
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
    ) -> dict[str, Any]:
        # Sampling parameters are always sent in full (servers' defaults differ); optional
        # features only when used, because strict servers reject default-valued extras.
        sp: dict[str, Any] = {"temperature": params.temperature, "top_k": params.top_k,
                              "top_p": params.top_p}
        if params.max_tokens is not None:
            sp["max_tokens"] = params.max_tokens
        if params.seed is not None:
            sp["seed"] = params.seed
        if params.stop is not None:
            sp["stop"] = params.stop
        body: dict[str, Any] = {"num_samples": num_samples, "prompt": prompt,
                                "sampling_params": sp, "type": "sample"}
        if include_prompt_logprobs:
            body["prompt_logprobs"] = True
        if topk_prompt_logprobs:
            body["topk_prompt_logprobs"] = topk_prompt_logprobs
        if topk_sample_logprobs:
            body["topk_sample_logprobs"] = topk_sample_logprobs
        if target_prompt_logprobs is not None:
            body["target_prompt_logprobs"] = target_prompt_logprobs
        if prompt_alt_tokens_k:
            body["prompt_alt_tokens_k"] = prompt_alt_tokens_k
        if prompt_logprobs_last_n is not None:
            body["prompt_logprobs_last_n"] = prompt_logprobs_last_n
        if self._record_stability_info:
            body["record_stability_info"] = True
        body["sampling_session_id"] = self.sampling_session_id
        if self._service._transport.dialect.tinkercloud_bodies:
            # tinkercloud's documented request names the sampler ``model_id``; its
            # servers (and the embedded one) also read ``sampling_session_id``.
            body["model_id"] = self.sampling_session_id
            body["include_prompt_logprobs"] = include_prompt_logprobs
        return body

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
        self._service._check_open()
        if self._settled_pid != os.getpid():
            await self._settle_clone()
        body = self._body(prompt, num_samples, sampling_params, include_prompt_logprobs,
                          topk_prompt_logprobs, topk_sample_logprobs, target_prompt_logprobs,
                          prompt_alt_tokens_k, prompt_logprobs_last_n)
        seq, clone = self._take_seq()
        body["seq_id"] = seq
        response = None
        if self._service._transport.dialect.sync_sample:
            response = await self._sample_blocking(body)
        if response is None:
            response = await self._submit_and_wait(body, clone)
        if prompt_alt_tokens_k and response.prompt_alt_tokens is None:
            raise RuntimeError("the server ignored prompt_alt_tokens_k (it may predate it)")
        return response

    async def _sample_blocking(self, body: dict[str, Any]) -> t.SampleResponse | None:
        """A server's blocking ``POST sample`` (tinkercloud): the answer is the result.
        None if the server has no such route (then the future-based ``asample`` is used)."""
        transport = self._service._transport
        try:
            resp = await transport.request(
                "POST", "sample", json=body, retry=_submit_retry(transport.config.retry),
                timeout=_SYNC_SAMPLE_TIMEOUT_S)
        except NotFoundError as exc:
            transport.dialect.lacks("sync_sample", exc)
            return None
        try:
            return _decode_sample(resp)
        except TinkerError:
            raise
        except ValueError as exc:  # as the poller types an unreadable result
            raise APIResponseValidationError(
                f"The server's sample result cannot be decoded: {exc}") from exc

    async def _submit_and_wait(self, body: dict[str, Any], clone: int) -> t.SampleResponse:
        service = self._service
        transport = service._transport
        use_proto = transport.dialect.protobuf
        for attempt in range(_RESUBMITS_ON_EXPIRY + 1):
            submitted = time.time()
            resp = await transport.request(
                "POST", "asample", json=body, headers=_ASAMPLE_HEADERS,
                retry=_submit_retry(transport.config.retry),
            )
            data = resp.json()
            request_id = data.get("request_id") if isinstance(data, dict) else None
            if not isinstance(request_id, str):
                raise APIError(f"asample answered without a request_id: {data!r}")
            sequence_ids = data.get("sample_sequence_ids")
            try:
                result = await service._poller.result(
                    request_id, "Sample", _decode_sample, protobuf=use_proto,
                    sampling_session=(self.sampling_session_id, clone), submitted_at=submitted,
                    on_queue_state=self.on_queue_state_change)
            except PromiseExpired:
                if attempt == _RESUBMITS_ON_EXPIRY:
                    raise
                log.info("sample %s expired on the server; resubmitting", request_id)
                continue
            except asyncio.CancelledError:
                # Abandoned (a timeout or a cancel): let the server stop the work if it can.
                # (A failed sample needs no cancel: the server is done with it.)
                if service._transport.dialect.dynamic_flags.get("sample_cancel_enabled"):
                    task = asyncio.get_running_loop().create_task(
                        service._poller.cancel(request_id))
                    _cancels.add(task)  # the loop keeps only a weak reference
                    task.add_done_callback(_cancels.discard)
                raise
            if sequence_ids:
                if len(sequence_ids) != len(result.sequences):
                    raise APIError(f"{len(sequence_ids)} sequence ids for "
                                   f"{len(result.sequences)} sequences from the server")
                for sequence, sequence_id in zip(result.sequences, sequence_ids, strict=True):
                    sequence.sequence_id = sequence_id
            return result
        raise AssertionError("unreachable")

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
        """Called with the queue state of each ``try_again`` answer to this client's samples.

        Logs a WARNING when sampling is paused (at most once a minute while it stays
        paused, and again whenever the state changes), as the official SDK does. Override
        it, or set it on the instance, to act on the state yourself.
        """
        changed = queue_state is not self._queue_state
        self._queue_state = queue_state
        if queue_state is QueueState.ACTIVE:
            if changed:
                log.info("sampling resumed for sampler %s", self.sampling_session_id)
            return
        now = time.monotonic()
        last = self._queue_state_logged_at
        if not changed and last is not None and now - last < _QUEUE_STATE_LOG_INTERVAL_S:
            return
        self._queue_state_logged_at = now
        reason = queue_state_reason or _PAUSE_REASONS.get(queue_state, "unknown")
        log.warning("Sampling is paused for sampler %s. Reason: %s",
                    self.sampling_session_id, reason)

    @property
    def queue_state(self) -> QueueState:
        """The last queue state the server reported for this client's samples."""
        return self._queue_state

    def get_telemetry(self) -> Telemetry:
        """This client family's local request counters (nothing is sent anywhere)."""
        return self._service.get_telemetry()

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


#: ServiceClients whose SamplingClients were pickled, by (base URL, session id)
_live_services: weakref.WeakValueDictionary[tuple[str, str], ServiceClient] = (
    weakref.WeakValueDictionary())


#: ServiceClients made to join a session in this process, by session and credential
_shadows: weakref.WeakValueDictionary[tuple[Any, ...], ServiceClient] = (
    weakref.WeakValueDictionary())


def _unpickle_sampling_client(state: dict[str, Any], api_key: str | None = None) -> SamplingClient:
    from .service import ServiceClient

    service = None if api_key is not None else _live_services.get(
        (state["base_url"], state["session_id"]))
    if service is None or service._closed:
        # Another process (or another key): join the session with this process's key. One
        # joining client per session and credential, however many copies are made (each
        # would otherwise bring a connection pool, and a JWT exchange, of its own).
        headers = state.get("default_headers") or {}
        key, command = credential_sources(api_key, state["base_url"], state["dialect"])
        shadow_key = (state["base_url"], state["session_id"], state["dialect"],
                      hashlib.sha256(f"{key}\0{command}".encode()).hexdigest(),
                      tuple(sorted(headers.items())))
        service = _shadows.get(shadow_key)
        if service is None or service._closed:
            service = _shadows[shadow_key] = ServiceClient._shadow(
                base_url=state["base_url"], dialect=state["dialect"],
                route_prefix=state["route_prefix"], flags=state["flags"],
                has_client_config=state["has_client_config"], session_id=state["session_id"],
                dynamic_flags=state.get("dynamic_flags"), default_headers=headers,
                api_key=api_key,
            )
    return SamplingClient(
        service, state["sampling_session_id"], base_model=state["base_model"],
        model_path=state["model_path"], record_stability_info=state["record_stability_info"],
        clone_id=random.randrange(1, _CLONE_BLOCK),
    )


class BackcompatSamplingClientFuture(ClientFuture[SamplingClient], SamplingClient):
    """The future of a call that makes a SamplingClient. It is also a SamplingClient (as
    in the official SDK): its client methods and attributes wait for the client and
    forward to it, with a one-time FutureWarning (call ``.result()`` or ``await`` it)."""

    __slots__ = ()


forward_client_methods(BackcompatSamplingClientFuture, SamplingClient)
