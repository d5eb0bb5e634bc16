"""Training routes: create a model, train it, save and load its weights.

Endpoints (reference §2.2 #15-22; every one but ``get_info`` answers with a future)::

    POST create_model              -> {"model_id", "type": "create_model"}
    POST get_info                  GetInfoResponse (synchronous)
    POST forward_backward          protobuf (optionally zstd) or JSON body -> ForwardBackwardOutput
    POST forward                   JSON, legacy dialects (``separate_forward``)
    POST optim_step                -> {"metrics": {...}}
    POST save_weights              -> {"path": "tinker://<run>/weights/<name>"}
    POST save_weights_for_sampler  named -> {"path": ".../sampler_weights/<name>"};
                                   ephemeral -> {"sampling_session_id"}
    POST save_weights_external     -> {"path": ".../external_weights/<name>", "size_bytes"}
    POST load_weights              legacy (``model_id`` + ``seq_id``) -> {"path"};
                                   create-via-load (``session_id`` + ``model_seq_id``)
                                   -> {"model_id", "path"}

Ordering: each model's requests go through its :class:`~._sequencing.Sequencer`, so they
apply in ``seq_id`` order, one at a time, and a retried submit gets the request id it got
the first time. Once a request's model and ``seq_id`` are known, every later problem with
it (a bad field, a missing loss input, a checkpoint that cannot be written) *fails its
future* with category ``user`` instead of answering an HTTP error: an HTTP error would
leave a hole in the sequence, and every later request of the model would wait for it.

Model work runs in a worker thread (inline in zero-compute mode), so polls and heartbeats
stay responsive while a model computes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from .. import types as t
from ..types._training import ForwardBackwardRequestWire
from . import _custom_losses, _model
from . import _proto_server as _proto
from ._age import AgeUnavailable, encrypt_files, parse_recipients
from ._errors import ApiError, ValidationIssue, bad_request, json_response, unprocessable
from ._futures import FutureFailure
from ._inputs import datum_from_sdk
from ._ledger import TagHolder, applying, ledger_of, lr_tag
from ._model import Adapter, BaseModel, ModelDatum, save_state
from ._models import (
    ADAPTER_FILE,
    ARCH,
    MAX_LORA_RANK,
    TOKENIZER_ID,
    ModelRegistry,
    SamplerSource,
    TrainedModel,
    external_export,
    read_adapter,
    registry,
    snapshot,
)
from ._outputs import forward_backward_json, forward_backward_proto
from ._render import optimizer_config
from ._routing import Route, ServerContext, context, route
from ._state import CheckpointRecord, RunRecord, validate_ttl
from ._validate import at_least, decode_request, describe, finish, missing, read_request

__all__ = ["ROUTES"]

_T = TypeVar("_T")
_S = TypeVar("_S")
_PROTOBUF = "application/x-protobuf"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_IDEMPOTENCY_HEADER = "X-Idempotency-Key"

Op = Callable[[TrainedModel, int], Any]
"""The work of one sequenced request: gets the model and the request's seq id."""


# ----------------------------------------------------------------------------------- helpers


def _as_user_error(work: Callable[[], _T]) -> Callable[[], _T]:
    """``work`` with bad-input errors turned into ``FutureFailure(..., "user")``.

    ``ValueError`` is what the model and the input readers raise for bad input; an
    ``ApiError`` comes from the state (a checkpoint that exists, a TTL out of range, ...).
    Anything else is a server bug and fails the future with category ``server``.
    """

    def guarded() -> _T:
        try:
            return work()
        except ApiError as exc:
            raise FutureFailure(describe(exc), "user") from exc
        except ValueError as exc:
            raise FutureFailure(str(exc), "user") from exc

    return guarded


def _failing(message: str) -> Op:
    def fail(model: TrainedModel, seq: int) -> Any:
        raise FutureFailure(message, "user")

    return fail


def _sequenceable(body: Any) -> bool:
    """Whether the body names a model and a usable ``seq_id`` (absent counts as usable)."""
    if not isinstance(body, Mapping):
        return False
    model_id, seq_id = body.get("model_id"), body.get("seq_id")
    seq_ok = seq_id is None or (
        isinstance(seq_id, int) and not isinstance(seq_id, bool) and seq_id >= 0
    )
    return isinstance(model_id, str) and bool(model_id) and seq_ok


def _refuse(request: web.Request, body: Any, problem: ApiError, *, kind: str) -> web.Response:
    """Answer an invalid request: a failed future if it can take its place in the model's
    sequence (so later requests are not held up by a hole), else the HTTP error."""
    if not _sequenceable(body):
        raise problem
    return _submit(request, body["model_id"], body.get("seq_id"),
                   _failing(describe(problem)), kind=kind, offload=False)


async def _read_sequenced(
    request: web.Request, cls: type[_S], *, kind: str | Callable[[Any], str]
) -> tuple[_S, None] | tuple[None, web.Response]:
    """The body decoded into ``cls``, or (when it does not fit) the answer to send:
    see :func:`_refuse`. ``kind`` may depend on the raw body (forward or backward)."""
    raw = await request.read()
    try:
        body = decode_request(raw, cls, strict=context(request).dialect.strict_fields)
    except ApiError as exc:
        if exc.status != 422:
            raise
        parsed = msgspec.json.decode(raw) if raw.strip() else {}
        name = kind(parsed) if callable(kind) else kind
        return None, _refuse(request, parsed, exc, kind=name)
    issues: list[ValidationIssue] = []
    at_least(issues, "seq_id", getattr(body, "seq_id", None), 0)
    finish(issues)  # a negative seq_id has no place in the sequence: always the 422
    return body, None


def _check(request: web.Request, model_id: str, seq_id: int | None, problem: str | None,
           *, kind: str) -> web.Response | None:
    """A request-specific ``problem`` (a rule the Struct cannot state) as a failed future
    in the request's place, or None when there is none."""
    if problem is None:
        return None
    return _refuse(request, {"model_id": model_id, "seq_id": seq_id}, bad_request(problem),
                   kind=kind)


def _future_answer(request_id: str, model_id: str | None = None) -> web.Response:
    body = {"request_id": request_id}
    if model_id is not None:
        body["model_id"] = model_id
    return json_response(body)


def _earlier_create(
    reg: ModelRegistry, key: str | None, session_id: str, model_seq_id: int
) -> web.Response | None:
    """The first answer again when this create (create_model, or create via load_weights)
    is a retry: the same session and model seq id, or the same idempotency ``key``."""
    earlier = reg.creates.get((session_id, model_seq_id)) or (key and reg.submits.get(key))
    if isinstance(earlier, str):
        return _future_answer(earlier, f"{session_id}:train:{model_seq_id}")
    return None


def _submit(
    request: web.Request,
    model_id: str,
    seq_id: int | None,
    op: Op,
    *,
    kind: str,
    offload: bool = True,
    json_encoder: Callable[[Any], Any] | None = None,
    proto_encoder: Callable[[Any], bytes] | None = None,
    tag: Callable[[], str | None] | None = None,
) -> web.Response:
    """Admit one sequenced request of a model and answer with its future.

    404 for an unknown model, 410 if its session is over, 400 for a read-only run (a
    ``copy_weights`` copy), 409 for a stale ``seq_id``; a retry gets the first request id.
    Work that succeeds is written in the ledger (``_ledger``) with ``tag()``.
    """
    ctx = context(request)
    reg = registry(ctx)
    run = ctx.state.get_run(model_id)
    if run.read_only:
        raise bad_request(f"Training run {model_id} is a read-only copy and cannot be trained")
    ctx.state.live_session(run.session_id)
    model = reg.model(model_id)
    key = request.headers.get(_IDEMPOTENCY_HEADER)
    seq, earlier = model.sequencer.admit(seq_id, key)
    if earlier is not None:
        return _future_answer(earlier, model_id)
    ctx.state.touch_run(model_id)
    executor = reg.executor if offload else None
    guarded = applying(ledger_of(ctx), model_id, seq, kind,
                       _as_user_error(lambda: op(model, seq)), tag)

    async def work() -> Any:
        return await model.sequencer.run(seq, guarded, executor=executor)

    request_id = ctx.futures.submit(
        work,
        kind=kind,
        session_id=run.session_id,
        json_encoder=json_encoder,
        proto_encoder=proto_encoder,
    )
    model.sequencer.record(seq, key, request_id)
    return _future_answer(request_id, model_id)


def _string_values(issues: list[ValidationIssue], name: str,
                   mapping: Mapping[str, Any] | None) -> None:
    """Training runs keep string metadata only (their REST records say
    ``dict[str, str]``); the official request types allow any value."""
    for key, value in (mapping or {}).items():
        if not isinstance(value, str):
            issues.append({"loc": ["body", name, key], "msg": "Expected `str`",
                           "type": "string_type", "input": value})


def _scheme(ctx: ServerContext) -> str:
    return ctx.dialect.path_scheme


# ------------------------------------------------------------------------------ create/info


async def create_model(request: web.Request) -> web.Response:
    """``POST create_model``: a new LoRA training run ``{session_id}:train:{model_seq_id}``."""
    ctx = context(request)
    body = await read_request(request, t.CreateModelRequest, strict=ctx.dialect.strict_fields)
    issues: list[ValidationIssue] = []
    at_least(issues, "model_seq_id", body.model_seq_id, 0)
    _string_values(issues, "user_metadata", body.user_metadata)
    finish(issues)
    session_id, model_seq_id, base_model = body.session_id, body.model_seq_id, body.base_model
    user_metadata = body.user_metadata
    lora = body.lora_config
    rank, seed, flags = 32, None, {"train_mlp": True, "train_attn": True, "train_unembed": True}
    if lora is not None:
        rank, seed = lora.rank, lora.seed
        flags = {"train_mlp": lora.train_mlp, "train_attn": lora.train_attn,
                 "train_unembed": lora.train_unembed}
    optimizer_family = body.optimizer_config.type

    reg = registry(ctx)
    ctx.state.live_session(session_id)
    key = request.headers.get(_IDEMPOTENCY_HEADER)
    if (earlier := _earlier_create(reg, key, session_id, model_seq_id)) is not None:
        return earlier
    base = reg.base_model(base_model)
    if not 1 <= rank <= MAX_LORA_RANK:
        raise bad_request(f"LoRA rank must be between 1 and {MAX_LORA_RANK}, got {rank}")
    if not any(flags.values()):
        raise bad_request("At least one of train_mlp, train_attn, train_unembed must be true")
    adapter = Adapter.new(
        base,
        rank=rank,
        seed=seed,
        train_mlp=flags["train_mlp"],
        train_attn=flags["train_attn"],
        train_unembed=flags["train_unembed"],
    )
    adapter.optimizer = optimizer_family
    run = ctx.state.create_training_run(
        session_id,
        model_seq_id,
        base.name,
        lora_rank=rank,
        train_mlp=flags["train_mlp"],
        train_attn=flags["train_attn"],
        train_unembed=flags["train_unembed"],
        user_metadata=user_metadata,
        optimizer=optimizer_family,
    )
    reg.add_model(run.training_run_id, base, adapter, next_seq=1)
    answer = {"model_id": run.training_run_id, "type": "create_model"}
    request_id = ctx.futures.submit(lambda: answer, kind="CreateModel", session_id=session_id)
    reg.remember_create(session_id, model_seq_id, request_id)
    reg.remember_submit(key, request_id)
    return _future_answer(request_id, run.training_run_id)


async def get_info(request: web.Request) -> web.Response:
    """``POST get_info``: the model's ``GetInfoResponse``."""
    ctx = context(request)
    model_id = (await read_request(request, t.GetInfoRequest,
                                   strict=ctx.dialect.strict_fields)).model_id
    run = ctx.state.get_run(model_id)
    return json_response(
        {
            "type": "get_info",
            "model_id": model_id,
            "model_data": {
                "arch": ARCH,
                "model_name": run.base_model,
                "tokenizer_id": TOKENIZER_ID,
            },
            "optimizer_config": optimizer_config(run.optimizer),
            "is_lora": run.is_lora,
            "lora_rank": run.lora_rank,
            "model_name": run.base_model,
        }
    )


# -------------------------------------------------------------------------- forward/backward


def _is_protobuf(request: web.Request) -> bool:
    return request.content_type == _PROTOBUF


def _fb_op(
    ctx: ServerContext,
    convert: Callable[[], list[ModelDatum]],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None,
    forward_only: bool,
    tags: TagHolder,
) -> Op:
    convert = tags.wrap(convert, lambda datum: datum.tokens)  # the ledger's batch tag
    if loss_fn == "custom":  # an uploaded graph (create_custom_loss), run with torch
        return _custom_losses.custom_loss_op(ctx, convert, loss_fn_config, forward_only)

    def op(model: TrainedModel, seq: int) -> Any:
        return _model.forward_backward(
            model.require_adapter(),
            convert(),
            loss_fn,
            loss_fn_config,
            backward=not forward_only,
        )

    return op


def _fb_kind(forward_only: bool) -> str:
    return "Forward" if forward_only else "ForwardBackward"


def _submit_fb(
    request: web.Request, model_id: str, seq_id: int | None, op: Op, forward_only: bool,
    tags: TagHolder,
) -> web.Response:
    return _submit(
        request,
        model_id,
        seq_id,
        op,
        kind=_fb_kind(forward_only),
        json_encoder=forward_backward_json,
        proto_encoder=forward_backward_proto,
        tag=tags.get,
    )


async def _protobuf_forward_backward(request: web.Request, forward_path: bool) -> web.Response:
    raw = await request.read()
    # The SDK compresses when the server sets ``proto_compress_fwdbwd``. aiohttp may have
    # decoded the body already (when it has a zstd module), hence the magic-number check.
    if request.headers.get("Content-Encoding", "").lower() == "zstd" and raw[:4] == _ZSTD_MAGIC:
        try:
            raw = _proto.decompress(raw)
        except Exception as exc:
            raise bad_request(f"Invalid zstd body: {exc}") from None
    try:
        parts = _proto.decode_forward_backward_request(raw)
    except ValueError as exc:
        raise bad_request(f"Invalid protobuf ForwardBackwardRequest: {exc}") from None
    if not parts.model_id:
        raise unprocessable(
            [{"loc": ["body", "model_id"], "msg": "Field required", "type": "missing"}]
        )
    data = parts.data
    forward_only = parts.forward_only or forward_path
    tags = TagHolder()
    op = _fb_op(
        context(request),
        lambda: [datum_from_sdk(d, i) for i, d in enumerate(data)],
        parts.loss_fn,
        parts.loss_fn_config,
        forward_only,
        tags,
    )
    return _submit_fb(request, parts.model_id, parts.seq_id, op, forward_only, tags)


def _forward_only(forward_path: bool) -> Callable[[Any], bool]:
    def flag(body: Any) -> bool:
        return forward_path or (isinstance(body, Mapping) and body.get("forward_only") is True)
    return flag


async def _json_forward_backward(request: web.Request, forward_path: bool) -> web.Response:
    ctx = context(request)
    is_forward = _forward_only(forward_path)
    body, refused = await _read_sequenced(request, ForwardBackwardRequestWire,
                                          kind=lambda raw: _fb_kind(is_forward(raw)))
    if body is None:
        return refused  # type: ignore[return-value]
    forward_only = body.forward_only or forward_path
    # Official nesting, under either name; tinkercloud puts data/loss_fn at the top.
    inner = body.forward_input or body.forward_backward_input
    data, loss_fn, loss_fn_config = (
        (inner.data, inner.loss_fn, inner.loss_fn_config)
        if inner is not None
        else (body.data or [], body.loss_fn, body.loss_fn_config)
    )
    if loss_fn is None:  # the Struct allows either form, so it cannot require this
        problem = unprocessable([missing("loss_fn")])
        return _refuse(request, {"model_id": body.model_id, "seq_id": body.seq_id}, problem,
                       kind=_fb_kind(forward_only))
    tags = TagHolder()
    op = _fb_op(
        ctx,
        lambda: [datum_from_sdk(d.to_datum(), i) for i, d in enumerate(data)],
        loss_fn,
        loss_fn_config,
        forward_only,
        tags,
    )
    return _submit_fb(request, body.model_id, body.seq_id, op, forward_only, tags)


async def forward_backward(request: web.Request) -> web.Response:
    """``POST forward_backward``: protobuf (official) or JSON body; ``forward_only`` flag."""
    if _is_protobuf(request) and context(request).dialect.protobuf:
        return await _protobuf_forward_backward(request, forward_path=False)
    return await _json_forward_backward(request, forward_path=False)


async def forward(request: web.Request) -> web.Response:
    """``POST forward`` (JSON-only dialects): a forward pass with ``forward_input``."""
    if _is_protobuf(request) and context(request).dialect.protobuf:
        return await _protobuf_forward_backward(request, forward_path=True)
    return await _json_forward_backward(request, forward_path=True)


# --------------------------------------------------------------------------------- optimizer


async def optim_step(request: web.Request) -> web.Response:
    """``POST optim_step`` with ``adam_params`` (or ``optimizer_params``) -> ``{"metrics"}``."""
    body, refused = await _read_sequenced(request, t.OptimStepRequest, kind="OptimStep")
    if body is None:
        return refused  # type: ignore[return-value]
    step = body.params
    params = step.model_dump()  # with its "type" tag when not AdamW

    def op(model: TrainedModel, seq: int) -> Any:
        return {"metrics": _model.optim_step(model.require_adapter(), params)}

    return _submit(request, body.model_id, body.seq_id, op, kind="OptimStep",
                   tag=lambda: lr_tag(step.learning_rate))


# ----------------------------------------------------------------------------------- weights


def _checkpoint_name(name: str | None, seq: int) -> str:
    return name if name is not None else f"seq-{seq}"


async def save_weights(request: web.Request) -> web.Response:
    """``POST save_weights``: a training checkpoint (with the AdamW state)."""
    ctx = context(request)
    body, refused = await _read_sequenced(request, t.SaveWeightsRequest, kind="SaveWeights")
    if body is None:
        return refused  # type: ignore[return-value]
    model_id, seq_id, name = body.model_id, body.seq_id, body.path
    ttl_seconds, overwrite, user_metadata = body.ttl_seconds, body.overwrite, body.user_metadata
    state, scheme = ctx.state, _scheme(ctx)

    def op(model: TrainedModel, seq: int) -> Any:
        validate_ttl(ttl_seconds)
        data = save_state(model.require_adapter(), include_optimizer=True)
        record = state.add_checkpoint(
            model.run_id,
            "weights",
            _checkpoint_name(name, seq),
            files={ADAPTER_FILE: data},
            ttl_seconds=ttl_seconds,
            user_metadata=user_metadata,
            overwrite=overwrite,
        )
        return {"path": record.path(scheme), "type": "save_weights"}

    return _submit(request, model_id, seq_id, op, kind="SaveWeights", tag=lambda: name)


async def save_weights_for_sampler(request: web.Request) -> web.Response:
    """``POST save_weights_for_sampler``: named (a checkpoint) or ephemeral (a sampler)."""
    ctx = context(request)
    body, refused = await _read_sequenced(request, t.SaveWeightsForSamplerRequest,
                                          kind="SaveWeightsForSampler")
    if body is None:
        return refused  # type: ignore[return-value]
    model_id, seq_id, name = body.model_id, body.seq_id, body.path
    sampling_seq, kind = body.sampling_session_seq_id, body.kind
    ttl_seconds, user_metadata = body.ttl_seconds, body.user_metadata
    # One of two forms: a rule across fields that the Struct does not state.
    problem = None
    if name is None and sampling_seq is None:
        problem = "Give either path (a named checkpoint) or sampling_session_seq_id"
    elif sampling_seq is not None and sampling_seq < 0:
        problem = "sampling_session_seq_id must be >= 0"
    refused = _check(request, model_id, seq_id, problem, kind="SaveWeightsForSampler")
    if refused is not None:
        return refused
    state, scheme, reg = ctx.state, _scheme(ctx), registry(ctx)

    if name is not None:

        def save_named(model: TrainedModel, seq: int) -> Any:
            validate_ttl(ttl_seconds)
            data = save_state(model.require_adapter(), include_optimizer=False)
            record = state.add_checkpoint(
                model.run_id,
                "sampler_weights",
                name,
                files={ADAPTER_FILE: data},
                ttl_seconds=ttl_seconds,
                user_metadata=user_metadata,
            )
            return {"path": record.path(scheme), "type": "save_weights_for_sampler"}

        return _submit(request, model_id, seq_id, save_named, kind="SaveWeightsForSampler",
                       tag=lambda: name)

    assert sampling_seq is not None

    def make_sampler(model: TrainedModel, seq: int) -> Any:
        # A copy of the weights as of this point in the sequence: later training steps
        # must not change what this sampler samples (the "snapshot" contract). Cheap
        # enough (LoRA factors only) to run on the loop.
        frozen = snapshot(model.require_adapter())
        if kind == "inflight":
            model.inflight.adapter = frozen
            source = SamplerSource(model.base, published=model.inflight)
        else:
            source = SamplerSource(model.base, fixed=frozen)
        run = state.get_run(model.run_id)
        sampler = state.create_sampler(
            run.session_id, base_model=run.base_model, sampling_session_seq_id=sampling_seq
        )
        reg.add_sampler(sampler.sampler_id, source)
        return {"sampling_session_id": sampler.sampler_id, "type": "save_weights_for_sampler"}

    return _submit(
        request, model_id, seq_id, make_sampler, kind="SaveWeightsForSampler", offload=False
    )


async def save_weights_external(request: web.Request) -> web.Response:
    """``POST save_weights_external``: a PEFT-style export, downloadable by signed URLs."""
    ctx = context(request)
    body, refused = await _read_sequenced(request, t.SaveWeightsExternalRequest,
                                          kind="SaveWeightsExternal")
    if body is None:
        return refused  # type: ignore[return-value]
    model_id, seq_id, name, ttl_seconds = body.model_id, body.seq_id, body.path, body.ttl_seconds
    recipients = body.age_encryption_recipients
    age_recipients: list[Any] = []
    unavailable = None
    if recipients:
        try:
            age_recipients = parse_recipients(recipients)
        except AgeUnavailable as exc:
            unavailable = str(exc)
    refused = _check(request, model_id, seq_id, unavailable, kind="SaveWeightsExternal")
    if refused is not None:
        return refused
    state, scheme = ctx.state, _scheme(ctx)

    def op(model: TrainedModel, seq: int) -> Any:
        validate_ttl(ttl_seconds)
        run = state.get_run(model.run_id)
        record = state.add_checkpoint(
            model.run_id,
            "external_weights",
            _checkpoint_name(name, seq),
            files=_maybe_encrypted(external_export(model.require_adapter(), run.base_model),
                                   age_recipients),
            ttl_seconds=ttl_seconds,
        )
        return {
            "path": record.path(scheme),
            "size_bytes": record.size_bytes,
            "type": "save_weights_external",
        }

    return _submit(request, model_id, seq_id, op, kind="SaveWeightsExternal", tag=lambda: name)


def _maybe_encrypted(files: dict[str, bytes], recipients: list[Any]) -> dict[str, bytes]:
    return encrypt_files(files, recipients) if recipients else files


async def load_weights(request: web.Request) -> web.Response:
    """``POST load_weights``: into an existing model (legacy), or create-via-load."""
    ctx = context(request)
    body, refused = await _read_sequenced(request, t.LoadWeightsRequest, kind="LoadWeights")
    if body is None:
        return refused  # type: ignore[return-value]
    if body.model_id is None:
        if body.session_id is not None:
            return await _create_via_load(request, body)
        finish([missing("model_id")])  # one of two addressings: not stated by the Struct
    model_id: str = body.model_id  # type: ignore[assignment]
    seq_id, path, optimizer = body.seq_id, body.path, body.optimizer
    # weights_access_token is not checked: every local checkpoint is readable.
    state = ctx.state

    def op(model: TrainedModel, seq: int) -> Any:
        record = state.checkpoint_by_path(path)
        source_base = state.get_run(record.training_run_id).base_model
        if source_base != model.base.name:
            raise ValueError(
                f"checkpoint {path} was trained on {source_base!r}, this model is "
                f"{model.base.name!r}"
            )
        model.adapter = read_adapter(state, record, model.base, include_optimizer=optimizer,
                                     optimizer=state.get_run(model_id).optimizer)
        model.load_error = None
        return {"path": path, "type": "load_weights"}

    return _submit(request, model_id, seq_id, op, kind="LoadWeights", tag=lambda: path)


async def _create_via_load(request: web.Request, body: t.LoadWeightsRequest) -> web.Response:
    """A new model ``{session_id}:train:{model_seq_id}`` made from a checkpoint.

    The load is the model's sequence 0, so its first training request (seq 1) waits for
    the weights to be in place. A retry (same ids or idempotency key) gets the first
    request id.
    """
    ctx = context(request)
    session_id, model_seq_id = _create_via_load_ids(ctx, body)
    reg = registry(ctx)
    ctx.state.live_session(session_id)
    key = request.headers.get(_IDEMPOTENCY_HEADER)
    if (earlier := _earlier_create(reg, key, session_id, model_seq_id)) is not None:
        return earlier
    source = _load_source(ctx, body)
    run = ctx.state.create_training_run(
        session_id,
        model_seq_id,
        source.run.base_model,
        lora_rank=source.run.lora_rank,
        train_mlp=source.run.train_mlp,
        train_attn=source.run.train_attn,
        train_unembed=source.run.train_unembed,
        user_metadata=body.user_metadata,
        optimizer=source.family,
    )
    model = reg.add_model(run.training_run_id, source.base, None, next_seq=0)
    request_id = _submit_first_load(ctx, session_id, model, source, body)
    model.sequencer.record(0, key, request_id)
    reg.remember_create(session_id, model_seq_id, request_id)
    reg.remember_submit(key, request_id)
    return _future_answer(request_id, run.training_run_id)


def _create_via_load_ids(ctx: ServerContext, body: t.LoadWeightsRequest) -> tuple[str, int]:
    """``(session_id, model_seq_id)`` of a create-via-load body, after its checks: the
    dialect must offer it (400), and ``model_seq_id``, required in this addressing only,
    must be there and not negative (422)."""
    if not ctx.dialect.create_via_load:
        raise bad_request(
            "load_weights needs model_id and seq_id: create the model with create_model, "
            "then load the checkpoint as its first request"
        )
    issues: list[ValidationIssue] = []
    if body.model_seq_id is None:
        issues.append(missing("model_seq_id"))
    at_least(issues, "model_seq_id", body.model_seq_id, 0)
    _string_values(issues, "user_metadata", body.user_metadata)
    finish(issues)
    assert body.session_id is not None and body.model_seq_id is not None
    return body.session_id, body.model_seq_id


@dataclass(frozen=True)
class _LoadSource:
    """The checkpoint a new model is created from, and what the model takes from it."""

    record: CheckpointRecord
    run: RunRecord
    """The run that saved the checkpoint (base model, LoRA rank and flags)."""
    base: BaseModel
    family: str
    """The new model's optimizer family (requested, else the source run's)."""


def _load_source(ctx: ServerContext, body: t.LoadWeightsRequest) -> _LoadSource:
    """The checkpoint at ``body.path`` (404 if unknown), checked against the body: a
    ``base_model`` must be the checkpoint's, and optimizer state loads only into a model
    of the same optimizer family (400s)."""
    record = ctx.state.checkpoint_by_path(body.path)
    source = ctx.state.get_run(record.training_run_id)
    if body.base_model is not None and body.base_model != source.base_model:
        raise bad_request(
            f"base_model {body.base_model!r} does not match the checkpoint's base model "
            f"{source.base_model!r}"
        )
    base = registry(ctx).base_model(source.base_model)
    requested = body.optimizer_config.type if body.optimizer_config is not None else None
    family = requested if requested is not None else source.optimizer
    if body.optimizer and family != source.optimizer:
        raise bad_request(f"the checkpoint holds {source.optimizer} optimizer state; a "
                          f"{family} model can load its weights only (optimizer=false)")
    return _LoadSource(record, source, base, family)


def _submit_first_load(ctx: ServerContext, session_id: str, model: TrainedModel,
                       source: _LoadSource, body: t.LoadWeightsRequest) -> str:
    """Submit the load as the new model's sequence 0; its request id.

    A load that fails leaves ``model.load_error`` set, so later requests say why.
    """
    state, path, optimizer = ctx.state, body.path, body.optimizer
    run_id = model.run_id

    def load() -> Any:
        try:
            model.adapter = read_adapter(state, source.record, source.base,
                                         include_optimizer=optimizer, optimizer=source.family)
        except ValueError as exc:
            model.load_error = str(exc)
            raise
        return {"model_id": run_id, "path": path, "type": "load_weights"}

    guarded = applying(ledger_of(ctx), run_id, 0, "LoadWeights", _as_user_error(load),
                       lambda: path)
    executor = registry(ctx).executor

    async def work() -> Any:
        return await model.sequencer.run(0, guarded, executor=executor)

    return ctx.futures.submit(work, kind="LoadWeights", session_id=session_id)


ROUTES: tuple[Route, ...] = (
    route("POST", "/create_model", create_model),
    route("POST", "/get_info", get_info),
    route("POST", "/forward_backward", forward_backward),
    route("POST", "/forward", forward, when=lambda d: d.separate_forward),
    route("POST", "/optim_step", optim_step),
    route("POST", "/save_weights", save_weights),
    route("POST", "/save_weights_for_sampler", save_weights_for_sampler),
    route("POST", "/save_weights_external", save_weights_external),
    route("POST", "/load_weights", load_weights),
)
