"""Conformance with the official ``tinker`` 0.38 SDK, generated from the SDK itself.

Every public name the official SDK exports (top-level ``tinker``, ``tinker.types``,
``tinker.lib.public_interfaces``), every public method of its client classes and of its
record types, and every record type's behaviour on generated good and bad inputs become
one case each, compared against ``tinker_async``. A new SDK release therefore shows up as
new failing cases, with readable ids such as ``test_sig[TrainingClient.forward_backward]``
or ``test_wrong_type[AdamParams.learning_rate]``.

Differences we keep on purpose are listed, with their reasons, in ``DELIBERATE`` below (a
deliberate case that still differs is reported as skipped with its reason); every other
difference fails. Optional parameters our methods add are allowed but must be listed in
``OUR_EXTRA_PARAMS``. The machinery lives in ``_conformance_table.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tinker")

import _conformance_table as ct
import tinker
import tinker.lib.public_interfaces as official_public
import tinker.types as official_types

import tinker_async
import tinker_async.types as our_types

# --------------------------------------------------------------------------------------
# The deliberate differences: case id (``*`` matches anything) -> why we differ.
# --------------------------------------------------------------------------------------

_NO_HTTPX = ("our errors carry status_code/method/url/request_id instead of httpx "
             "Request/Response objects: we do not use httpx")
_SEQUENCE_ID_OPTIONAL = (
    "sequence_id may be left out (None): servers that predate sample_sequence_ids omit it "
    "(design.md section 5)")
_CLOSED_OPTIMIZERS = (
    "a closed union of the optimizers a server can run (AdamParams | DimuonParams); the "
    "official open base class admits parameters no server understands")
_LENIENT_RESPONSES = (
    "response types decode answers of other Tinker-compatible servers, which leave out "
    "fields the official service always sends; those fields have defaults here")
_OTHER_SERVERS_FIELDS = (
    "extra fields that other servers send (Twinkle's twinkle_path, tinkercloud's "
    "capabilities, sizes); unknown to the official types, ignored by nothing here")
_RESPONSE_TAGS = (
    "a response's type tag (and HealthResponse/TelemetryResponse status) is read as text: "
    "other servers send other values, and refusing an answer over its tag would fail calls "
    "that succeeded")
_FROZEN = (
    "assigning a field of a frozen type raises AttributeError (the msgspec and dataclass "
    "convention, and what the official dataclass types raise), not pydantic's "
    "ValidationError; either way the assignment is refused")
_TELEMETRY_TAG = (
    "telemetry events are a tagged union here: event is the tag, fixed per class")
_STRICT_DATUM = (
    "Datum refuses a model_input that is not a ModelInput at construction; the official "
    "dataclass keeps anything and fails later, when encoding")
_TENSOR_DATA = (
    "TensorData is backed by one numpy array: data is derived from it, and shape and the "
    "sparse index lists are checked and converted at construction (the official dataclass "
    "keeps whatever it is given)")

# Pydantic models with no settable field to try (a tag only): no frozen case is made.
_NO_FROZEN_CASE = frozenset({
    "AccessibleSearchOwner", "ActiveSessionStatusQuery", "AdamOptimizerConfig",
    "CancelledSessionStatusQuery", "ClientSessionFinishErrored",
    "ClientSessionFinishInterrupted", "ClientSessionFinishSuccess",
    "FailedSessionStatusQuery", "OwnSearchOwner", "SessionActive", "SessionHeartbeatResponse",
})

DELIBERATE: dict[str, str] = {
    **{f"frozen[{name}]": _FROZEN for name in ct.pydantic_model_names()
       if name not in _NO_FROZEN_CASE},
    "row[EncodedTextChunk.tokens=numpy]":
        "we accept numpy token arrays (tokenizers and samplers hand them out); the "
        "official pydantic model rejects them",
    "row[ModelInput.from_ints(numpy)]":
        "we accept numpy token arrays (see EncodedTextChunk)",
    "sig[TrainingClient.__init__]":
        "internal constructor: users get training clients from ServiceClient; ours takes "
        "the owning ServiceClient instead of the SDK's InternalClientHolder",
    "sig[SamplingClient.__init__]":
        "internal constructor: users get sampling clients from ServiceClient/TrainingClient "
        "or SamplingClient.from_sampler_handle",
    **{f"sig[{name}.__init__]": _NO_HTTPX for name in (
        "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError",
        "APIResponseValidationError", "BadRequestError", "AuthenticationError",
        "BillingError", "PermissionDeniedError", "NotFoundError", "ConflictError",
        "UnprocessableEntityError", "RateLimitError", "InternalServerError")},
    "exists[tinker.Timeout]":
        "httpx.Timeout; no client method takes it and we do not use httpx (timeouts are "
        "ServiceClient(timeout=..., connect_timeout=...))",
    "exists[tinker.RequestOptions]":
        "the Stainless per-request options TypedDict; no high-level method takes it",
    "prop[ServiceClient.holder]":
        "deprecated accessor of the SDK's InternalClientHolder, which we do not have",
    # -- widenings: everything the official SDK accepts works here too ------------------
    "sig[ServiceClient.close]":
        "status defaults to 'success', so close() needs no argument (as async with does)",
    "sig[RequestFailedError.__init__]":
        "request_id and category have defaults, so the error can be raised and pickled "
        "without them; the official arguments work unchanged",
    "sig[types.SampledSequence.__init__]": _SEQUENCE_ID_OPTIONAL,
    "defaults[SampledSequence]": _SEQUENCE_ID_OPTIONAL,
    "missing[SampledSequence.sequence_id]": _SEQUENCE_ID_OPTIONAL,
    "dcparams[SampledSequence]":
        "not frozen: the client writes each sequence's id in after decoding (servers send "
        "sample_sequence_ids beside the result); so not hashable either",
    "hash[SampledSequence]": "see dcparams[SampledSequence]",
    "dcparams[SampleResponse]": "not frozen, like its sequences (see SampledSequence)",
    "hash[EncodedTextChunk]":
        "ours hashes (by its tokens) so chunks can be set members and dict keys; the "
        "official model holds a list and is unhashable",
    "alias[OptimParams]": _CLOSED_OPTIMIZERS,
    "alias[OptimizerConfig]": _CLOSED_OPTIMIZERS,
    # -- lenient responses: what other Tinker-compatible servers send decodes too --------
    **{case: _LENIENT_RESPONSES for case in (
        "missing[AuditLogResponse.entries]",
        "missing[BillingUsageResponse.data]",
        "missing[Checkpoint.tinker_path]",
        "missing[CheckpointsListResponse.checkpoints]",
        "missing[CreateSessionRequest.user_metadata]",
        "missing[CurrentCheckpointStorageUsageResponse.data]",
        "missing[Cursor.limit]",
        "missing[Cursor.offset]",
        "missing[Cursor.total_count]",
        "missing[FuturesRetrieveResponse.completions]",
        "missing[FuturesRetrieveResponse.cursor]",
        "missing[GetInfoResponse.model_data]",
        "missing[GetInfoResponse.model_id]",
        "missing[GetServerCapabilitiesResponse.supported_models]",
        "missing[GetSessionResponse.sampler_ids]",
        "missing[GetSessionResponse.training_run_ids]",
        "missing[HealthResponse.status]",
        "missing[ListSessionsResponse.sessions]",
        "missing[RequestFailedResponse.category]",
        "missing[SessionSearchResponse.sessions]",
        "missing[SessionSummary.checkpoints_count]",
        "missing[TelemetryResponse.status]",
        "missing[TrainingRunsResponse.cursor]",
        "missing[TrainingRunsResponse.training_runs]",
        "missing[WeightsInfoResponse.is_lora]",
        "defaults[AuditLogResponse]",
        "defaults[BillingUsageResponse]",
        "defaults[Checkpoint]",
        "defaults[CheckpointsListResponse]",
        "defaults[CreateSessionRequest]",
        "defaults[CurrentCheckpointStorageUsageResponse]",
        "defaults[Cursor]",
        "defaults[FuturesRetrieveResponse]",
        "defaults[GetInfoResponse]",
        "defaults[GetServerCapabilitiesResponse]",
        "defaults[GetSessionResponse]",
        "defaults[HealthResponse]",
        "defaults[ListSessionsResponse]",
        "defaults[OptimStepRequest]",
        "defaults[RequestFailedResponse]",
        "defaults[SessionSearchResponse]",
        "defaults[SessionSummary]",
        "defaults[TelemetryResponse]",
        "defaults[TrainingRunsResponse]",
        "defaults[WeightsInfoResponse]",
    )},
    **{case: _OTHER_SERVERS_FIELDS for case in (
        "fields[Checkpoint]",
        "fields[GetServerCapabilitiesResponse]",
        "fields[HealthResponse]",
        "fields[SaveWeightsForSamplerResponseInternal]",
        "fields[SaveWeightsResponse]",
        "dump[Checkpoint]",
        "dump[CheckpointsListResponse]",
        "dump[GetServerCapabilitiesResponse]",
        "dump[HealthResponse]",
        "dump[OptimStepRequest]",
        "dump[SaveWeightsForSamplerResponseInternal]",
        "dump[SaveWeightsResponse]",
    )},
    "fields[OptimStepRequest]":
        "optimizer_params carries DimuonParams (the official request sends only "
        "adam_params; the service reads both)",
    **{case: _RESPONSE_TAGS for case in (
        "wrong_type[GetInfoResponse.type]",
        "wrong_type[LoadWeightsResponse.type]",
        "wrong_type[SaveWeightsExternalResponse.type]",
        "wrong_type[SaveWeightsExternalResponseInternal.type]",
        "wrong_type[SaveWeightsForSamplerResponse.type]",
        "wrong_type[SaveWeightsForSamplerResponseInternal.type]",
        "wrong_type[SaveWeightsResponse.type]",
        "wrong_type[UnloadModelResponse.type]",
        "wrong_type[HealthResponse.status]",
        "wrong_type[TelemetryResponse.status]",
    )},
    **{case: _TELEMETRY_TAG for case in (
        "fields[SessionStartEvent]",
        "fields[SessionEndEvent]",
        "fields[UnhandledExceptionEvent]",
        "row[SessionEndEvent.event=SESSION_START]",
        "missing[SessionEndEvent.event]",
        "missing[SessionStartEvent.event]",
        "missing[UnhandledExceptionEvent.event]",
    )},
    # -- stricter where the official dataclasses keep what would fail later ---------------
    "none[Datum.model_input]": _STRICT_DATUM,
    "wrong_type[Datum.model_input]": _STRICT_DATUM,
    "row[Datum.model_input=list]": _STRICT_DATUM,
    "row[Datum.unknown-key-list]":
        "a plain list under a loss_fn_inputs key we do not know becomes a float32 tensor "
        "(custom and third-party losses take extra inputs); the official dataclass raises "
        "KeyError",
    **{case: _TENSOR_DATA for case in (
        "wrong_type[TensorData.sparse_col_indices]",
        "wrong_type[TensorData.sparse_crow_indices]",
        "copy[TensorData.shape]",
        "copy[TensorData.sparse_col_indices]",
        "copy[TensorData.sparse_crow_indices]",
        "fields[TensorData]",
        "defaults[TensorData]",
    )},
}

# Optional parameters our callables add to the official ones (allowed, but listed here so
# that every addition to the official surface is a decision).
OUR_EXTRA_PARAMS: dict[str, set[str]] = {
    "ServiceClient.__init__": {"tags", "dialect", "route_prefix", "timeout",
                               "connect_timeout", "max_retries", "heartbeat_interval",
                               "connection_limit", "control_timeout", "call_timeout",
                               "progress_timeout", "waiting_log_after"},
    # admission control: a fixed concurrency limit for users who know their quota
    "ServiceClient.create_sampling_client": {"max_concurrency"},
    "ServiceClient.create_sampling_client_async": {"max_concurrency"},
    "RestClient.__init__": {"dialect", "route_prefix", "**options"},
    "AdminClient.__init__": {"dialect", "route_prefix", "**options"},
    "RestClient.export_session_trace": {"poll_interval", "timeout"},
    "RestClient.export_session_trace_async": {"poll_interval", "timeout"},
    "types.SampleResponse.__init__": {"prompt_logprobs", "topk_prompt_logprobs"},
    "types.SampledSequence.__init__": {"tokens", "logprobs", "topk_logprobs"},
}


def _matches(pattern: str, case_id: str) -> bool:
    """``*`` is the only wildcard (ids contain brackets, which fnmatch would read)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, case_id) is not None


def deliberate_reason(case_id: str) -> str | None:
    for pattern, reason in DELIBERATE.items():
        if _matches(pattern, case_id):
            return reason
    return None


def check(case_id: str, problems: list[str]) -> None:
    """Fail with the problems, unless the difference is a listed deliberate one (then
    skip with its reason; a deliberate case that conforms fails, so the entry goes)."""
    reason = deliberate_reason(case_id)
    if not problems:
        if reason is not None:
            pytest.fail(f"{case_id} conforms now: remove it from DELIBERATE", pytrace=False)
        return
    if reason is not None:
        pytest.skip(f"deliberate difference: {reason}")
    pytest.fail(f"{case_id}: " + "; ".join(problems), pytrace=False)


def params(ids: list[str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("name", ids, ids=ids)


# --------------------------------------------------------------------------------------
# Names and their placement
# --------------------------------------------------------------------------------------

TOP_LEVEL = ct.official_top_level_names()
TYPES = ct.official_types_names()
PUBLIC_INTERFACES = ct.official_public_interfaces_names()
EXISTS = ([f"tinker.{n}" for n in TOP_LEVEL] + [f"tinker.types.{n}" for n in TYPES]
          + [f"tinker.lib.public_interfaces.{n}" for n in PUBLIC_INTERFACES]
          + ["tinker.types.tensor_data.TensorData"])
# ``tinker.lib.public_interfaces.X`` lives at our top level (install_as_tinker maps it).
_OUR_MODULE = {"tinker": "tinker_async", "tinker.types": "tinker_async.types",
               "tinker.lib.public_interfaces": "tinker_async",
               "tinker.types.tensor_data": "tinker_async.types.tensor_data"}


_ABSENT = object()


def _our_object(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(_OUR_MODULE[module]), attr, _ABSENT)


@params(EXISTS)
def test_exists(name: str) -> None:
    """The name exists here, in the matching module."""
    module, _, attr = name.rpartition(".")
    problems = [] if _our_object(name) is not _ABSENT else [
        f"{_OUR_MODULE[module]}.{attr} does not exist"]
    check(f"exists[{name}]", problems)


SAME_OBJECT = [n for n in TOP_LEVEL if getattr(official_types, n, None) is getattr(tinker, n)]


@params(SAME_OBJECT)
def test_same_object(name: str) -> None:
    """``tinker.X is tinker.types.X`` (code mixes both in isinstance checks)."""
    ours_top, ours_types = getattr(tinker_async, name, None), getattr(our_types, name, None)
    problems = [] if ours_top is not None and ours_top is ours_types else [
        "tinker_async.X is not tinker_async.types.X"]
    check(f"same_object[{name}]", problems)


def _exported_classes() -> dict[str, type]:
    out: dict[str, type] = {}
    for module, names in ((tinker, TOP_LEVEL), (official_public, PUBLIC_INTERFACES)):
        for n in names:
            value = getattr(module, n)
            if (isinstance(value, type) and ct.defined_in_sdk(value)
                    and not ct.is_type_class(getattr(official_types, n, None))):
                out[n] = value
    return out


EXPORTED_CLASSES = _exported_classes()


@params(sorted(EXPORTED_CLASSES))
def test_bases(name: str) -> None:
    """Our class derives from the same exported classes and builtin bases (``except``
    clauses and ``isinstance`` checks depend on it)."""
    official = EXPORTED_CLASSES[name]
    ours = getattr(tinker_async, name, None)
    if not isinstance(ours, type):
        check(f"bases[{name}]", [f"tinker_async.{name} is not a class"])
        return
    problems = []
    for base in official.__mro__[1:]:
        if base.__module__ == "builtins":
            if base is not object and not issubclass(ours, base):
                problems.append(f"not a subclass of {base.__name__}")
        elif EXPORTED_CLASSES.get(base.__name__) is base:
            our_base = getattr(tinker_async, base.__name__, None)
            if not (isinstance(our_base, type) and issubclass(ours, our_base)):
                problems.append(f"not a subclass of {base.__name__}")
    check(f"bases[{name}]", problems)


CLASS_ATTRS = [f"{n}.{a}" for n, c in sorted(EXPORTED_CLASSES.items())
               for a, v in vars(c).items()
               if not a.startswith("_") and isinstance(v, (int, str, bool))]


@params(CLASS_ATTRS)
def test_class_attr(name: str) -> None:
    """Class-level constants, e.g. ``BadRequestError.status_code == 400``."""
    cls, attr = name.split(".")
    official = getattr(EXPORTED_CLASSES[cls], attr)
    ours = getattr(getattr(tinker_async, cls, None), attr, _ABSENT)
    if ours is _ABSENT:
        problems = [f"no class attribute {attr} here (official {official!r})"]
    else:
        problems = [] if ours == official else [f"{ours!r} (official {official!r})"]
    check(f"class_attr[{name}]", problems)


# --------------------------------------------------------------------------------------
# Methods: parameters and return kinds
# --------------------------------------------------------------------------------------


def _member_owners() -> dict[str, tuple[type, Any]]:
    """Display prefix -> (official class, our class or None) for every class whose
    members we walk: the clients and APIFuture, the exceptions (constructors), LossHandle
    and every record type of ``tinker.types``. The Backcompat*/Awaitable* futures are
    checked through their bases: their members are the clients' and APIFuture's."""
    out: dict[str, tuple[type, Any]] = {}
    for n in ct.CLIENT_CLASSES:
        out[n] = (getattr(tinker, n), getattr(tinker_async, n, None))
    for n, c in EXPORTED_CLASSES.items():
        if n in out or n.startswith(("Backcompat", "Awaitable")):
            continue
        out[n] = (c, getattr(tinker_async, n, None))
    for n in ct.type_class_names():
        out[f"types.{n}"] = (getattr(official_types, n), getattr(our_types, n, None))
    return out


OWNERS = _member_owners()


def _members(kind: str) -> Iterator[str]:
    for prefix, (official, _) in OWNERS.items():
        only_init = issubclass(official, BaseException)
        for member in ct.public_members(official):
            if only_init and member != "__init__":
                continue
            if ct.member_kind(official, member) == kind:
                yield f"{prefix}.{member}"


AUTH_FUNCTIONS = sorted(n for n, v in vars(tinker.auth).items()
                        if inspect.isfunction(v) and v.__module__ == tinker.auth.__name__
                        and not n.startswith("_"))
SIGS = list(_members("callable")) + [f"auth.{n}" for n in AUTH_FUNCTIONS]
PROPS = list(_members("property"))


def _pair(name: str) -> tuple[Any, Any, str]:
    prefix, _, member = name.rpartition(".")
    if prefix == "auth":
        return tinker.auth, getattr(tinker_async, "auth", None), member
    official, ours = OWNERS[prefix]
    return official, ours, member


@params(SIGS)
def test_sig(name: str) -> None:
    """Parameter names, kinds, positions and defaults equal the official ones (``self``
    included); extra optional parameters of ours must be listed in OUR_EXTRA_PARAMS."""
    official_owner, our_owner, member = _pair(name)
    if our_owner is None or inspect.getattr_static(our_owner, member, None) is None:
        check(f"sig[{name}]", [f"{name} does not exist here"])
        return
    theirs = inspect.signature(ct.callable_of(official_owner, member))
    try:
        mine = inspect.signature(ct.callable_of(our_owner, member))
    except (TypeError, ValueError) as exc:
        check(f"sig[{name}]", [f"ours has no signature: {exc}"])
        return
    diff = ct.compare_signatures(theirs, mine)
    listed = OUR_EXTRA_PARAMS.get(name, set())
    unlisted = [e for e in diff.extras if e not in listed]
    problems = diff.problems + [f"extra parameter {e!r} not listed in OUR_EXTRA_PARAMS"
                                for e in unlisted]
    problems += [f"{e!r} is listed in OUR_EXTRA_PARAMS but is no extra parameter"
                 for e in sorted(listed - set(diff.extras))]
    check(f"sig[{name}]", problems)


@params(PROPS)
def test_prop(name: str) -> None:
    """Official properties are attributes here too (not methods)."""
    _, our_owner, member = _pair(name)
    raw = inspect.getattr_static(our_owner, member, None) if our_owner is not None else None
    if raw is None:
        problems = [f"{name} does not exist here"]
    elif inspect.isfunction(raw) or isinstance(raw, (staticmethod, classmethod)):
        problems = [f"{name} is a method here, a property in the official SDK"]
    else:
        problems = []
    check(f"prop[{name}]", problems)


KINDS = [n for n in _members("callable")
         if n.split(".")[0] in ct.CLIENT_CLASSES and not n.rpartition(".")[2].startswith("_")]


@params(KINDS)
def test_kind(name: str) -> None:
    """The return kind (APIFuture / value / coroutine->value / coroutine->APIFuture) of
    every public client method, plain and ``_async``, equals the official one."""
    official_owner, our_owner, member = _pair(name)
    official = ct.return_kind(ct.callable_of(official_owner, member))
    if our_owner is None or inspect.getattr_static(our_owner, member, None) is None:
        check(f"kind[{name}]", [f"{name} does not exist here (official: {official})"])
        return
    ours = ct.return_kind(ct.callable_of(our_owner, member))
    check(f"kind[{name}]", [] if ours == official else [f"{ours} (official {official})"])


@params(KINDS)
def test_doc_kind(name: str) -> None:
    """The kind read off the official annotations is the one the reference documents (a
    check of the derivation, and a flag for methods a new SDK adds)."""
    official_owner, _, member = _pair(name)
    derived = ct.return_kind(ct.callable_of(official_owner, member))
    documented = ct.DOCUMENTED_KINDS.get(name)
    if documented is None:
        problems = [f"not in the reference's tables (derived: {derived})"]
    else:
        problems = [] if derived == documented else [f"derived {derived}, documented "
                                                     f"{documented}"]
    check(f"doc_kind[{name}]", problems)


# --------------------------------------------------------------------------------------
# Aliases, enums and record types: shape
# --------------------------------------------------------------------------------------

ALIASES = [*ct.alias_names(), "PerDatumLossFn"]


@params(ALIASES)
def test_alias(name: str) -> None:
    """Literal members, union members (by class name) and enum members are the same."""
    official = getattr(official_types, name, None) or getattr(tinker, name)
    ours = getattr(our_types, name, None) or getattr(tinker_async, name, None)
    if ours is None:
        check(f"alias[{name}]", [f"{name} does not exist here"])
        return
    theirs, mine = ct.alias_shape(official), ct.alias_shape(ours)
    check(f"alias[{name}]", [] if theirs == mine else [f"{mine} vs official {theirs}"])


TYPE_CLASSES = ct.type_class_names()
RECORDS = [*TYPE_CLASSES, "LossHandle"]


def _record_pair(name: str) -> tuple[type, Any]:
    if name == "LossHandle":
        return tinker.LossHandle, getattr(tinker_async, "LossHandle", None)
    return getattr(official_types, name), getattr(our_types, name, None)


@params(RECORDS)
def test_fields(name: str) -> None:
    """Same public field names (the literal ``type`` tag is checked by test_tag)."""
    official, ours = _record_pair(name)
    if ours is None:
        check(f"fields[{name}]", [f"{name} does not exist here"])
        return
    tags = set(ct.tag_fields(official)) if official is not tinker.LossHandle else set()
    theirs, mine = set(ct.official_fields(official)), set(ct.our_fields(ours)) - tags
    problems = []
    if theirs - mine:
        problems.append(f"missing fields {sorted(theirs - mine)}")
    if mine - theirs:
        problems.append(f"extra fields {sorted(mine - theirs)}")
    check(f"fields[{name}]", problems)


@params(RECORDS)
def test_defaults(name: str) -> None:
    """Same default (or required-ness) for every common field."""
    official, ours = _record_pair(name)
    if ours is None:
        check(f"defaults[{name}]", [f"{name} does not exist here"])
        return
    theirs, mine = ct.official_fields(official), ct.our_fields(ours)
    problems = []
    for field in sorted(set(theirs) & set(mine)):
        diff = ct.canon_diff(ct.canon(theirs[field]), ct.canon(mine[field]))
        if diff:
            problems.append(f"{field}: {mine[field]!r} (official {theirs[field]!r})")
    check(f"defaults[{name}]", problems)


TAGGED = [f"{n}.{f}" for n in TYPE_CLASSES for f in ct.tag_fields(getattr(official_types, n))]


@params(TAGGED)
def test_tag(name: str) -> None:
    """A literal discriminator (``type``, ``state``): readable on the class and instances
    with the official value, and accepted as a constructor argument
    (``T(..., type="...")``), as pydantic accepts it."""
    cls_name, field = name.split(".")
    value = ct.tag_value(getattr(official_types, cls_name), field)
    ours = getattr(our_types, cls_name, None)
    problems = []
    mine = ct.our_fields(ours).get(field, getattr(ours, field, None)) if ours else None
    if mine != value:
        problems.append(f"{cls_name}.{field} is {mine!r} (official {value!r})")
    try:
        kwargs = ct.good_kwargs(cls_name)
    except ct.Unsupported as exc:
        problems.append(f"no generated input: {exc}")
    else:
        problems += ct.in_both(ct.build(ct.New(cls_name, {**kwargs, field: value})))
    check(f"tag[{name}]", problems)


@params(RECORDS)
def test_dataclass(name: str) -> None:
    """Dataclass where the official type is a dataclass (``dataclasses.replace`` works),
    and not where it is a pydantic model."""
    official, ours = _record_pair(name)
    theirs, mine = dataclasses.is_dataclass(official), dataclasses.is_dataclass(ours)
    check(f"dataclass[{name}]", [] if theirs == mine else [
        f"is_dataclass: {mine} (official {theirs})"])


DATACLASSES = [n for n in RECORDS if dataclasses.is_dataclass(_record_pair(n)[0])]


@params(DATACLASSES)
def test_dcparams(name: str) -> None:
    """The same ``frozen`` and ``eq`` dataclass flags."""
    official, ours = _record_pair(name)
    if not dataclasses.is_dataclass(ours):
        check(f"dcparams[{name}]", ["not a dataclass here"])
        return
    problems = []
    for flag in ("frozen", "eq"):
        theirs = getattr(vars(official)["__dataclass_params__"], flag)
        mine = getattr(vars(ours)["__dataclass_params__"], flag)
        if theirs != mine:
            problems.append(f"{flag}={mine} (official {theirs})")
    check(f"dcparams[{name}]", problems)


# --------------------------------------------------------------------------------------
# Record types: generated behaviour on good and bad inputs
# --------------------------------------------------------------------------------------


def _behaviour_cases() -> dict[str, dict[str, ct.TypeCase]]:
    groups: dict[str, dict[str, ct.TypeCase]] = {}
    for name in TYPE_CLASSES:
        for case in ct.type_behaviour_cases(name):
            kind, _, rest = case.id.partition("[")
            groups.setdefault(kind, {})[rest[:-1]] = case
    return groups


BEHAVIOUR = _behaviour_cases()


def _behave(kind: str, name: str) -> None:
    case = BEHAVIOUR[kind][name]
    if case.setup_error is not None:
        check(case.id, [case.setup_error])
        return
    check(case.id, ct.in_both(case.probe))


@params(sorted(BEHAVIOUR.get("construct", {})))
def test_construct(name: str) -> None:
    """A generated valid instance (required fields only) builds alike, same values."""
    _behave("construct", name)


@params(sorted(BEHAVIOUR.get("missing", {})))
def test_missing(name: str) -> None:
    """Leaving out a required field fails alike (a ValueError where pydantic's
    ValidationError is raised)."""
    _behave("missing", name)


@params(sorted(BEHAVIOUR.get("wrong_type", {})))
def test_wrong_type(name: str) -> None:
    """A wrong-typed field value (a non-numeric string for a number, a number for a
    string, an opaque object for the rest) is rejected or accepted alike."""
    _behave("wrong_type", name)


@params(sorted(BEHAVIOUR.get("none", {})))
def test_none(name: str) -> None:
    """None for a non-optional field is rejected or accepted alike."""
    _behave("none", name)


@params(sorted(BEHAVIOUR.get("copy", {})))
def test_copy(name: str) -> None:
    """The caller's list/dict is copied (or kept) alike: mutating it afterwards changes
    the instance in both or in neither."""
    _behave("copy", name)


@params(sorted(BEHAVIOUR.get("extra_field", {})))
def test_extra_field(name: str) -> None:
    """An unknown keyword is rejected (request models) or ignored (response models)
    alike."""
    _behave("extra_field", name)


@params(sorted(BEHAVIOUR.get("eq", {})))
def test_eq(name: str) -> None:
    """Two instances built from equal inputs compare equal alike."""
    _behave("eq", name)


@params(sorted(BEHAVIOUR.get("hash", {})))
def test_hash(name: str) -> None:
    """Hashable alike, with equal hashes for equal instances."""
    _behave("hash", name)


@params(sorted(BEHAVIOUR.get("pickle", {})))
def test_pickle(name: str) -> None:
    """A pickle round trip gives the same type and field values (and ``==``) alike."""
    _behave("pickle", name)


@params(sorted(BEHAVIOUR.get("frozen", {})))
def test_frozen(name: str) -> None:
    """Assigning a field is refused (frozen) alike."""
    _behave("frozen", name)


@params(sorted(BEHAVIOUR.get("dump", {})))
def test_dump(name: str) -> None:
    """``model_dump(mode="json")`` gives the same dict."""
    _behave("dump", name)


@params(sorted(BEHAVIOUR.get("validate", {})))
def test_validate(name: str) -> None:
    """``T.model_validate`` of the official JSON dump gives the same values."""
    _behave("validate", name)


# --------------------------------------------------------------------------------------
# Hand-written rows for the types real code builds most
# --------------------------------------------------------------------------------------

Row = tuple[Callable[[ct.World], Any], Callable[[Any], Any]]


def _mi(world: ct.World, tokens: Any) -> Any:
    return world.type_("ModelInput").from_ints(tokens)


def _tokens(chunk: Any) -> Any:
    return list(chunk.tokens)


def _tensor(td: Any) -> Any:
    return (td.dtype, td.shape, td.tolist())


def _datum_inputs(datum: Any) -> Any:
    return {k: (v.dtype, v.shape, v.tolist()) for k, v in datum.loss_fn_inputs.items()}


def _chunk(world: ct.World, tokens: Any) -> Any:
    return world.type_("EncodedTextChunk")(tokens=tokens)


def _datum(**inputs: Any) -> Callable[[ct.World], Any]:
    def make(world: ct.World) -> Any:
        return world.type_("Datum")(model_input=_mi(world, [1, 2, 3]),
                                    loss_fn_inputs=dict(inputs))
    return make


def _td(**kwargs: Any) -> Callable[[ct.World], Any]:
    return lambda world: world.type_("TensorData")(**kwargs)


def _type(name: str, **kwargs: Any) -> Callable[[ct.World], Any]:
    return lambda world: world.type_(name)(**kwargs)


ROWS: dict[str, Row] = {
    "EncodedTextChunk.tokens=list": (lambda w: _chunk(w, [1, 2, 3]), _tokens),
    "EncodedTextChunk.tokens=tuple": (lambda w: _chunk(w, (1, 2)), _tokens),
    "EncodedTextChunk.tokens=empty": (lambda w: _chunk(w, []), _tokens),
    "EncodedTextChunk.tokens=range": (lambda w: _chunk(w, range(3)), _tokens),
    "EncodedTextChunk.tokens=numpy": (lambda w: _chunk(w, np.arange(3)), _tokens),
    "EncodedTextChunk.tokens=numpy-ints": (lambda w: _chunk(w, [np.int64(4)]), _tokens),
    "EncodedTextChunk.tokens=numeric-strings": (lambda w: _chunk(w, ["1", "2"]), _tokens),
    "EncodedTextChunk.tokens=words": (lambda w: _chunk(w, ["a"]), _tokens),
    "EncodedTextChunk.tokens=str": (lambda w: _chunk(w, "abc"), _tokens),
    "EncodedTextChunk.tokens=fractional": (lambda w: _chunk(w, [1.5]), _tokens),
    "EncodedTextChunk.tokens=whole-floats": (lambda w: _chunk(w, [2.0]), _tokens),
    "EncodedTextChunk.tokens=bools": (lambda w: _chunk(w, [True]), _tokens),
    "EncodedTextChunk.tokens=None": (lambda w: _chunk(w, None), _tokens),
    "EncodedTextChunk.length": (lambda w: _chunk(w, [5, 6]).length, ct.canon),
    "ModelInput.from_ints(list)": (lambda w: _mi(w, [1, 2, 3]), lambda m: m.to_ints()),
    "ModelInput.from_ints(empty)": (lambda w: _mi(w, []), lambda m: (m.to_ints(), m.length)),
    "ModelInput.from_ints(range)": (lambda w: _mi(w, range(3)), lambda m: m.to_ints()),
    "ModelInput.from_ints(numpy)": (lambda w: _mi(w, np.arange(3)), lambda m: m.to_ints()),
    "ModelInput.from_ints(words)": (lambda w: _mi(w, ["a"]), lambda m: m.to_ints()),
    "ModelInput.from_ints(None)": (lambda w: _mi(w, None), lambda m: m.to_ints()),
    "ModelInput.append_int": (lambda w: _mi(w, [1]).append_int(2),
                              lambda m: (m.to_ints(), m.length, len(m.chunks))),
    "ModelInput.append": (lambda w: _mi(w, [1]).append(_chunk(w, [2, 3])),
                          lambda m: (m.to_ints(), len(m.chunks))),
    "ModelInput.empty": (lambda w: w.type_("ModelInput").empty(), lambda m: m.length),
    "ModelInput.chunks=dicts": (
        lambda w: w.type_("ModelInput")(chunks=[{"type": "encoded_text", "tokens": [1]}]),
        lambda m: m.to_ints()),
    "ModelInput.chunks=ints": (lambda w: w.type_("ModelInput")(chunks=[1]), ct.canon),
    "ModelInput.to_ints(image)": (
        lambda w: w.type_("ModelInput")(chunks=[w.type_("ImageChunk")(
            data=b"\x89PNG", format="png", expected_tokens=4)]).to_ints(), ct.canon),
    "ModelInput.length(image-without-expected_tokens)": (
        lambda w: w.type_("ModelInput")(chunks=[w.type_("ImageChunk")(
            data=b"\x89PNG", format="png")]).length, ct.canon),
    "SamplingParams()": (_type("SamplingParams"), ct.canon),
    "SamplingParams.max_tokens=numeric-string": (_type("SamplingParams", max_tokens="10"),
                                                 ct.canon),
    "SamplingParams.max_tokens=whole-float": (_type("SamplingParams", max_tokens=2.0),
                                              ct.canon),
    "SamplingParams.max_tokens=fractional": (_type("SamplingParams", max_tokens=2.5),
                                             ct.canon),
    "SamplingParams.temperature=int": (_type("SamplingParams", temperature=0), ct.canon),
    "SamplingParams.temperature=word": (_type("SamplingParams", temperature="hot"), ct.canon),
    "SamplingParams.stop=str": (_type("SamplingParams", stop="\n"), ct.canon),
    "SamplingParams.stop=strs": (_type("SamplingParams", stop=["a", "b"]), ct.canon),
    "SamplingParams.stop=ints": (_type("SamplingParams", stop=[1, 2]), ct.canon),
    "SamplingParams.stop=empty": (_type("SamplingParams", stop=[]), ct.canon),
    "SamplingParams.stop=tuple": (_type("SamplingParams", stop=("a",)), ct.canon),
    "SamplingParams.stop=int": (_type("SamplingParams", stop=123), ct.canon),
    "SamplingParams.stop=mixed": (_type("SamplingParams", stop=["a", 1]), ct.canon),
    "SamplingParams.top_k=fractional": (_type("SamplingParams", top_k=1.5), ct.canon),
    "SamplingParams.top_p=word": (_type("SamplingParams", top_p="x"), ct.canon),
    "SamplingParams.seed=word": (_type("SamplingParams", seed="x"), ct.canon),
    "SamplingParams.unknown-keyword": (_type("SamplingParams", foo=1), ct.canon),
    "SamplingParams.positional": (lambda w: w.type_("SamplingParams")(10), ct.canon),
    "AdamParams()": (_type("AdamParams"), ct.canon),
    "AdamParams.learning_rate=int": (_type("AdamParams", learning_rate=1), ct.canon),
    "AdamParams.learning_rate=numeric-string": (_type("AdamParams", learning_rate="0.1"),
                                                ct.canon),
    "AdamParams.learning_rate=word": (_type("AdamParams", learning_rate="fast"), ct.canon),
    "AdamParams.learning_rate=numpy-float": (
        _type("AdamParams", learning_rate=np.float32(0.5)), ct.canon),
    "AdamParams.beta1=None": (_type("AdamParams", beta1=None), ct.canon),
    "AdamParams.unknown-keyword": (_type("AdamParams", lr=0.1), ct.canon),
    "AdamParams.positional": (lambda w: w.type_("AdamParams")(0.1), ct.canon),
    "Datum.lists": (_datum(target_tokens=[2, 3, 4], weights=[1.0, 1.0, 0.0]), _datum_inputs),
    "Datum.int-weights": (_datum(weights=[1, 0, 1]), _datum_inputs),
    "Datum.numpy": (_datum(target_tokens=np.array([2, 3, 4]),
                           weights=np.ones(3, dtype=np.float64)), _datum_inputs),
    "Datum.tensordata": (
        lambda w: w.type_("Datum")(model_input=_mi(w, [1]), loss_fn_inputs={
            "target_tokens": w.type_("TensorData")(data=[2], dtype="int64")}),
        _datum_inputs),
    "Datum.rl-keys": (_datum(target_tokens=[2, 3, 4], logprobs=[-1.0, -1.0, -1.0],
                             advantages=[0.5, 0.5, 0.5]), _datum_inputs),
    "Datum.2d-weights": (_datum(weights=[[1.0, 0.0], [0.0, 1.0]]), _datum_inputs),
    "Datum.unknown-key-list": (_datum(foo=[1.0]), _datum_inputs),
    "Datum.unknown-key-numpy": (_datum(foo=np.ones(2, dtype=np.float32)), _datum_inputs),
    "Datum.ragged": (_datum(weights=[[1.0], [1.0, 2.0]]), _datum_inputs),
    "Datum.no-inputs": (
        lambda w: w.type_("Datum")(model_input=_mi(w, [1])), _datum_inputs),
    "Datum.model_input=list": (
        lambda w: w.type_("Datum")(model_input=[1, 2], loss_fn_inputs={}), ct.canon),
    "Datum.one-span-list": (
        lambda w: w.type_("Datum")(model_input=_mi(w, [1]), model_input_spans=[]), ct.canon),
    "Datum.replace": (
        lambda w: dataclasses.replace(_datum(weights=[1.0, 1.0, 1.0])(w),
                                      loss_fn_inputs={"target_tokens": [1, 2, 3]}),
        _datum_inputs),
    "SessionEndEvent.event=SESSION_START": (
        lambda w: w.type_("SessionEndEvent")(
            event="SESSION_START", event_id="e", event_session_index=0, severity="INFO",
            timestamp=ct.AWARE_TIME, duration="1s"), ct.canon),
    "TensorData.float-list": (_td(data=[0.5, 1.5], dtype="float32"), _tensor),
    "TensorData.int-list": (_td(data=[1, 2], dtype="int64"), _tensor),
    "TensorData.shape": (_td(data=[1, 2, 3, 4], dtype="int64", shape=[2, 2]), _tensor),
    "TensorData.numpy-data": (_td(data=np.array([1.0, 2.0]), dtype="float32"), _tensor),
    "TensorData.no-dtype": (_td(data=[1, 2]), _tensor),
    "TensorData.float64": (_td(data=[1.0], dtype="float64"), _tensor),
    "TensorData.floats-as-int64": (_td(data=[1.5], dtype="int64"), _tensor),
    "TensorData.shape-mismatch": (_td(data=[1, 2, 3], dtype="int64", shape=[2]), _tensor),
    "TensorData.from_numpy(float64)": (
        lambda w: w.type_("TensorData").from_numpy(np.array([[1.0, 2.0]])), _tensor),
    "TensorData.from_numpy(int32)": (
        lambda w: w.type_("TensorData").from_numpy(np.array([1, 2], dtype=np.int32)),
        _tensor),
    "TensorData.from_numpy(bool)": (
        lambda w: w.type_("TensorData").from_numpy(np.array([True])), _tensor),
    "TensorData.to_numpy": (
        lambda w: w.type_("TensorData")(data=[1, 2], dtype="int64").to_numpy(),
        lambda a: (str(a.dtype), a.tolist())),
    "TensorData.data": (lambda w: w.type_("TensorData")(data=[1, 2], dtype="int64").data,
                        ct.canon),
    "TensorData.eq": (lambda w: w.type_("TensorData")(data=[1], dtype="int64")
                      == w.type_("TensorData")(data=[1], dtype="int64"), ct.canon),
}


@params(sorted(ROWS))
def test_row(name: str) -> None:
    """Hand-written inputs: outcome (and the viewed value) equal the official ones."""
    make, view = ROWS[name]
    check(f"row[{name}]", ct.in_both(make, view))


# --------------------------------------------------------------------------------------
# The tables themselves
# --------------------------------------------------------------------------------------


def _all_case_ids() -> set[str]:
    ids = {f"exists[{n}]" for n in EXISTS} | {f"same_object[{n}]" for n in SAME_OBJECT}
    ids |= {f"bases[{n}]" for n in EXPORTED_CLASSES} | {f"class_attr[{n}]" for n in CLASS_ATTRS}
    ids |= {f"sig[{n}]" for n in SIGS} | {f"prop[{n}]" for n in PROPS}
    ids |= {f"{k}[{n}]" for k in ("kind", "doc_kind") for n in KINDS}
    ids |= {f"alias[{n}]" for n in ALIASES} | {f"tag[{n}]" for n in TAGGED}
    ids |= {f"{k}[{n}]" for k in ("fields", "defaults", "dataclass") for n in RECORDS}
    ids |= {f"dcparams[{n}]" for n in DATACLASSES} | {f"row[{n}]" for n in ROWS}
    ids |= {case.id for group in BEHAVIOUR.values() for case in group.values()}
    return ids


def test_deliberate_entries_name_cases() -> None:
    """Every DELIBERATE pattern matches a generated case (no stale or misspelt entry)."""
    ids = _all_case_ids()
    stale = [p for p in DELIBERATE if not any(_matches(p, i) for i in ids)]
    assert not stale, f"DELIBERATE entries that match no case: {stale}"


def test_extra_params_entries_name_callables() -> None:
    stale = [k for k in OUR_EXTRA_PARAMS if k not in SIGS]
    assert not stale, f"OUR_EXTRA_PARAMS entries that name no compared callable: {stale}"


def test_documented_kinds_name_official_methods() -> None:
    """Every row of the reference's table names a method the official SDK has."""
    gone = [k for k in ct.DOCUMENTED_KINDS if k not in KINDS]
    assert not gone, f"documented methods the official SDK no longer has: {gone}"

