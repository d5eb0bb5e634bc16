"""Sampling routes: ``asample`` (a future) and tinkercloud's blocking ``sample``.

``POST asample`` takes the JSON ``SampleRequest`` of reference §2.2 #24 and answers
``{"request_id", "sample_sequence_ids": [one per returned sequence]}`` (the ids are left
out when the dialect's servers omit them). The result is a ``SampleResponse``: protobuf
when the poll accepts it, else JSON (see ``_outputs``). What to sample with comes from
``sampling_session_id`` (a sampler made by ``create_sampling_session`` or an ephemeral
``save_weights_for_sampler``), or directly from ``base_model`` / ``model_path``.

Sampling ``seq_id`` values are recorded, not enforced (the official client reuses one
when it resubmits after a 429). A resubmit with the same ``X-Idempotency-Key`` gets the
same answer and does not sample twice.

Compute: in zero-compute mode a sample is made inline, at once, with no thread hop (this
is what client benchmarks drive). Otherwise requests go to the base model's
:class:`~._batching.SampleBatcher`, which serves everything that arrives together in one
batched model call on a worker thread.

Capacity (``ServerConfig.sample_capacity``, off by default): samples in flight per model
and per key are limited, and a sample can be given a fixed service time; above capacity a
backpressure submit gets a 429 and one without the header waits in the server's queue
(``_capacity``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
import numpy as np
from aiohttp import web

from .. import types as t
from ._capacity import BACKPRESSURE_HEADER, key_id, sample_slots
from ._errors import ApiError, ValidationIssue, bad_request, json_response
from ._futures import FutureFailure
from ._inputs import tensor_from_json
from ._model import BaseModel, SampleRequest, SampleResult, sample_many
from ._models import ModelRegistry, registry
from ._outputs import sample_json, sample_proto
from ._routing import Route, ServerContext, context, route
from ._validate import at_least, finish, read_request

__all__ = ["ROUTES"]

_IDEMPOTENCY_HEADER = "X-Idempotency-Key"
_CLONE_BLOCK = 1_000_000_000
"""Sampling seq ids of clone ``n`` start at ``n * 1e9`` (SDK §2.4)."""


class _Target(NamedTuple):
    """What a request samples with, and who owns it."""

    key: str
    """Registry key of the sampler source (the sampler id, or the base model / path)."""
    base_model: str
    model_path: str | None
    session_id: str | None
    sampler_id: str | None


class _Parsed(NamedTuple):
    options: dict[str, Any]
    """``SampleRequest`` fields but the adapter, which is resolved when the sample runs."""
    seq_id: int | None
    sampling_session_id: str | None
    base_model: str | None
    model_path: str | None


# ----------------------------------------------------------------------------------- parsing


_SAMPLE_DEFAULTS: dict[str, Any] = {"sampling_params": {}}
"""Required officially, optional here (bodies written from other servers' docs)."""


async def _read_sample(request: web.Request, ctx: ServerContext) -> t.SampleRequest:
    """The sample body: tinkercloud's documented shape on its dialect, else the official."""
    cls = t.TinkercloudSampleRequest if ctx.dialect.sync_sample else t.SampleRequest
    return await read_request(request, cls, strict=ctx.dialect.strict_fields,
                              defaults=_SAMPLE_DEFAULTS)


def _prompt_tokens(prompt: t.ModelInput) -> np.ndarray[Any, Any]:
    """The prompt's tokens as one int64 array (400 for a chunk that is not text)."""
    parts = []
    for chunk in prompt.chunks:
        if not isinstance(chunk, t.EncodedTextChunk):
            raise bad_request(
                f"prompt: a {chunk.type!r} chunk cannot be used here; the local model reads "
                f"token (encoded_text) chunks only"
            )
        parts.append(chunk.tokens)
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.int64)
    return np.asarray([token for part in parts for token in part], dtype=np.int64)


def _parse(body: t.SampleRequest) -> _Parsed:
    """The sampling request of a decoded body (422 for values out of range, 400 for a bad
    prompt or target)."""
    params = body.sampling_params
    # Bounds the official schema does not state (the local model needs them).
    issues: list[ValidationIssue] = []
    at_least(issues, "num_samples", body.num_samples, 1)
    at_least(issues, "seq_id", body.seq_id, 0)
    at_least(issues, "topk_prompt_logprobs", body.topk_prompt_logprobs, 0)
    at_least(issues, "topk_sample_logprobs", body.topk_sample_logprobs, 0)
    at_least(issues, "prompt_alt_tokens_k", body.prompt_alt_tokens_k, 0)
    at_least(issues, "prompt_logprobs_last_n", body.prompt_logprobs_last_n, 1)
    at_least(issues, "max_tokens", params.max_tokens, 0)
    at_least(issues, "temperature", params.temperature, 0)
    for issue in issues[-2:]:
        if issue["loc"][-1] in ("max_tokens", "temperature"):
            issue["loc"][1:1] = ["sampling_params"]
    finish(issues)
    target = body.target_prompt_logprobs
    try:
        target_ids = (
            None
            if target is None
            else tensor_from_json(msgspec.structs.asdict(target), "target_prompt_logprobs",
                                  "request", pad_value=-1)
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    stop = params.stop
    options = {
        "prompt_tokens": _prompt_tokens(body.prompt),
        "num_samples": body.num_samples,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "stop": list(stop) if stop is not None and not isinstance(stop, str) else stop,
        "seed": params.seed,
        "prompt_logprobs": bool(body.prompt_logprobs or getattr(body, "include_prompt_logprobs",
                                                                 None)),
        "topk_prompt_logprobs": body.topk_prompt_logprobs,
        "topk_sample_logprobs": body.topk_sample_logprobs,
        "prompt_logprobs_last_n": body.prompt_logprobs_last_n,
        "target_prompt_logprobs": target_ids,
        "prompt_alt_tokens_k": body.prompt_alt_tokens_k,
    }
    # tinkercloud names the sampler ``model_id`` (its clients send both names).
    sampler_id = body.sampling_session_id or getattr(body, "model_id", None)
    return _Parsed(options, body.seq_id, sampler_id, body.base_model, body.model_path)


def _target(ctx: ServerContext, reg: ModelRegistry, parsed: _Parsed) -> _Target:
    """Resolve what to sample with (404 unknown sampler, 410 finished session, 400 ...)."""
    state = ctx.state
    if parsed.sampling_session_id is not None:
        sampler = state.get_sampler(parsed.sampling_session_id)
        state.live_session(sampler.session_id)
        return _Target(
            sampler.sampler_id,
            sampler.base_model,
            sampler.model_path,
            sampler.session_id,
            sampler.sampler_id,
        )
    if parsed.model_path is not None:
        checkpoint = state.checkpoint_by_path(parsed.model_path)
        base_model = state.get_run(checkpoint.training_run_id).base_model
        return _Target(f"path:{parsed.model_path}", base_model, parsed.model_path, None, None)
    if parsed.base_model is not None:
        reg.base_model(parsed.base_model)  # 400 if not served
        return _Target(f"base:{parsed.base_model}", parsed.base_model, None, None, None)
    raise bad_request("One of sampling_session_id, base_model or model_path is required")


# ------------------------------------------------------------------------------------ work


def _zero_compute_key(request: SampleRequest, vocab_size: int) -> tuple[Any, ...] | None:
    """What a zero-compute result depends on, or ``None`` to always ask the model.

    Zero-compute samples are fixed strings whose shape depends only on these fields, so
    equal keys give equal results; requests that score the prompt (whose outputs follow
    its length in more ways) or look invalid go to the model, which also explains errors.
    """
    tokens = request.prompt_tokens
    if (
        request.prompt_logprobs
        or request.topk_prompt_logprobs
        or request.prompt_alt_tokens_k
        or request.target_prompt_logprobs is not None
        or not isinstance(tokens, np.ndarray)
        or tokens.size == 0
        or tokens.min() < 0
        or tokens.max() >= vocab_size
    ):
        return None
    stop: Any = request.stop
    if isinstance(stop, list):
        stop = tuple(tuple(item) if isinstance(item, list) else item for item in stop)
    return (
        tokens.size,
        request.num_samples,
        request.max_tokens,
        request.temperature,
        request.top_p,
        request.top_k,
        stop,
        request.topk_sample_logprobs,
    )


def _sample_inline(reg: ModelRegistry, base: BaseModel, request: SampleRequest) -> SampleResult:
    """A zero-compute sample, made now; results of equal requests are shared (read-only)."""
    key = _zero_compute_key(request, base.vocab_size)
    if key is not None:
        key = (base.name, *key)
        cached = reg.zero_results.get(key)
        if cached is not None:
            return cached
    try:
        result = sample_many(base, [request])[0]
    except ValueError as exc:
        raise FutureFailure(str(exc), "user") from exc
    if key is not None:
        reg.remember_zero_result(key, result)
    return result


def _work(
    reg: ModelRegistry, target: _Target, parsed: _Parsed
) -> Callable[[], SampleResult | Awaitable[SampleResult]]:
    """The work of one sample: a plain call when it can run at once, else a coroutine."""
    cached = reg.cached_sampler(target.key)
    if cached is not None:
        cached.last_seq_id = parsed.seq_id
        if reg.zero_compute:
            # The hot path of client benchmarks: no coroutine, no thread, no batching.
            request = SampleRequest(**parsed.options, adapter=cached.adapter())
            return lambda: _sample_inline(reg, cached.base, request)

    async def work() -> SampleResult:
        try:
            source = await reg.sampler(target.key, target.base_model, target.model_path)
        except ApiError as exc:
            raise FutureFailure(str(exc), "user") from exc
        except ValueError as exc:
            raise FutureFailure(str(exc), "user") from exc
        source.last_seq_id = parsed.seq_id
        request = SampleRequest(**parsed.options, adapter=source.adapter())
        if reg.zero_compute:
            return _sample_inline(reg, source.base, request)
        try:
            return await reg.batcher(source.base).sample(request)
        except ValueError as exc:
            raise FutureFailure(str(exc), "user") from exc

    return work


def _limited(
    ctx: ServerContext, request: web.Request, target: _Target, request_id: str,
    work: Callable[[], SampleResult | Awaitable[SampleResult]],
) -> web.Response | Callable[[], Any]:
    """Under a sampling capacity: the 429 for a backpressure submit above it, else the
    work wrapped to hold (or wait for) a slot. Without one: ``work`` itself."""
    capacity = ctx.config.sample_capacity
    if not capacity.enabled:
        return work
    slots = sample_slots(ctx)
    bucket = (target.base_model, key_id(request.headers))
    holding = False
    if request.headers.get(BACKPRESSURE_HEADER) == "1":
        if not slots.try_take(capacity, bucket):
            return slots.refusal(capacity, bucket)
        holding = True
    return slots.wrap(work, ctx, bucket, request_id, holding)


# ---------------------------------------------------------------------------------- routes


async def asample(request: web.Request) -> web.Response:
    """``POST asample``: queue a sample; the answer carries its future's id."""
    ctx = context(request)
    reg = registry(ctx)
    key = request.headers.get(_IDEMPOTENCY_HEADER)
    if key is not None:
        earlier = reg.submits.get(key)
        if isinstance(earlier, dict):
            return json_response(earlier)
    parsed = _parse(await _read_sample(request, ctx))
    target = _target(ctx, reg, parsed)
    request_id = str(uuid.uuid4())
    sequence_ids = (
        [f"{request_id}:{i}" for i in range(parsed.options["num_samples"])]
        if ctx.dialect.sample_sequence_ids
        else None
    )
    work = _limited(ctx, request, target, request_id, _work(reg, target, parsed))
    if isinstance(work, web.Response):
        return work  # above capacity: 429
    ctx.futures.submit(
        work,
        kind="Sample",
        session_id=target.session_id,
        sampling_session_id=target.sampler_id,
        cloned_sampler_id=(parsed.seq_id or 0) // _CLONE_BLOCK,
        json_encoder=lambda result: sample_json(result, sequence_ids),
        proto_encoder=sample_proto,
        request_id=request_id,
    )
    answer: dict[str, Any] = {"request_id": request_id}
    if sequence_ids is not None:
        answer["sample_sequence_ids"] = sequence_ids
    reg.remember_submit(key, answer)
    return json_response(answer)


async def sample(request: web.Request) -> web.Response:
    """``POST sample`` (tinkercloud): the same request, answered when the sample is done."""
    ctx = context(request)
    reg = registry(ctx)
    parsed = _parse(await _read_sample(request, ctx))
    target = _target(ctx, reg, parsed)
    work = _limited(ctx, request, target, str(uuid.uuid4()), _work(reg, target, parsed))
    if isinstance(work, web.Response):
        return work  # above capacity: 429
    try:
        outcome = work()
        result = outcome if isinstance(outcome, SampleResult) else await outcome
    except FutureFailure as exc:
        raise bad_request(exc.message) from None
    sequence_ids = (
        [f"{uuid.uuid4()}:{i}" for i in range(len(result.sequences))]
        if ctx.dialect.sample_sequence_ids
        else None
    )
    return json_response(sample_json(result, sequence_ids))


ROUTES: tuple[Route, ...] = (
    route("POST", "/asample", asample),
    route("POST", "/sample", sample, when=lambda d: d.sync_sample),
)
