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

import numpy as np
from aiohttp import web

from ._capacity import BACKPRESSURE_HEADER, key_id, sample_slots
from ._errors import ApiError, bad_request, json_response
from ._futures import FutureFailure
from ._inputs import tensor_from_json, tokens_from_json
from ._model import BaseModel, SampleRequest, SampleResult, sample_many
from ._models import ModelRegistry, registry
from ._outputs import sample_json, sample_proto
from ._routing import Route, ServerContext, context, route
from ._validate import Fields, read_json_object

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


def _parse(body: dict[str, Any], strict: bool) -> _Parsed:
    """The sampling request of a JSON body (422 for wrong types, 400 for a bad prompt)."""
    fields = Fields(body, strict=strict)
    num_samples = fields.integer("num_samples", default=1, ge=1)
    prompt = fields.nested("prompt")
    if prompt is not None:
        prompt.opt_list("chunks")
    params = fields.nested("sampling_params", required=False)
    max_tokens = seed = None
    temperature, top_p, top_k = 1.0, 1.0, -1
    stop: Any = None
    if params is not None:
        max_tokens = params.opt_integer("max_tokens", ge=0)
        seed = params.opt_integer("seed")
        temperature_value = params.opt_number("temperature", ge=0)
        temperature = 1.0 if temperature_value is None else temperature_value
        top_p_value = params.opt_number("top_p")
        top_p = 1.0 if top_p_value is None else top_p_value
        top_k = params.integer("top_k", default=-1)
        params.ignore("stop")
        stop = body["sampling_params"].get("stop")
        if stop is not None and not isinstance(stop, (str, list)):
            params.add_issue("stop", "type_error", "Input should be a string or a list", stop)
    sampling_session_id = fields.opt_text("sampling_session_id")
    base_model = fields.opt_text("base_model")
    model_path = fields.opt_text("model_path")
    seq_id = fields.opt_integer("seq_id", ge=0)
    # ``include_prompt_logprobs`` is how some third-party clients spell it.
    prompt_logprobs = fields.flag("prompt_logprobs") or fields.flag("include_prompt_logprobs")
    topk_prompt = fields.integer("topk_prompt_logprobs", default=0, ge=0)
    topk_sample = fields.integer("topk_sample_logprobs", default=0, ge=0)
    alt_k = fields.integer("prompt_alt_tokens_k", default=0, ge=0)
    last_n = fields.opt_integer("prompt_logprobs_last_n", ge=1)
    fields.flag("record_stability_info")  # nothing to record in the local model
    fields.ignore("target_prompt_logprobs", "type")
    fields.finish()

    try:
        tokens = tokens_from_json(body["prompt"], "prompt")
        target = body.get("target_prompt_logprobs")
        target_ids = (
            None
            if target is None
            else tensor_from_json(target, "target_prompt_logprobs", "request", pad_value=-1)
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    options = {
        "prompt_tokens": tokens,
        "num_samples": num_samples,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "stop": stop,
        "seed": seed,
        "prompt_logprobs": prompt_logprobs,
        "topk_prompt_logprobs": topk_prompt,
        "topk_sample_logprobs": topk_sample,
        "prompt_logprobs_last_n": last_n,
        "target_prompt_logprobs": target_ids,
        "prompt_alt_tokens_k": alt_k,
    }
    return _Parsed(options, seq_id, sampling_session_id, base_model, model_path)


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
    parsed = _parse(await read_json_object(request), ctx.dialect.strict_fields)
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
    parsed = _parse(await read_json_object(request), ctx.dialect.strict_fields)
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
