"""TrainingClient: forward/backward passes, optimizer steps and checkpoints of one model.

Queued operations (``forward``, ``forward_backward``, ``forward_backward_custom``,
``optim_step``, ``save_state``, ``load_state*``, ``save_weights_for_sampler``) return an
:class:`APIFuture` as soon as the server has accepted the request, so the next step can
be submitted before the last one's result is read::

    fb = await tc.forward_backward_async(batch, "cross_entropy")
    opt = await tc.optim_step_async(AdamParams(learning_rate=1e-4))
    loss = (await fb).metrics["loss:sum"]; await opt

Ordering: each call takes its place in line when it is made and submits when its turn
comes; the seq id it sends is the next unused one at that moment, so a request that the
server refuses leaves no gap in the sequence (strict servers punish gaps with ``409`` on
every later call). A batch that fails local validation takes no place at all. A call
cancelled while it waits for its turn gives its place up; one cancelled once its request
may be on the wire still finishes the submit (so the next call cannot reuse its seq id and
be answered with this one's future). Only a multi-chunk batch that the server accepted in
part leaves the sequence unknown: the client then refuses further calls, clearly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import numbers
import os
import threading
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

import msgspec
import numpy as np

from . import _argcheck, _chunking, _proto, _requests, _sync
from . import types as t
from ._api_future import APIFuture, ClientFuture, forward_client_methods
from ._family import Family
from ._loops import in_guest_run, running_loop
from ._sync import homed
from ._transport import PROTOBUF, Response, Transport, new_idempotency_key
from ._validate import check_checkpoint_name, check_forward_backward, check_optim_params
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    ClientClosedError,
    InvalidRequestError,
    NotFoundError,
    TinkerError,
)
from .paths import require_training_checkpoint
from .sampling import BackcompatSamplingClientFuture
from .telemetry import Telemetry
from .types import _wire
from .types._paths import CONSOLE_BASE_URL

if TYPE_CHECKING:
    from .custom_loss import LossHandle
    from .sampling import SamplingClient

__all__ = ["BackcompatTrainingClientFuture", "TrainingClient"]

log = logging.getLogger("tinker_async")

T = TypeVar("T")

CustomLossFn = Callable[[list[t.Datum], list[Any]], tuple[Any, ...]]


#: forward_backward bodies estimated at least this big are encoded on a worker thread
_ENCODE_OFF_LOOP_BYTES = 1 << 20


class _Sequencer:
    """Keeps one model's submissions in call order and its wire seq ids gap-free."""

    def __init__(self, first_seq: int, check_open: Callable[[], None] = lambda: None) -> None:
        #: raises if the client or its server session is gone: nothing is sent then
        self._check_open = check_open
        self._lock = threading.Lock()
        self._next_ticket = 0
        self._turn = 0
        self._waiters: dict[int, asyncio.Future[None]] = {}
        #: places given up before their turn came (a call cancelled while it waited)
        self._skipped: set[int] = set()
        #: places taken by guest runs (``_loops``), which run on the background loop
        self._guest_tickets: set[int] = set()
        self.next_seq = first_seq
        self.broken: BaseException | None = None
        self._pid = os.getpid()

    def tickets(self, count: int = 1) -> range:
        """Places in line, taken synchronously when a call is made."""
        self._check_open()
        if self._pid != os.getpid():
            # Parent and child would both number requests from the same counter, and the
            # server would take the child's steps as duplicates of the parent's.
            raise TinkerError(
                "A TrainingClient cannot be used in a forked child process: it shares its "
                "request sequence with the parent. Train in one process; pickle a "
                "SamplingClient to sample from others."
            )
        if isinstance(self.broken, ClientClosedError):
            raise self.broken  # closed on purpose (its model deleted): nothing to explain
        if self.broken is not None:
            raise TinkerError(
                "This TrainingClient can no longer submit: an earlier request may or may not "
                f"have been applied by the server ({self.broken}), so its sequence is unknown. "
                "Make a new training client from the last checkpoint."
            ) from self.broken
        with self._lock:
            start = self._next_ticket
            self._next_ticket += count
        if in_guest_run():
            self._guest_tickets.update(range(start, start + count))
        return range(start, start + count)

    async def wait_turn(self, ticket: int) -> None:
        if self._turn < ticket and ticket in self._guest_tickets:
            self._check_guest_can_wait(ticket)
        if self._turn < ticket:
            fut = asyncio.get_running_loop().create_future()
            self._waiters[ticket] = fut
            try:
                await fut
            except asyncio.CancelledError:
                # A place in line that is never used would stop every later call.
                self.skip(ticket)
                raise
        if self.broken is not None:
            raise TinkerError("This TrainingClient is broken; see the earlier error") from self.broken

    def _check_guest_can_wait(self, ticket: int) -> None:
        """A guest run can wait only for other guest runs: an earlier call that started on
        the home loop cannot finish while that loop is blocked in ``.result()``."""
        earlier = range(self._turn, ticket)
        if any(t not in self._guest_tickets and t not in self._skipped for t in earlier):
            raise RuntimeError(
                "result() was called on the thread of the event loop that runs this "
                "TrainingClient's earlier calls, which must finish first and cannot while "
                "result() blocks that loop. Use `await future` here instead."
            )

    def advance(self, to_ticket: int) -> None:
        """Let the call holding ``to_ticket`` go next."""
        self._guest_tickets.discard(to_ticket)
        while to_ticket in self._skipped:
            self._skipped.discard(to_ticket)
            to_ticket += 1
        self._turn = to_ticket
        fut = self._waiters.pop(to_ticket, None)
        if fut is not None:
            _wake(fut)

    def skip(self, ticket: int) -> None:
        """Give up ``ticket`` without submitting anything (no seq id is used)."""
        self._waiters.pop(ticket, None)
        if self._turn == ticket:
            self.advance(ticket + 1)
        elif self._turn < ticket:
            self._skipped.add(ticket)

    def reset_loop_state(self) -> None:
        """The home loop moved: waiters of the old loop will never be woken there."""
        stale, self._waiters = list(self._waiters), {}
        for ticket in stale:
            self.skip(ticket)

    def settle_failure(self, error: BaseException, *, partly_accepted: bool) -> None:
        """Account for a submit that failed after it may have reached the server.

        A refusal (an HTTP error status) applied nothing: the seq id is simply reused. But
        after a partial acceptance, or a connection that broke with the request on the
        wire, the server may hold the work: reusing the seq id would make the next call
        alias this one (the server would answer it with this call's future), and skipping
        it could leave a gap. Neither is safe, so the client stops with a clear error.
        """
        if partly_accepted or isinstance(error, (APIConnectionError, APIResponseValidationError)):
            self.break_with(error)

    def break_with(self, error: BaseException) -> None:
        self.broken = error
        for fut in self._waiters.values():
            _wake(fut)
        self._waiters.clear()

    @contextlib.contextmanager
    def given_up_on_error(self, ticket: int) -> Iterator[None]:
        """Give ``ticket`` up if the block fails: a place in line must be used or given up,
        or every later call waits forever."""
        try:
            yield
        except BaseException:
            self.skip(ticket)
            raise

    @contextlib.asynccontextmanager
    async def turn(self, tickets: range) -> AsyncIterator[_Turn]:
        """The submit of a call whose turn came (:meth:`wait_turn`): yields the seq ids to
        use; on the way out records how many were used, or settles a failure, and lets
        the next call go either way."""
        turn = _Turn(self.next_seq)
        try:
            yield turn
            self.next_seq = turn.seq + turn.used
        except BaseException as exc:
            self.settle_failure(exc, partly_accepted=turn.accepted > 0)
            raise
        finally:
            self.advance(tickets[-1] + 1)


class _Turn:
    """One call's use of the seq ids: ``seq`` is its first; it counts the requests the
    server accepted (``accepted``) and the seq ids it took (``used``)."""

    __slots__ = ("accepted", "seq", "used")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.accepted = 0
        self.used = 0


def _wake(fut: asyncio.Future[None]) -> None:
    """Let a waiter go, from whichever thread: a guest run (``_loops``) on the background
    loop may advance the line for a waiter on the home loop, and futures are loop-bound."""
    loop = fut.get_loop()
    if loop is running_loop():
        if not fut.done():
            fut.set_result(None)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_set_if_pending, fut)


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run a submit to its end even if the caller is cancelled meanwhile.

    Once a request may have reached the server, its seq id must be accounted for: a
    cancelled caller that left the outcome unknown would make the next call reuse the
    seq id, and the server would answer that call with this one's future.
    """
    task = asyncio.ensure_future(coro)
    task.add_done_callback(_retrieve_exception)
    return await asyncio.shield(task)


def _retrieve_exception(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _checked_ttl(ttl_seconds: int | None) -> int | None:
    """``ttl_seconds`` of a save, refused here unless None or a positive whole number."""
    if ttl_seconds is not None and (
            isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, numbers.Integral)
            or ttl_seconds <= 0):
        raise InvalidRequestError(f"ttl_seconds must be a positive int, got {ttl_seconds!r}")
    return ttl_seconds


class _FwdBwdBatch:
    """One forward(_backward) call's chunks, encoded for the wire the server speaks, and
    how to send them and gather their results."""

    def __init__(self, client: TrainingClient, chunks: list[_chunking.DatumChunk],
                 bodies: list[_proto.ForwardBackwardBody], loss_fn: str,
                 loss_fn_config: Mapping[str, float | str] | None, forward_only: bool) -> None:
        self.client = client
        self.family = client._family
        self.dialect = self.family.transport.dialect
        self.chunks = chunks
        self.bodies = bodies
        self.loss_fn = loss_fn
        self.loss_fn_config = loss_fn_config
        self.forward_only = forward_only
        self.use_proto = self.dialect.protobuf
        self.compress = bool(self.dialect.flag("proto_compress_fwdbwd")) and self.use_proto
        self.request_type = "Forward" if forward_only else "ForwardBackward"

    @classmethod
    async def prepare(
        cls, client: TrainingClient, data: list[t.Datum], loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None, forward_only: bool,
    ) -> _FwdBwdBatch:
        """Split ``data`` into the server's chunks and encode them (the seq ids are written
        in at submit, when the turn comes)."""
        dialect = client._family.transport.dialect
        chunks = _chunking.split_datums(
            data, int(dialect.flag("fwdbwd_max_chunk_len")),
            int(dialect.flag("fwdbwd_max_chunk_bytes_count")))

        def encode() -> list[_proto.ForwardBackwardBody]:
            return [_proto.ForwardBackwardBody(
                client.model_id, chunk.data, loss_fn, loss_fn_config, forward_only)
                for chunk in chunks]

        if not dialect.protobuf:
            bodies = []
        elif sum(chunk.estimated_bytes for chunk in chunks) >= _ENCODE_OFF_LOOP_BYTES:
            # Tens of ms for a big batch: done on a worker thread, so that the caller's
            # loop (sampling, heartbeats) keeps running.
            bodies = await asyncio.to_thread(encode)
        else:
            bodies = encode()
        return cls(client, chunks, bodies, loss_fn, loss_fn_config, forward_only)

    async def send_all(self, turn: _Turn) -> list[str]:
        """Send every chunk with its seq id (``turn.seq`` onwards), in the server's order;
        returns their request ids."""
        chunks = range(len(self.chunks))
        if len(self.chunks) > 1 and self.dialect.flag("parallel_fwdbwd_chunks"):
            # Like the official SDK: the rest first, concurrently, then the first chunk,
            # so that the server (which waits for the first seq) takes the batch at once.
            # Every send is let finish, so ``turn.accepted`` is complete.
            rest = await asyncio.gather(*(self._send(i, turn) for i in chunks[1:]),
                                        return_exceptions=True)
            for outcome in rest:
                if isinstance(outcome, BaseException):
                    raise outcome
            request_ids = [await self._send(0, turn),
                           *(r for r in rest if isinstance(r, str))]
        else:
            request_ids = [await self._send(i, turn) for i in chunks]
        turn.used = len(self.chunks)
        return request_ids

    async def _send(self, i: int, turn: _Turn) -> str:
        transport = self.family.transport
        seq = turn.seq + i
        if self.use_proto:
            payload: bytes | memoryview = self.bodies[i].payload(seq)
            headers = {}
            if self.compress:
                payload = await asyncio.to_thread(_proto.compress, payload)
                headers["Content-Encoding"] = "zstd"
            request_id = await _admitted(transport, "forward_backward", body=payload,
                                         content_type=PROTOBUF, headers=headers)
        else:
            request_id = await self._send_json(i, seq)
        turn.accepted += 1
        return request_id

    def _request(self, i: int, seq: int) -> t.ForwardBackwardRequest | t.ForwardRequest:
        """Chunk ``i`` as its request, with seq id ``seq``."""
        chunk = t.ForwardBackwardInput(data=self.chunks[i].data, loss_fn=self.loss_fn,  # type: ignore[arg-type]
                                       loss_fn_config=self.loss_fn_config)
        if self.forward_only:
            return t.ForwardRequest(forward_input=chunk, model_id=self.client.model_id, seq_id=seq)
        return t.ForwardBackwardRequest(forward_backward_input=chunk,
                                        model_id=self.client.model_id, seq_id=seq)

    async def _send_json(self, i: int, seq: int) -> str:
        transport = self.family.transport
        dialect = self.dialect
        endpoint = ("forward" if self.forward_only and dialect.separate_forward
                    else "forward_backward")
        request = self._request(i, seq)
        try:
            return await _admitted(transport, endpoint, json=_requests.forward_backward_json_body(
                request, dialect, endpoint))
        except NotFoundError:
            if endpoint != "forward":
                raise
        # No /forward here (nothing was applied): forward_backward can run a forward pass
        # alone; remember that once it worked.
        request_id = await _admitted(transport, "forward_backward",
                                     json=_requests.forward_backward_json_body(
                                         request, dialect, "forward_backward"))
        dialect.lacks("separate_forward", "HTTP 404 at /forward")
        return request_id

    async def results(self, request_ids: list[str], submitted: float
                      ) -> t.ForwardBackwardOutput:
        """Wait for every chunk's result and combine them."""
        results = await asyncio.gather(*(
            self.family.poller.result(request_id, self.request_type, _decode_fb,
                                        protobuf=self.use_proto, submitted_at=submitted)
            for request_id in request_ids))
        if len(results) == 1:
            return results[0]
        return _chunking.combine_forward_backward_outputs(results)


def _decode_fb(resp: Response) -> t.ForwardBackwardOutput:
    if resp.is_protobuf:
        return _proto.decode_forward_backward_output(resp.body)
    return _wire.decode_forward_backward_output_json(resp.body)


class TrainingClient:
    """Trains one LoRA model. Made by :class:`ServiceClient`; not constructed directly."""

    def __init__(
        self, family: Family, model_id: str, info: t.GetInfoResponse, *, first_seq: int = 1
    ) -> None:
        self._family = family
        self._home = family.home
        self.model_id = model_id
        self._info = info
        self._seq = _Sequencer(first_seq, family.check_open)
        self._home.on_move(self._seq.reset_loop_state)

    def __repr__(self) -> str:
        return f"TrainingClient(model_id={self.model_id!r})"

    def __reduce__(self) -> Any:
        raise TypeError("A TrainingClient cannot be pickled; pickle a SamplingClient instead")

    # -- local getters -------------------------------------------------------------------

    def get_info(self) -> t.GetInfoResponse:
        """Model name, LoRA rank and tokenizer id (fetched once, at creation)."""
        return self._info

    def get_telemetry(self) -> Telemetry:
        """This client family's local event log (the official surface; nothing is sent)."""
        return self._family.telemetry

    def get_tokenizer(self) -> Any:
        """The model's tokenizer (the embedded server's byte tokenizer needs no extras)."""
        from ._tokenizers import load_tokenizer

        return load_tokenizer(self._info)

    def get_console_url(self) -> str:
        """The Tinker console page of this training run."""
        return f"{CONSOLE_BASE_URL}/training_runs/{quote(self.model_id, safe='')}"

    def get_base_model(self) -> str:
        return self._info.model_data.model_name or self._info.model_name or ""

    @homed
    async def get_info_async(self) -> t.GetInfoResponse:
        """Like :meth:`get_info` (the official SDK's async twin; no request is made)."""
        return self._info

    @homed
    async def delete_model_async(self) -> None:
        """Free this model on the server (tinkercloud's ``delete_model``): its weights are
        gone, so save what you need first. Later calls of this client fail at once."""
        self._family.check_open()
        await self._family.transport.request(
            "POST", "delete_model", json=t.DeleteModelRequest(model_id=self.model_id))
        self._seq.break_with(ClientClosedError(
            f"The model {self.model_id} was deleted (delete_model); make a new training "
            "client, e.g. from a checkpoint."))

    # -- submission machinery ------------------------------------------------------------

    async def _submit(
        self,
        ticket: int,
        endpoint: str,
        build: Callable[[int], msgspec.Struct],
        request_type: str,
        decode: Callable[[Response], Any],
    ) -> APIFuture[Any]:
        """Wait for ``ticket``'s turn, submit one JSON request, start polling its result."""

        async def send(turn: _Turn) -> str:
            request_id = await _admitted(self._family.transport, endpoint,
                                         json=build(turn.seq))
            turn.used = 1
            return request_id

        submitted = time.time()
        request_id = await self._at_turn(range(ticket, ticket + 1), send)
        return self._poll(request_id, request_type, decode, protobuf=False, submitted=submitted)

    async def _at_turn(self, tickets: range, send: Callable[[_Turn], Awaitable[T]]) -> T:
        """The sequencing protocol of every queued call: wait for ``tickets``' turn (a
        cancel while waiting gives the place up, nothing is sent), then ``send`` with the
        turn's seq ids, run to its end even if the caller is cancelled meanwhile, and let
        the next call go."""
        await self._seq.wait_turn(tickets[0])

        async def submit() -> T:
            async with self._seq.turn(tickets) as turn:
                return await send(turn)

        return await _shielded(submit())

    def _poll(
        self, request_id: str, request_type: str, decode: Callable[[Response], Any],
        *, protobuf: bool, submitted: float,
    ) -> APIFuture[Any]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._family.poller.result(
            request_id, request_type, decode, protobuf=protobuf, submitted_at=submitted))
        return APIFuture._from_task(task, loop)

    async def _run_forward_backward(
        self,
        data: list[t.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        forward_only: bool,
        tickets: range | None = None,
    ) -> APIFuture[t.ForwardBackwardOutput]:
        # The place in line is taken now, before any await: the call fixes the order.
        tickets = tickets if tickets is not None else self._seq.tickets(1)
        try:
            batch = await _FwdBwdBatch.prepare(self, data, loss_fn, loss_fn_config, forward_only)
        except BaseException:
            # Bad input (or a cancel) takes no place: later calls must not wait for it.
            for ticket in tickets:
                self._seq.skip(ticket)
            raise
        submitted = time.time()
        request_ids = await self._at_turn(tickets, batch.send_all)
        loop = asyncio.get_running_loop()
        return APIFuture._from_task(loop.create_task(batch.results(request_ids, submitted)), loop)

    # -- queued operations --------------------------------------------------------------

    @homed
    async def forward_async(
        self,
        data: Sequence[t.Datum],
        loss_fn: t.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[t.ForwardBackwardOutput]:
        """Compute the loss and per-token logprobs without gradients."""
        checked = check_forward_backward(data, loss_fn, loss_fn_config)
        return await self._run_forward_backward(checked, loss_fn, loss_fn_config, True)

    @homed
    async def forward_backward_async(
        self,
        data: Sequence[t.Datum],
        loss_fn: t.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[t.ForwardBackwardOutput]:
        """Compute the loss and accumulate its gradients (applied by :meth:`optim_step`).

        Batches over 1024 datums or about 5 MB are split into several requests and their
        results merged, as the official SDK does.
        """
        checked = check_forward_backward(data, loss_fn, loss_fn_config)
        return await self._run_forward_backward(checked, loss_fn, loss_fn_config, False)

    @homed
    async def forward_backward_custom_async(
        self, data: Sequence[t.Datum], loss_fn: CustomLossFn | LossHandle, *,
        loss_type_input: Literal["logprobs"] | None = None,
    ) -> APIFuture[t.ForwardBackwardOutput]:
        """Train on a loss computed here, from the model's per-token logprobs.

        ``loss_fn(data, logprobs)`` gets one logprob array per datum. With torch installed
        they are tensors that require grad and ``loss_fn`` returns ``(loss, metrics)``;
        otherwise they are numpy arrays and ``loss_fn`` returns ``(loss, metrics, grads)``
        with ``grads[i] = d loss / d logprobs[i]``. The server then trains on
        ``cross_entropy`` with ``weights = -grads``, which has the same gradient.
        ``loss_type_input`` is accepted for old code and ignored, as in the official SDK.

        ``loss_fn`` may also be a :class:`~tinker_async.custom_loss.LossHandle` from
        ``ServiceClient.create_custom_loss`` (of this client's session). One the server
        stores (it has a ``loss_id``) runs there in a single ``forward_backward`` with
        ``loss_fn="custom"``; otherwise it runs here per datum, in the two passes above.
        """
        from .custom_loss import LossHandle, as_loss_fn, check_handle_batch

        if isinstance(loss_fn, LossHandle):
            checked = check_handle_batch(loss_fn, data, self._family.session.id)
            if loss_fn.loss_id is not None:
                return await self._run_forward_backward(
                    checked, "custom", {"loss_id": loss_fn.loss_id}, False)
            loss_fn = as_loss_fn(loss_fn)
        else:
            checked = check_forward_backward(data, "cross_entropy", None)
        forward_data = [
            t.Datum(model_input=d.model_input, loss_fn_inputs={
                "target_tokens": d.loss_fn_inputs["target_tokens"],
                # Shaped like the targets: (T,), or (T, K) for a rank-2 logprobs loss.
                "weights": t.TensorData.from_numpy(np.zeros(
                    np.shape(d.loss_fn_inputs["target_tokens"].to_numpy()), dtype=np.float32)),
            }) for d in checked
        ]
        tickets = self._seq.tickets(2)
        with self._seq.given_up_on_error(tickets[1]):
            forward = await self._run_forward_backward(
                forward_data, "cross_entropy", None, True, tickets=range(tickets[0], tickets[0] + 1))
            logprobs = [out["logprobs"].to_numpy() for out in (await forward).loss_fn_outputs]
            try:
                loss_sum, metrics, grads = _custom_loss_gradients(loss_fn, checked, logprobs)
            except InvalidRequestError:
                raise
            except Exception as exc:
                raise InvalidRequestError(f"the custom loss failed: {exc!r}") from exc
            backward_data = [
                t.Datum(model_input=d.model_input, loss_fn_inputs={
                    "target_tokens": d.loss_fn_inputs["target_tokens"],
                    "weights": t.TensorData.from_numpy(-np.asarray(g, dtype=np.float32)),
                }) for d, g in zip(checked, grads, strict=True)
            ]
        backward = await self._run_forward_backward(
            backward_data, "cross_entropy", None, False, tickets=range(tickets[1], tickets[1] + 1))
        loop = asyncio.get_running_loop()

        async def merged() -> t.ForwardBackwardOutput:
            out = await backward
            metrics_out = dict(out.metrics)
            surrogate = metrics_out.pop("loss:sum", None)
            metrics_out.update({k: float(v) for k, v in metrics.items()})
            metrics_out["loss:sum"] = loss_sum
            if surrogate is not None:
                metrics_out["surrogate_loss:sum"] = surrogate
            return t.ForwardBackwardOutput(loss_fn_output_type=out.loss_fn_output_type,
                                           loss_fn_outputs=out.loss_fn_outputs, metrics=metrics_out)

        return APIFuture._from_task(loop.create_task(merged()), loop)

    @homed
    async def optim_step_async(
        self,
        optim_params: t.AdamParams | t.DimuonParams | None = None,
        *,
        adam_params: t.AdamParams | None = None,
    ) -> APIFuture[t.OptimStepResponse]:
        """Apply the accumulated gradients: AdamW with ``AdamParams`` (its defaults if
        omitted), or Dimuon with ``DimuonParams`` for a model created with
        ``optimizer=DimuonOptimizerConfig()``."""
        if optim_params is not None and adam_params is not None:
            raise InvalidRequestError("pass optim_params or adam_params, not both")
        params = check_optim_params(optim_params if optim_params is not None else adam_params)
        # AdamW goes in adam_params, other families in optimizer_params.
        request = (t.OptimStepRequest(model_id=self.model_id, optim_params=params)
                   if isinstance(params, t.AdamParams) else
                   t.OptimStepRequest(model_id=self.model_id, optimizer_params=params))
        ticket = self._seq.tickets(1)[0]
        return await self._submit(
            ticket, "optim_step", lambda seq: msgspec.structs.replace(request, seq_id=seq),
            "OptimStep", lambda r: r.decode(t.OptimStepResponse))

    @homed
    async def save_state_async(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: Mapping[str, Any] | None = None,
    ) -> APIFuture[t.SaveWeightsResponse]:
        """Save weights and optimizer state as ``tinker://<run>/weights/<name>``."""
        request = t.SaveWeightsRequest(
            model_id=self.model_id, path=check_checkpoint_name(name),
            ttl_seconds=_checked_ttl(ttl_seconds), overwrite=overwrite,
            user_metadata=dict(user_metadata) if user_metadata else None)
        ticket = self._seq.tickets(1)[0]
        return await self._submit(
            ticket, "save_weights", lambda seq: msgspec.structs.replace(request, seq_id=seq),
            "SaveWeights", lambda r: r.decode(t.SaveWeightsResponse))

    @homed
    async def save_weights_for_sampler_async(
        self, name: str, ttl_seconds: int | None = None, user_metadata: Mapping[str, Any] | None = None
    ) -> APIFuture[t.SaveWeightsForSamplerResponse]:
        """Save sampler weights as ``tinker://<run>/sampler_weights/<name>``."""
        request = t.SaveWeightsForSamplerRequest(
            model_id=self.model_id, path=check_checkpoint_name(name),
            ttl_seconds=_checked_ttl(ttl_seconds),
            user_metadata=dict(user_metadata) if user_metadata else None)
        ticket = self._seq.tickets(1)[0]
        return await self._submit(
            ticket, "save_weights_for_sampler",
            lambda seq: msgspec.structs.replace(request, seq_id=seq),
            "SaveWeightsForSampler", lambda r: r.decode(t.SaveWeightsForSamplerResponse))

    @homed
    async def save_weights_external_async(
        self, name: str, ttl_seconds: int | None = None,
        age_encryption_recipients: Sequence[str] | None = None,
    ) -> APIFuture[t.SaveWeightsExternalResponse]:
        """Export the weights in HF/PEFT format as ``tinker://<run>/external_weights/<name>``."""
        path = check_checkpoint_name(name)
        if age_encryption_recipients and len(age_encryption_recipients) > 10:
            raise InvalidRequestError("at most 10 age_encryption_recipients")
        request = t.SaveWeightsExternalRequest(
            model_id=self.model_id, path=path, ttl_seconds=_checked_ttl(ttl_seconds),
            age_encryption_recipients=list(age_encryption_recipients or ()) or None)
        ticket = self._seq.tickets(1)[0]
        return await self._submit(
            ticket, "save_weights_external",
            lambda seq: msgspec.structs.replace(request, seq_id=seq),
            "SaveWeightsExternal", lambda r: r.decode(t.SaveWeightsExternalResponse))

    async def _load(self, path: str, optimizer: bool, token: str | None) -> APIFuture[t.LoadWeightsResponse]:
        require_training_checkpoint(
            path, "load_state_with_optimizer" if optimizer else "load_state")
        request = t.LoadWeightsRequest(model_id=self.model_id, path=path, optimizer=optimizer,
                                       weights_access_token=token or None)
        ticket = self._seq.tickets(1)[0]
        return await self._submit(ticket, "load_weights",
                                  lambda seq: msgspec.structs.replace(request, seq_id=seq),
                                  "LoadWeights", lambda r: r.decode(t.LoadWeightsResponse))

    @homed
    async def load_state_async(
        self, path: str, weights_access_token: str | None = None
    ) -> APIFuture[t.LoadWeightsResponse]:
        """Load weights (not the optimizer state) from a ``tinker://`` checkpoint."""
        return await self._load(path, False, weights_access_token)

    @homed
    async def load_state_with_optimizer_async(
        self, path: str, weights_access_token: str | None = None
    ) -> APIFuture[t.LoadWeightsResponse]:
        """Load weights and the optimizer state from a ``tinker://`` checkpoint."""
        return await self._load(path, True, weights_access_token)

    # -- sampling clients ---------------------------------------------------------------

    @homed
    async def save_weights_and_get_sampling_client_async(
        self,
        name: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
        kind: Literal["snapshot", "inflight"] = "snapshot",
    ) -> SamplingClient:
        """Save the current weights for sampling and return a SamplingClient on them."""
        family = self._family
        dialect = family.transport.dialect
        if not dialect.has_client_config:
            # Older servers have no ephemeral sampler save: save under a name instead.
            saved = await (await self.save_weights_for_sampler_async(
                name or f"ephemeral-{int(time.time())}-{uuid.uuid4().hex[:8]}"))
            return await family.owner.create_sampling_client_async(
                model_path=saved.path, base_model=self.get_base_model())
        ticket = self._seq.tickets(1)[0]
        sampling_seq = family.next_sampling_session_seq()
        request = t.SaveWeightsForSamplerRequest(
            model_id=self.model_id, sampling_session_seq_id=sampling_seq, kind=kind)
        future = await self._submit(
            ticket, "save_weights_for_sampler",
            lambda seq: msgspec.structs.replace(request, seq_id=seq),
            "SaveWeightsForSampler", lambda r: r.json())
        result = await future
        sampling_session_id = result.get("sampling_session_id") if isinstance(result, dict) else None
        if not sampling_session_id:
            raise APIError(f"save_weights_for_sampler gave no sampling_session_id: {result!r}")
        from .sampling import SamplingClient

        return SamplingClient(family, sampling_session_id, base_model=self.get_base_model(),
                              record_stability_info=record_stability_info)

    @homed
    async def create_sampling_client_async(
        self, model_path: str, retry_config: Any = None, record_stability_info: bool = False
    ) -> SamplingClient:
        """A SamplingClient on saved sampler weights (``tinker://.../sampler_weights/...``)."""
        # Not this model's base model: the weights may come from another run, so the
        # server says which base model they belong to (as in the official SDK).
        return await self._family.owner.create_sampling_client_async(
            model_path=model_path, record_stability_info=record_stability_info)

    # --- BEGIN GENERATED SYNC FORMS (scripts/gen_sync.py; do not edit) ---
    def delete_model(self) -> APIFuture[None]:
        """Free this model on the server (tinkercloud's ``delete_model``): its weights are
        gone, so save what you need first. Later calls of this client fail at once.

        Sync form of :meth:`delete_model_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.delete_model_async, locals())
        return _sync.call(self, self.delete_model_async())

    def forward(self, data: Sequence[t.Datum], loss_fn: t.LossFnType, loss_fn_config: Mapping[str, float | str] | None=None) -> APIFuture[t.ForwardBackwardOutput]:
        """Compute the loss and per-token logprobs without gradients.

        Sync form of :meth:`forward_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.forward_async, locals())
        return _sync.call_flat(self, self.forward_async(data, loss_fn, loss_fn_config))

    def forward_backward(self, data: Sequence[t.Datum], loss_fn: t.LossFnType, loss_fn_config: Mapping[str, float | str] | None=None) -> APIFuture[t.ForwardBackwardOutput]:
        """Compute the loss and accumulate its gradients (applied by :meth:`optim_step`).

        Sync form of :meth:`forward_backward_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.forward_backward_async, locals())
        return _sync.call_flat(self, self.forward_backward_async(data, loss_fn, loss_fn_config))

    def forward_backward_custom(self, data: Sequence[t.Datum], loss_fn: CustomLossFn | LossHandle, *, loss_type_input: Literal['logprobs'] | None=None) -> APIFuture[t.ForwardBackwardOutput]:
        """Train on a loss computed here, from the model's per-token logprobs.

        Sync form of :meth:`forward_backward_custom_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.forward_backward_custom_async, locals())
        return _sync.call_flat(self, self.forward_backward_custom_async(data, loss_fn, loss_type_input=loss_type_input))

    def optim_step(self, optim_params: t.AdamParams | t.DimuonParams | None=None, *, adam_params: t.AdamParams | None=None) -> APIFuture[t.OptimStepResponse]:
        """Apply the accumulated gradients: AdamW with ``AdamParams`` (its defaults if
        omitted), or Dimuon with ``DimuonParams`` for a model created with
        ``optimizer=DimuonOptimizerConfig()``.

        Sync form of :meth:`optim_step_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.optim_step_async, locals())
        return _sync.call_flat(self, self.optim_step_async(optim_params, adam_params=adam_params))

    def save_state(self, name: str, ttl_seconds: int | None=None, overwrite: bool=False, user_metadata: Mapping[str, Any] | None=None) -> APIFuture[t.SaveWeightsResponse]:
        """Save weights and optimizer state as ``tinker://<run>/weights/<name>``.

        Sync form of :meth:`save_state_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.save_state_async, locals())
        return _sync.call_flat(self, self.save_state_async(name, ttl_seconds, overwrite, user_metadata))

    def save_weights_for_sampler(self, name: str, ttl_seconds: int | None=None, user_metadata: Mapping[str, Any] | None=None) -> APIFuture[t.SaveWeightsForSamplerResponse]:
        """Save sampler weights as ``tinker://<run>/sampler_weights/<name>``.

        Sync form of :meth:`save_weights_for_sampler_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.save_weights_for_sampler_async, locals())
        return _sync.call_flat(self, self.save_weights_for_sampler_async(name, ttl_seconds, user_metadata))

    def save_weights_external(self, name: str, ttl_seconds: int | None=None, age_encryption_recipients: Sequence[str] | None=None) -> APIFuture[t.SaveWeightsExternalResponse]:
        """Export the weights in HF/PEFT format as ``tinker://<run>/external_weights/<name>``.

        Sync form of :meth:`save_weights_external_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.save_weights_external_async, locals())
        return _sync.call_flat(self, self.save_weights_external_async(name, ttl_seconds, age_encryption_recipients))

    def load_state(self, path: str, weights_access_token: str | None=None) -> APIFuture[t.LoadWeightsResponse]:
        """Load weights (not the optimizer state) from a ``tinker://`` checkpoint.

        Sync form of :meth:`load_state_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.load_state_async, locals())
        return _sync.call_flat(self, self.load_state_async(path, weights_access_token))

    def load_state_with_optimizer(self, path: str, weights_access_token: str | None=None) -> APIFuture[t.LoadWeightsResponse]:
        """Load weights and the optimizer state from a ``tinker://`` checkpoint.

        Sync form of :meth:`load_state_with_optimizer_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.load_state_with_optimizer_async, locals())
        return _sync.call_flat(self, self.load_state_with_optimizer_async(path, weights_access_token))

    def save_weights_and_get_sampling_client(self, name: str | None=None, retry_config: Any=None, record_stability_info: bool=False, kind: Literal['snapshot', 'inflight']='snapshot') -> BackcompatSamplingClientFuture:
        """Save the current weights for sampling and return a SamplingClient on them.

        Sync form of :meth:`save_weights_and_get_sampling_client_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.save_weights_and_get_sampling_client_async, locals())
        return _sync.call_client(self, self.save_weights_and_get_sampling_client_async(name, retry_config, record_stability_info, kind), BackcompatSamplingClientFuture)

    def create_sampling_client(self, model_path: str, retry_config: Any=None, record_stability_info: bool=False) -> BackcompatSamplingClientFuture:
        """A SamplingClient on saved sampler weights (``tinker://.../sampler_weights/...``).

        Sync form of :meth:`create_sampling_client_async`: starts the call now and returns an APIFuture
        (``.result(timeout)`` blocks; ``await`` it in async code).
        """
        _argcheck.check_call(self.create_sampling_client_async, locals())
        return _sync.call_client(self, self.create_sampling_client_async(model_path, retry_config, record_stability_info), BackcompatSamplingClientFuture)
    # --- END GENERATED SYNC FORMS ---


def _request_id(resp: Response) -> str:
    data = resp.json()
    rid = data.get("request_id") if isinstance(data, dict) else None
    if not isinstance(rid, str) or not rid:
        raise APIResponseValidationError(
            f"the server accepted the request but gave no request_id: {data!r}")
    return rid


#: times an admitted submit whose answer cannot be read is asked for again
_UNREADABLE_RESENDS = 2


async def _admitted(transport: Transport, endpoint: str, **kwargs: Any) -> str:
    """POST a sequenced submit; return the request id the server gives for it.

    An answer that cannot be read may still mean the server admitted the work: asking
    again with the same seq id and idempotency key gets the same request id back (a
    server never applies one seq id twice), so that is what happens, twice at most.
    """
    key = new_idempotency_key()
    for resend in range(_UNREADABLE_RESENDS + 1):
        resp = await transport.request("POST", endpoint, idempotency_key=key, **kwargs)
        try:
            return _request_id(resp)
        except APIResponseValidationError as exc:
            if resend == _UNREADABLE_RESENDS:
                raise
            log.warning("%s: the server's answer cannot be read (%s); asking again with the "
                        "same seq id", endpoint, exc)
    raise AssertionError("unreachable")


def _custom_loss_gradients(
    loss_fn: CustomLossFn, data: list[t.Datum], logprobs: list[np.ndarray[Any, Any]]
) -> tuple[float, dict[str, float], list[np.ndarray[Any, Any]]]:
    """Run a custom loss; return (loss sum, metrics, d loss / d logprobs per datum)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tensors = [torch.tensor(lp, requires_grad=True) for lp in logprobs]
        out = loss_fn(data, tensors)
        loss, metrics = out[0], out[1]
        loss.backward()
        grads = [x.grad.detach().numpy() if x.grad is not None else np.zeros_like(lp)
                 for x, lp in zip(tensors, logprobs, strict=True)]
        return float(loss.detach().sum()), {k: float(v) for k, v in metrics.items()}, grads
    out = loss_fn(data, logprobs)
    if len(out) != 3:
        raise InvalidRequestError(
            "without torch, a custom loss must return (loss, metrics, grads) where grads[i] is "
            "d loss / d logprobs[i] (install torch to have gradients computed for you)"
        )
    loss, metrics, grads = out
    if len(grads) != len(logprobs):
        raise InvalidRequestError(f"{len(grads)} gradients for {len(logprobs)} datums")
    for i, (g, lp) in enumerate(zip(grads, logprobs, strict=True)):
        if np.shape(g) != np.shape(lp):
            raise InvalidRequestError(f"grads[{i}] has shape {np.shape(g)}, logprobs {np.shape(lp)}")
    return float(np.sum(loss)), {k: float(v) for k, v in metrics.items()}, [np.asarray(g) for g in grads]


class BackcompatTrainingClientFuture(ClientFuture[TrainingClient], TrainingClient):
    """The future of a call that makes a TrainingClient. It is also a TrainingClient (as
    in the official SDK): its client methods and attributes wait for the client and
    forward to it, with a one-time FutureWarning (call ``.result()`` or ``await`` it)."""

    __slots__ = ()


forward_client_methods(BackcompatTrainingClientFuture, TrainingClient)
