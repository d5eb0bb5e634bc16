"""ServiceClient: the entry point. It owns the connection pool, the session and its heartbeat.

Construction is cheap and makes no request; the handshake and ``create_session`` happen on
the first call that needs them. Close it with ``async with`` / ``with``, ``await
close_async()`` or ``close()``; one left open is closed at interpreter exit.
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

from . import _argcheck, _sync
from . import custom_loss as _custom_loss
from . import types as t
from ._api_future import APIFuture
from ._config import resolve_config
from ._configure import deferred_credentials
from ._dialect import make_dialect
from ._family import Family
from ._loops import Home
from ._sampling_target import SamplingStats
from ._session import FinishStatus, Session
from ._sync import homed
from ._transport import Transport
from .custom_loss import LossHandle, PerDatumLossFn
from .errors import (
    APIError,
    APIResponseValidationError,
    APIStatusError,
    InvalidRequestError,
    NotFoundError,
)
from .paths import parse_checkpoint_path, require_training_checkpoint
from .rest import RestClient
from .sampling import BackcompatSamplingClientFuture, SamplingClient, family_stats
from .telemetry import Telemetry
from .training import BackcompatTrainingClientFuture, TrainingClient
from .types import CustomLossInputRank, GetInfoResponse, GetServerCapabilitiesResponse
from .types._optim import ADAMW_DEFAULT, unless_adamw
from .types._paths import CONSOLE_BASE_URL

__all__ = ["ServiceClient", "family_of", "join_session"]

log = logging.getLogger("tinker_async")

#: how long leaving a ``with`` block waits for the session's finish request
_CLOSE_TIMEOUT_S = 10.0
#: the same, after Ctrl-C or at interpreter exit: the finish is a courtesy (the server
#: ends an unfinished session when its heartbeats stop), so a gone server must not hold
#: up the exit
_EXIT_CLOSE_TIMEOUT_S = 1.0


def _env_tags() -> list[str]:
    return [t.strip() for t in os.environ.get("TINKER_TAGS", "").split(",") if t.strip()]


def _refuses_create_via_load(exc: APIStatusError) -> bool:
    """A refusal of the one-call create-via-load form itself (the server wants a model_id
    or lacks the route), as opposed to a problem with the checkpoint."""
    if exc.status_code in (404, 405) and "checkpoint" not in str(exc).lower():
        return True
    return exc.status_code in (400, 422) and "model_id" in str(exc)


class ServiceClient:
    """Connects to a Tinker-compatible server; creates training, sampling and REST clients.

    Arguments are the official SDK's (``user_metadata``, ``project_id``, ``display_name``,
    ``base_url``, ``api_key``, ``default_headers_overrides``) plus: ``tags`` (else
    ``TINKER_TAGS``), ``dialect`` / ``route_prefix`` to force what the server speaks,
    ``max_retries`` / ``retry`` (a :class:`RetryPolicy`), ``heartbeat_interval`` (seconds,
    default 10), ``connection_limit``, and the time limits (seconds):

    - ``connect_timeout`` (5): to open a connection;
    - ``timeout`` (60): for the first byte of an answer, per attempt;
    - ``control_timeout`` (30): whole-call limit of calls that answer directly (handshake,
      REST, sessions), retries included;
    - ``call_timeout`` (None, no limit): whole-call limit of calls that queue work
      (sampling, training steps, checkpoints, model creation);
    - ``progress_timeout`` (120): such calls fail with :class:`APITimeoutError` when the
      server gives no answer of any kind for this long.

    A call still waiting after ``waiting_log_after`` (60) seconds logs a WARNING saying on
    what, and again each time its wait doubles.
    """

    def __init__(
        self,
        user_metadata: Mapping[str, str] | None = None,
        project_id: str | None = None,
        *,
        display_name: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        default_headers_overrides: Mapping[str, str] | None = None,
        tags: Sequence[str] | None = None,
        dialect: str | None = None,
        route_prefix: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        max_retries: int | None = None,
        heartbeat_interval: float | None = None,
        connection_limit: int | None = None,
        control_timeout: float | None = None,
        call_timeout: float | None = None,
        progress_timeout: float | None = None,
        waiting_log_after: float | None = None,
        **kwargs: Any,
    ) -> None:
        retry = kwargs.pop("retry", None)
        polling = kwargs.pop("polling", None)
        if kwargs:
            warnings.warn(
                f"ServiceClient ignores unknown arguments: {', '.join(sorted(kwargs))}",
                FutureWarning,
                stacklevel=2,
            )
        config = resolve_config(
            base_url=base_url,
            api_key=api_key,
            project_id=project_id,
            dialect=dialect,
            route_prefix=route_prefix,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            retry=retry,
            heartbeat_interval=heartbeat_interval,
            connection_limit=connection_limit,
            control_timeout=control_timeout,
            call_timeout=call_timeout,
            progress_timeout=progress_timeout,
            waiting_log_after=waiting_log_after,
            polling=polling,
            default_headers=dict(default_headers_overrides or {}),
        )
        self._home = home = Home()
        transport = Transport(config, make_dialect(config.dialect, config.route_prefix), home)
        session = Session(
            transport,
            tags=list(tags) if tags is not None else _env_tags(),
            user_metadata=user_metadata,
            project_id=config.project_id,
            display_name=display_name,
        )
        self._family = Family(self, home, transport, session)
        _sync.register_for_exit(self)

    def __repr__(self) -> str:
        state = "closed" if self._family.closed else f"session={self._family.session.id!r}"
        return f"ServiceClient(base_url={self._family.transport.config.base_url!r}, {state})"

    def __reduce__(self) -> Any:
        raise TypeError(
            "A ServiceClient cannot be pickled (it owns a connection pool and a session); "
            "pickle a SamplingClient, or make a new ServiceClient in the other process"
        )

    # -- state ---------------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The server session id, once the session exists."""
        return self._family.session.id

    @property
    def dialect(self) -> str:
        """What the server speaks ("official", "legacy", "twinkle", ...), after the handshake."""
        return self._family.transport.dialect.name

    # -- calls --------------------------------------------------------------------------

    @homed
    async def connect_async(self) -> str:
        """Handshake and create the server session now (else the first call does); its id."""
        return await self._family.ensure_session()

    @homed
    async def get_server_capabilities_async(self) -> GetServerCapabilitiesResponse:
        """The models the server supports."""
        self._family.check_open()  # like every ServiceClient call: refused once the session is gone
        return await self.create_rest_client().get_server_capabilities_async()

    async def _training_client(self, model_id: str, first_seq: int = 1) -> TrainingClient:
        resp = await self._family.transport.request(
            "POST", "get_info", json=t.GetInfoRequest(model_id=model_id))
        return TrainingClient(self._family, model_id, resp.decode(GetInfoResponse), first_seq=first_seq)

    @homed
    async def create_lora_training_client_async(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: Mapping[str, str] | None = None,
        optimizer: Any = None,
    ) -> TrainingClient:
        """Create a LoRA training run on ``base_model`` and return its TrainingClient."""
        if not isinstance(base_model, str) or not base_model:
            raise InvalidRequestError("base_model must be a model name (see get_server_capabilities)")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise InvalidRequestError(f"rank must be an int >= 1, got {rank!r}")
        if not (train_mlp or train_attn or train_unembed):
            raise InvalidRequestError("at least one of train_mlp, train_attn, train_unembed must be True")
        session_id = await self._family.ensure_session()
        body = t.CreateModelRequest(
            session_id=session_id,
            model_seq_id=self._family.next_model_seq(),
            base_model=base_model,
            user_metadata=dict(user_metadata) if user_metadata else None,
            lora_config=t.LoraConfig(rank=rank, seed=seed, train_unembed=train_unembed,
                                     train_mlp=train_mlp, train_attn=train_attn),
            optimizer_config=ADAMW_DEFAULT if optimizer is None else optimizer,
        )
        resp = await self._family.transport.request("POST", "create_model", json=body)
        result = await self._family.poll_json(resp.json(), "CreateModel")
        model_id = result.get("model_id") if isinstance(result, dict) else None
        if not isinstance(model_id, str):
            raise APIError(f"create_model finished without a model_id: {result!r}")
        return await self._training_client(model_id)

    async def _from_state(
        self, path: str, base_model: str | None, user_metadata: Mapping[str, str] | None,
        weights_access_token: str | None, optimizer: bool, optimizer_config: Any = None,
    ) -> TrainingClient:
        parsed = require_training_checkpoint(path, "create_training_client_from_state")
        session_id = await self._family.ensure_session()
        if self._family.transport.dialect.create_via_load:
            try:
                return await self._create_via_load(
                    session_id, path, base_model, user_metadata, weights_access_token,
                    optimizer, optimizer_config)
            except APIStatusError as exc:
                if not _refuses_create_via_load(exc):
                    raise
                # A refusal applies nothing: from now on this session uses the two-step form.
                log.debug("the server refused create-via-load (%s); using create_model + "
                          "load_weights", exc)
                self._family.transport.dialect.create_via_load = False
        # Servers without create-via-load: create a model like the checkpoint's, then load
        # the checkpoint as its first operation (the only place some servers allow it).
        rest = self.create_rest_client()
        lora: dict[str, Any] = {}
        try:
            weights = await rest.get_weights_info_async(path)
            found_base, rank = weights.base_model, weights.lora_rank
            lora = {k: v for k in ("train_mlp", "train_attn", "train_unembed")
                    if (v := getattr(weights, k)) is not None}
        except APIError as exc:
            log.debug("weights_info failed (%s); asking for the training run instead", exc)
            run = await rest.get_training_run_async(parsed.training_run_id)
            found_base, rank = run.base_model, run.lora_rank
        client = await self.create_lora_training_client_async(
            base_model or found_base, rank=rank or 32, user_metadata=user_metadata,
            optimizer=optimizer_config, **lora)
        loader = client.load_state_with_optimizer_async if optimizer else client.load_state_async
        await (await loader(path, weights_access_token))
        return client

    async def _create_via_load(
        self, session_id: str, path: str, base_model: str | None,
        user_metadata: Mapping[str, str] | None, weights_access_token: str | None,
        optimizer: bool, optimizer_config: Any,
    ) -> TrainingClient:
        """The one-call form: ``load_weights`` with ``session_id`` + ``model_seq_id``."""
        # The server reads the base model and LoRA settings from the checkpoint itself
        # (also one under another account, with weights_access_token): no lookup here.
        seq = self._family.next_model_seq()
        body = t.LoadWeightsRequest(
            session_id=session_id, model_seq_id=seq, path=path, optimizer=optimizer,
            base_model=base_model,
            user_metadata=dict(user_metadata) if user_metadata else None,
            weights_access_token=weights_access_token or None,
            optimizer_config=unless_adamw(optimizer_config),
        )
        try:
            promise = (await self._family.transport.request("POST", "load_weights", json=body)).json()
        except APIStatusError:
            self._family.give_back_model_seq(seq)  # refused: nothing was applied
            raise
        result = await self._family.poll_json(promise, "LoadWeights")
        model_id = result.get("model_id") if isinstance(result, dict) else None
        if not isinstance(model_id, str):  # the id the server derives (reference 2.4)
            model_id = f"{session_id}:train:{seq}"
        return await self._training_client(model_id, first_seq=1)

    @homed
    async def create_training_client_from_state_async(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: Mapping[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: Any = None,
    ) -> TrainingClient:
        """A new training run starting from the weights of a training checkpoint."""
        return await self._from_state(path, base_model, user_metadata, weights_access_token, False,
                                      optimizer)

    @homed
    async def create_training_client_from_state_with_optimizer_async(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: Mapping[str, str] | None = None,
        weights_access_token: str | None = None,
    ) -> TrainingClient:
        """Like create_training_client_from_state, also restoring the optimizer state."""
        return await self._from_state(path, base_model, user_metadata, weights_access_token, True)

    @homed
    async def create_sampling_client_async(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
        *,
        max_concurrency: int | None = None,
    ) -> SamplingClient:
        """A SamplingClient on saved sampler weights (``model_path``) or a ``base_model``.

        ``max_concurrency`` fixes how many of its samples may be on the server at once
        (for users who know their quota); by default the limit adapts to what the server
        says (429s, queue states, latency). Calls beyond the limit wait in the client, in
        order; see ``SamplingClient.stats()``."""
        if max_concurrency is not None and (
                isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
                or max_concurrency < 1):
            raise InvalidRequestError(
                f"max_concurrency must be a whole number of at least 1 (or None for an "
                f"adaptive limit), not {max_concurrency!r}")
        if model_path is None and base_model is None:
            raise InvalidRequestError("give model_path (tinker://...) or base_model")
        if model_path is not None:
            parse_checkpoint_path(model_path)
        session_id = await self._family.ensure_session()
        body = t.CreateSamplingSessionRequest(
            session_id=session_id,
            sampling_session_seq_id=self._family.next_sampling_session_seq(),
            base_model=base_model, model_path=model_path,
        )
        dialect = self._family.transport.dialect
        try:
            resp = await self._family.transport.request("POST", dialect.sampling_session_route, json=body)
        except NotFoundError as exc:
            if dialect.sampling_session_route != "create_sampling_session":
                raise
            # tinkercloud-style servers name the route create_sampling_client (same body).
            resp = await self._family.transport.request("POST", "create_sampling_client", json=body)
            log.debug("no create_sampling_session (%s); using create_sampling_client", exc)
            dialect.sampling_session_route = "create_sampling_client"
        data = resp.json()
        sampling_session_id = await self._sampling_session_id(data)
        if base_model is None:
            sampler = await self.create_rest_client().get_sampler_async(sampling_session_id)
            base_model = sampler.base_model
        return SamplingClient(self._family, sampling_session_id, base_model=base_model,
                              model_path=model_path, record_stability_info=record_stability_info,
                              max_concurrency=max_concurrency)

    @homed
    async def create_custom_loss_async(
        self, fn: PerDatumLossFn, input_ranks: Mapping[str, CustomLossInputRank]
    ) -> LossHandle:
        """Create a custom loss for ``TrainingClient.forward_backward_custom`` (alpha; needs torch).

        ``fn(logprobs, *inputs) -> (loss, metrics)`` runs once per datum and the losses are
        summed. It takes the datum's target ``logprobs`` first, then one tensor per
        ``loss_fn_inputs`` key it reads; it returns a scalar tensor and a dict of scalar
        tensors keyed ``custom/<name>:sum`` or ``custom/<name>:mean``. ``input_ranks``
        gives each parameter's rank (0 scalar, 1 ``[T]``, 2 ``[T, K]``; ``logprobs`` has
        the rank of ``target_tokens``). ``fn`` is traced with ``torch.fx`` and must use
        only torch, math and operators: no branching on tensor values, no ``torch.nn``
        modules, no captured tensors, no ``.item()``. A server with
        ``custom_loss_server_side`` stores it and runs it in one ``forward_backward``;
        elsewhere it runs client-side. Each loss is created once per session, and its
        handle works only with clients of this session.
        """
        return await _custom_loss.create_custom_loss(self._family, _custom_loss.trace_loss(fn, input_ranks))

    def create_custom_loss(
        self, fn: PerDatumLossFn, input_ranks: Mapping[str, CustomLossInputRank]
    ) -> APIFuture[LossHandle]:
        """Create a custom loss for ``TrainingClient.forward_backward_custom`` (alpha; needs torch).

        Sync form of :meth:`create_custom_loss_async`. As in the official SDK, ``fn`` is
        traced and checked here, at the call (a bad ``fn`` raises at once); the upload runs
        in the returned APIFuture.
        """
        self._family.check_open()
        loss = _custom_loss.trace_loss(fn, input_ranks)
        return _sync.call(self, self._create_traced_loss_async(loss))

    @homed
    async def _create_traced_loss_async(self, loss: LossHandle) -> LossHandle:
        return await _custom_loss.create_custom_loss(self._family, loss)

    async def _sampling_session_id(self, answer: Any) -> str:
        """The id in a create_sampling_session answer: given at once, or (hatchery-core) as
        the result of a future to poll."""
        found = answer.get("sampling_session_id") if isinstance(answer, dict) else None
        if found is None and isinstance(answer, dict) and isinstance(answer.get("request_id"), str):
            result = await self._family.poll_json(answer, "CreateSamplingSession")
            found = next((v for v in (
                result.get("sampling_session_id") if isinstance(result, dict) else None,
                result.get("model_id") if isinstance(result, dict) else None,
                answer.get("model_id"),
            ) if isinstance(v, str)), None)
        if not isinstance(found, str):
            raise APIResponseValidationError(
                f"create_sampling_session answered without a sampling_session_id: {answer!r}")
        return found

    @homed
    async def copy_weights_async(
        self, path: str, *, ttl_seconds: int | None = None, weights_access_token: str | None = None
    ) -> str:
        """Copy a checkpoint into this client's project (``project_id``); the new path."""
        return await self.create_rest_client().copy_weights_async(
            path, self._family.transport.config.project_id, ttl_seconds=ttl_seconds,
            weights_access_token=weights_access_token)

    def get_telemetry(self) -> Telemetry:
        """This client family's local event log (the official surface; nothing is sent)."""
        return self._family.telemetry

    def stats(self) -> SamplingStats:
        """The sampling stats of every sampler of this client in this process, added up:
        in flight, queued, limits, 429s, retries, timeouts, latency percentiles and mean
        queue wait (see ``SamplingClient.stats()`` for one sampler's)."""
        return family_stats(self._family)

    def get_console_url(self) -> str:
        """The Tinker console page of this session (once the session exists)."""
        return f"{CONSOLE_BASE_URL}/sessions/{quote(self._family.session.id or '', safe='')}"

    def create_rest_client(self) -> RestClient:
        """A RestClient sharing this client's connection pool (it needs no session, so it
        works after the session is gone)."""
        self._family.check_not_closed()
        return RestClient(self._family)

    @homed
    async def close_async(self, status: FinishStatus = "success", detail: str | None = None) -> None:
        """Finish the server session, stop the heartbeat and close the pool. Idempotent."""
        if self._family.closed:
            return
        self._family.closed = True
        self._family.transport.closing = True
        _sync.unregister_for_exit(self)
        try:
            await self._family.session.close(status, detail)
        finally:
            await self._family.transport.aclose()

    # --- BEGIN GENERATED SYNC FORMS (scripts/gen_sync.py; do not edit) ---
    def connect(self) -> APIFuture[str]:
        """Handshake and create the server session now (else the first call does); its id.

        Sync form of :meth:`connect_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.connect_async, locals())
        return _sync.call(self, self.connect_async())

    def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        """The models the server supports.

        Sync form of :meth:`get_server_capabilities_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.get_server_capabilities_async, locals())
        return _sync.call(self, self.get_server_capabilities_async()).result()

    def create_lora_training_client(self, base_model: str, rank: int=32, seed: int | None=None, train_mlp: bool=True, train_attn: bool=True, train_unembed: bool=True, user_metadata: Mapping[str, str] | None=None, optimizer: Any=None) -> BackcompatTrainingClientFuture:
        """Create a LoRA training run on ``base_model`` and return its TrainingClient.

        Sync form of :meth:`create_lora_training_client_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.create_lora_training_client_async, locals())
        return _sync.call_client(self, self.create_lora_training_client_async(base_model, rank, seed, train_mlp, train_attn, train_unembed, user_metadata, optimizer), BackcompatTrainingClientFuture)

    def create_training_client_from_state(self, path: str, base_model: str | None=None, user_metadata: Mapping[str, str] | None=None, weights_access_token: str | None=None, optimizer: Any=None) -> BackcompatTrainingClientFuture:
        """A new training run starting from the weights of a training checkpoint.

        Sync form of :meth:`create_training_client_from_state_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.create_training_client_from_state_async, locals())
        return _sync.call_client(self, self.create_training_client_from_state_async(path, base_model, user_metadata, weights_access_token, optimizer), BackcompatTrainingClientFuture)

    def create_training_client_from_state_with_optimizer(self, path: str, base_model: str | None=None, user_metadata: Mapping[str, str] | None=None, weights_access_token: str | None=None) -> BackcompatTrainingClientFuture:
        """Like create_training_client_from_state, also restoring the optimizer state.

        Sync form of :meth:`create_training_client_from_state_with_optimizer_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.create_training_client_from_state_with_optimizer_async, locals())
        return _sync.call_client(self, self.create_training_client_from_state_with_optimizer_async(path, base_model, user_metadata, weights_access_token), BackcompatTrainingClientFuture)

    def create_sampling_client(self, model_path: str | None=None, base_model: str | None=None, retry_config: Any=None, record_stability_info: bool=False, *, max_concurrency: int | None=None) -> BackcompatSamplingClientFuture:
        """A SamplingClient on saved sampler weights (``model_path``) or a ``base_model``.

        Sync form of :meth:`create_sampling_client_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.create_sampling_client_async, locals())
        return _sync.call_client(self, self.create_sampling_client_async(model_path, base_model, retry_config, record_stability_info, max_concurrency=max_concurrency), BackcompatSamplingClientFuture)

    def copy_weights(self, path: str, *, ttl_seconds: int | None=None, weights_access_token: str | None=None) -> APIFuture[str]:
        """Copy a checkpoint into this client's project (``project_id``); the new path.

        Sync form of :meth:`copy_weights_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.copy_weights_async, locals())
        return _sync.call(self, self.copy_weights_async(path, ttl_seconds=ttl_seconds, weights_access_token=weights_access_token))

    def close(self, status: FinishStatus='success', detail: str | None=None) -> APIFuture[None]:
        """Finish the server session, stop the heartbeat and close the pool. Idempotent.

        Sync form of :meth:`close_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.close_async, locals())
        return _sync.call(self, self.close_async(status, detail))
    # --- END GENERATED SYNC FORMS ---

    # -- context managers and exit ------------------------------------------------------

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        await self.close_async(_finish_status(exc_type))

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._home.loop is None:  # never used: nothing on the server to finish
            self._family.closed = True
            _sync.unregister_for_exit(self)
            return
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        closing = self.close(_finish_status(exc_type))
        try:
            closing._result(_EXIT_CLOSE_TIMEOUT_S if interrupted else _CLOSE_TIMEOUT_S, warn=False)
        except TimeoutError:
            log.info("the server did not answer the session's finish request in time")

    def _close_at_exit(self) -> None:
        """Called by atexit for a client still open: finish the session, quietly."""
        if self._family.closed or self._home.loop is None:
            return
        try:
            self.close("interrupted", "process exited without closing the client").result(
                _EXIT_CLOSE_TIMEOUT_S
            )
        except Exception as exc:
            log.debug("close at exit failed: %r", exc)


def _finish_status(exc_type: type[BaseException] | None) -> FinishStatus:
    if exc_type is None:
        return "success"
    return "errored" if issubclass(exc_type, Exception) else "interrupted"


def join_session(
    *,
    base_url: str,
    dialect: str,
    route_prefix: str,
    flags: dict[str, Any],
    has_client_config: bool,
    session_id: str | None,
    dynamic_flags: Mapping[str, Any] | None = None,
    default_headers: Mapping[str, str] | None = None,
    api_key: str | None = None,
) -> Family:
    """The family of a new ServiceClient that joins an existing server session (for
    unpickled SamplingClients and sampler handles): the server's flags come with it, so it
    skips the handshake, and it never finishes the session it joined."""
    with deferred_credentials():  # a key given later in this process serves it too
        client = ServiceClient(base_url=base_url, dialect=dialect, route_prefix=route_prefix,
                               default_headers_overrides=default_headers, api_key=api_key)
    family = client._family
    family.transport.dialect.adopt(flags, has_client_config, dynamic_flags or {})
    family.session.join(session_id)
    return family


def family_of(client: ServiceClient) -> Family:
    """The machinery ``client`` shares with the clients it makes (see ``_family``): for
    the library's clients, which are handed it at construction."""
    return client._family
