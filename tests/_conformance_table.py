"""Machinery of ``test_conformance.py``: what the official ``tinker`` SDK exports, and how
to compare one of its names with ours.

Everything here is derived from the installed official SDK at collection time, so a new
SDK release turns into new (failing) cases without edits. The only hand-kept table is
``DOCUMENTED_KINDS``: the return kinds the reference (/work/shared/reference/
tinker-sdk-0.38.md §1.2-1.7) lists, used to check that reading kinds off the official
annotations gives the documented answer.

This module imports the official SDK; import it only after ``pytest.importorskip("tinker")``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import enum
import inspect
import pickle
import types as pytypes
import typing
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pydantic
import tinker
import tinker.lib.public_interfaces as official_public
import tinker.types as official_types

import tinker_async
import tinker_async.types as our_types

# --------------------------------------------------------------------------------------
# The two worlds
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class World:
    """One implementation: its top-level module and its ``types`` module."""

    name: str
    root: Any
    types: Any

    def type_(self, name: str) -> Any:
        return getattr(self.types, name)


OFFICIAL = World("official", tinker, official_types)
OURS = World("ours", tinker_async, our_types)

CLIENT_CLASSES = ("ServiceClient", "TrainingClient", "SamplingClient", "RestClient",
                  "AdminClient", "APIFuture")
# Dunder methods that are part of a class's public behaviour when the class defines them.
PUBLIC_DUNDERS = ("__init__", "__enter__", "__exit__", "__aenter__", "__aexit__", "__await__")
_MISSING = object()


def official_top_level_names() -> list[str]:
    return list(tinker.__all__)


def official_types_names() -> list[str]:
    """Every public name of ``tinker.types`` except its submodules."""
    names = []
    for name in dir(official_types):
        value = getattr(official_types, name)
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if isinstance(value, type(typing.TYPE_CHECKING)) or name == "annotations":
            continue  # bool constants and the __future__ import
        names.append(name)
    return sorted(names)


def official_public_interfaces_names() -> list[str]:
    return list(official_public.__all__)


def is_type_class(value: Any) -> bool:
    """A record type of ``tinker.types`` (pydantic model or dataclass)."""
    return isinstance(value, type) and (
        issubclass(value, pydantic.BaseModel) or dataclasses.is_dataclass(value))


def type_class_names() -> list[str]:
    return [n for n in official_types_names() if is_type_class(getattr(official_types, n))]


def pydantic_model_names() -> list[str]:
    """The record types that are pydantic models, with fields, in the official SDK."""
    return [n for n in type_class_names()
            if issubclass(cls := getattr(official_types, n), pydantic.BaseModel)
            and cls.model_fields]


def alias_names() -> list[str]:
    """Literal, Union and other typing aliases, and enums, of ``tinker.types``."""
    out = []
    for name in official_types_names():
        value = getattr(official_types, name)
        if is_type_class(value):
            continue
        out.append(name)
    return out


# --------------------------------------------------------------------------------------
# Members and signatures
# --------------------------------------------------------------------------------------


def defined_in_sdk(klass: type) -> bool:
    """Defined by the SDK itself. ``import tinker`` rewrites the ``__module__`` of every
    exported class to "tinker" (httpx's Timeout included), so look at its functions."""
    functions = [v for v in vars(klass).values() if inspect.isfunction(v)]
    module = functions[0].__module__ if functions else klass.__module__
    is_typeddict = issubclass(klass, dict) and hasattr(klass, "__total__")
    return module.startswith("tinker") and not is_typeddict


def public_members(cls: type) -> list[str]:
    """Public methods and properties of an official class, as the SDK defines them.

    Members inherited from pydantic or ``object`` are not the SDK's surface; dunders count
    only when a class of the SDK defines them.
    """
    names: set[str] = set()
    hooks = _pydantic_hooks(cls)
    for klass in cls.__mro__:
        if not defined_in_sdk(klass):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") and name not in PUBLIC_DUNDERS:
                continue
            if name.startswith("model_") or name in hooks:
                continue
            if isinstance(raw, (staticmethod, classmethod, property)) or inspect.isfunction(raw):
                names.add(name)
    return sorted(names)


def _pydantic_hooks(cls: type) -> set[str]:
    """Names of pydantic validators and serializers: wiring, not API."""
    decorators = getattr(cls, "__pydantic_decorators__", None)
    names: set[str] = set()
    for group in ("validators", "field_validators", "root_validators", "field_serializers",
                  "model_serializers", "model_validators"):
        names |= set(getattr(decorators, group, {}) or {})
    return names


def member_kind(cls: type, name: str) -> str:
    raw = inspect.getattr_static(cls, name, _MISSING)
    if raw is _MISSING:
        return "missing"
    if isinstance(raw, property) or type(raw).__name__ == "cached_property":
        return "property"
    if isinstance(raw, (staticmethod, classmethod)) or callable(raw):
        return "callable"
    return "attribute"


def callable_of(cls: type, name: str) -> Callable[..., Any]:
    """The member as a caller sees it: bound for class/static methods, plain for methods
    (so ``self`` is compared like any other parameter)."""
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, (staticmethod, classmethod)):
        return typing.cast(Callable[..., Any], getattr(cls, name))
    return typing.cast(Callable[..., Any], raw)


@dataclasses.dataclass
class SigDiff:
    problems: list[str]
    extras: list[str]


def _same_default(a: Any, b: Any) -> bool:
    if a is inspect.Parameter.empty or b is inspect.Parameter.empty:
        return a is b
    try:
        return bool(a == b) and type(a).__name__ == type(b).__name__
    except Exception:
        return repr(a) == repr(b)


def compare_signatures(official: inspect.Signature, ours: inspect.Signature) -> SigDiff:
    """Names, kinds, positions and defaults of the official parameters must match ours.

    Ours may add optional parameters (after the official positional ones) and ``*args`` /
    ``**kwargs``; they are returned in ``extras`` so the test can require them listed.
    """
    problems: list[str] = []
    extras: list[str] = []
    var_kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ours_by_name = {p.name: p for p in ours.parameters.values() if p.kind not in var_kinds}
    ours_var = {p.kind for p in ours.parameters.values() if p.kind in var_kinds}
    official_pos = [p.name for p in official.parameters.values() if p.kind in positional]
    our_pos = [p.name for p in ours.parameters.values() if p.kind in positional]
    for p in official.parameters.values():
        if p.kind in var_kinds:
            if p.kind not in ours_var:
                problems.append(f"missing {'*args' if p.kind == p.VAR_POSITIONAL else '**kwargs'}")
            continue
        q = ours_by_name.get(p.name)
        if q is None:
            if inspect.Parameter.VAR_KEYWORD in ours_var and p.kind not in positional:
                problems.append(f"{p.name}: only accepted through **kwargs")
            else:
                problems.append(f"missing parameter {p.name!r}")
            continue
        if p.kind != q.kind:
            problems.append(f"{p.name}: kind {q.kind.description} (official "
                            f"{p.kind.description})")
        if not _same_default(p.default, q.default):
            theirs = "required" if p.default is p.empty else repr(p.default)
            mine = "required" if q.default is q.empty else repr(q.default)
            problems.append(f"{p.name}: default {mine} (official {theirs})")
    if our_pos[:len(official_pos)] != official_pos and not problems:
        problems.append(f"positional order {our_pos} (official {official_pos})")
    official_names = set(official.parameters)
    for q in ours.parameters.values():
        if q.name in official_names:
            continue
        if q.kind in var_kinds:
            if q.kind not in {p.kind for p in official.parameters.values()}:
                extras.append(("*" if q.kind == q.VAR_POSITIONAL else "**") + q.name)
            continue
        if q.default is q.empty:
            problems.append(f"extra required parameter {q.name!r}")
        else:
            extras.append(q.name)
    return SigDiff(problems, extras)


# --------------------------------------------------------------------------------------
# Return kinds
# --------------------------------------------------------------------------------------

FUTURE_NAMES = frozenset({"APIFuture", "AwaitableConcurrentFuture", "ClientFuture",
                          "BackcompatTrainingClientFuture", "BackcompatSamplingClientFuture",
                          "_APIFuture", "_CombinedAPIFuture", "_AwaitableFutureCompatWrapper"})
_FUTURE_BASES: tuple[type, ...] = (official_public.APIFuture, tinker_async.APIFuture)


def _annotation_is_future(annotation: Any) -> bool:
    if isinstance(annotation, str):
        head = annotation.strip().strip("'\"").split("[", 1)[0].strip()
        return head.rsplit(".", 1)[-1] in FUTURE_NAMES
    origin = typing.get_origin(annotation) or annotation
    return isinstance(origin, type) and issubclass(origin, _FUTURE_BASES)


def return_kind(func: Callable[..., Any]) -> str:
    """"APIFuture", "value", "coroutine->value" or "coroutine->APIFuture", read from the
    function's annotations (resolved where possible, else the annotation string)."""
    target = inspect.unwrap(func)
    is_coroutine = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(func)
    try:
        hints = typing.get_type_hints(target)
        annotation: Any = hints.get("return", inspect.Signature.empty)
    except Exception:
        annotation = inspect.signature(func).return_annotation
    future = annotation is not inspect.Signature.empty and _annotation_is_future(annotation)
    if is_coroutine:
        return "coroutine->APIFuture" if future else "coroutine->value"
    return "APIFuture" if future else "value"


def _async_set(cls: str, names: str) -> dict[str, str]:
    return {f"{cls}.{n}": "coroutine->value" for n in names.split()}


# The reference's tables (§1.2-1.7), for the official SDK 0.38. Plain methods that do I/O
# return an APIFuture; the listed local getters return values; `_async` twins are split as
# in §1.2's table.
DOCUMENTED_KINDS: dict[str, str] = {
    **{f"TrainingClient.{n}": "coroutine->APIFuture" for n in (
        "forward_async forward_backward_async forward_backward_custom_async optim_step_async "
        "save_state_async load_state_async load_state_with_optimizer_async "
        "save_weights_for_sampler_async save_weights_external_async").split()},
    **_async_set("TrainingClient", "get_info_async create_sampling_client_async "
                 "save_weights_and_get_sampling_client_async"),
    **_async_set("SamplingClient", "sample_async compute_logprobs_async get_base_model_async"),
    **_async_set("ServiceClient", "create_lora_training_client_async "
                 "create_training_client_from_state_async "
                 "create_training_client_from_state_with_optimizer_async "
                 "create_sampling_client_async get_server_capabilities_async"),
    **_async_set("RestClient", "assign_session_project_async copy_weights_async "
                 "delete_checkpoint_async delete_checkpoint_from_tinker_path_async "
                 "export_session_trace_async get_audit_log_async get_billing_usage_async "
                 "get_current_checkpoint_storage_usage_async get_external_weights_urls_async "
                 "get_sampler_async get_session_async get_training_run_async "
                 "get_training_run_by_tinker_path_async list_checkpoints_async "
                 "list_sessions_async list_training_runs_async list_user_checkpoints_async "
                 "publish_checkpoint_from_tinker_path_async "
                 "set_checkpoint_ttl_from_tinker_path_async "
                 "unpublish_checkpoint_from_tinker_path_async"),
    **_async_set("AdminClient", "get_audit_log_async get_billing_usage_async "
                 "get_current_checkpoint_storage_usage_async"),
    **{f"TrainingClient.{n}": "APIFuture" for n in (
        "forward forward_backward forward_backward_custom optim_step save_state load_state "
        "load_state_with_optimizer save_weights_for_sampler save_weights_external "
        "create_sampling_client save_weights_and_get_sampling_client").split()},
    **{f"TrainingClient.{n}": "value" for n in
       "get_info get_tokenizer get_console_url get_telemetry".split()},
    **{f"SamplingClient.{n}": "APIFuture" for n in "sample compute_logprobs create".split()},
    **{f"SamplingClient.{n}": "value" for n in (
        "get_base_model get_tokenizer get_sampler_handle on_queue_state_change "
        "from_sampler_handle get_telemetry").split()},
    **{f"ServiceClient.{n}": "APIFuture" for n in (
        "create_lora_training_client create_training_client_from_state "
        "create_training_client_from_state_with_optimizer create_sampling_client "
        "create_custom_loss copy_weights close").split()},
    # get_server_capabilities is deprecated, sync-only and blocks: it returns the response.
    **{f"ServiceClient.{n}": "value" for n in (
        "get_console_url get_server_capabilities create_rest_client get_telemetry"
        ).split()},
    # "Every method returns an APIFuture" (whoami included), but for the local getter.
    **{f"RestClient.{n}": "APIFuture" for n in (
        "assign_session_project copy_weights delete_checkpoint "
        "delete_checkpoint_from_tinker_path export_session_trace get_audit_log "
        "get_billing_usage get_current_checkpoint_storage_usage get_external_weights_urls "
        "get_sampler get_server_capabilities get_session get_training_run "
        "get_training_run_by_tinker_path get_weights_info_by_tinker_path list_checkpoints "
        "list_sessions list_training_runs list_user_checkpoints "
        "publish_checkpoint_from_tinker_path search_sessions "
        "set_checkpoint_ttl_from_tinker_path unpublish_checkpoint_from_tinker_path "
        "whoami").split()},
    "RestClient.get_telemetry": "value",
    **{f"AdminClient.{n}": "APIFuture" for n in (
        "get_audit_log get_billing_usage get_current_checkpoint_storage_usage").split()},
    "AdminClient.get_telemetry": "value",
    "APIFuture.result": "value",
    "APIFuture.future": "value",
    "APIFuture.result_async": "coroutine->value",
    "APIFuture.coroutine": "coroutine->value",
}


# --------------------------------------------------------------------------------------
# Aliases and enums
# --------------------------------------------------------------------------------------


def alias_shape(value: Any) -> Any:
    """A comparable description of a typing alias: literal values, union members by
    name, generic origins; Annotated metadata and Optional ordering are ignored."""
    if isinstance(value, type) and issubclass(value, enum.Enum):
        return ("Enum", frozenset((m.name, m.value) for m in value))
    origin = typing.get_origin(value)
    if origin is typing.Annotated:
        return alias_shape(typing.get_args(value)[0])
    if origin is typing.Literal:
        return ("Literal", frozenset(typing.get_args(value)))
    if origin is typing.Union or origin is pytypes.UnionType:
        members: set[Any] = set()
        for arg in typing.get_args(value):
            shape = alias_shape(arg)
            if isinstance(shape, tuple) and shape and shape[0] == "Union":
                members |= shape[1]
            else:
                members.add(shape)
        return ("Union", frozenset(members))
    if origin is not None:
        name = getattr(origin, "__name__", repr(origin))
        if origin is collections.abc.Callable:
            return ("Callable",)
        return (name, tuple(alias_shape(a) for a in typing.get_args(value)))
    if value is type(None):
        return "None"
    if isinstance(value, type):
        return value.__name__
    return repr(value)


# --------------------------------------------------------------------------------------
# Fields of record types
# --------------------------------------------------------------------------------------

REQUIRED = "<required>"


TAG_FIELDS = ("type", "state")


def is_tag_field(cls: type, name: str) -> bool:
    """A literal discriminator of a pydantic model (``type="sample"``, ``state="failed"``):
    one allowed value, which is the default."""
    if name not in TAG_FIELDS or not issubclass(cls, pydantic.BaseModel):
        return False
    info = cls.model_fields.get(name)
    if info is None or typing.get_origin(info.annotation) is not typing.Literal:
        return False
    return typing.get_args(info.annotation) == (info.default,)


def tag_fields(cls: type) -> list[str]:
    return [n for n in TAG_FIELDS if is_tag_field(cls, n)]


def official_fields(cls: type) -> dict[str, Any]:
    """Public field name -> default (``REQUIRED`` when none), tag fields left out."""
    out: dict[str, Any] = {}
    if issubclass(cls, pydantic.BaseModel):
        for name, info in cls.model_fields.items():
            if name.startswith("_") or is_tag_field(cls, name):
                continue
            if info.is_required():
                out[name] = REQUIRED
            elif info.default_factory is not None:
                out[name] = info.default_factory()  # type: ignore[call-arg]
            else:
                out[name] = info.default
    else:
        for f in dataclasses.fields(typing.cast(Any, cls)):
            if f.name.startswith("_") or not f.init:
                continue
            out[f.name] = _dc_default(f)
    return out


def _dc_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def our_fields(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if not f.name.startswith("_") and f.init:
                out[f.name] = _dc_default(f)
    elif isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        for info in msgspec.structs.fields(cls):
            if info.name.startswith("_"):
                continue
            if info.default is not msgspec.NODEFAULT:
                out[info.name] = info.default
            elif info.default_factory is not msgspec.NODEFAULT:
                out[info.name] = info.default_factory()
            else:
                out[info.name] = REQUIRED
    elif isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        return official_fields(cls)
    return out


def tag_value(cls: type, name: str) -> Any:
    return cls.model_fields[name].default  # type: ignore[attr-defined]


def official_annotations(cls: type) -> dict[str, Any]:
    """Resolved annotation of every public init field (missing when unresolvable)."""
    if issubclass(cls, pydantic.BaseModel):
        return {n: i.annotation for n, i in cls.model_fields.items()}
    # Dataclass annotations are strings (``from __future__ import annotations``) that may
    # name things imported only for type checkers: resolve each field on its own, in the
    # defining module plus every public type.
    module = __import__(cls.__module__, fromlist=["_"])
    namespace = {**{n: getattr(typing, n) for n in typing.__all__}, **vars(official_types),
                 "np": np, "npt": npt, **vars(module)}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(typing.cast(Any, cls)):
        try:
            out[f.name] = typing.get_type_hints(
                type("_Probe", (), {"__annotations__": {f.name: f.type}}), namespace)[f.name]
        except Exception:
            continue
    return out


# --------------------------------------------------------------------------------------
# Neutral value specs: built once, materialized separately in each world
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class New:
    """``world.types.<cls>(**kwargs)``."""

    cls: str
    kwargs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Call:
    """``world.types.<cls>.<method>(*args)``."""

    cls: str
    method: str
    args: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class NDArray:
    values: tuple[Any, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class Member:
    cls: str
    name: str


class Opaque:
    """A value of no type any field accepts."""

    def __repr__(self) -> str:
        return "Opaque()"


OPAQUE = ("opaque",)
AWARE_TIME = datetime.datetime(2024, 5, 6, 7, 0, tzinfo=datetime.timezone.utc)


def materialize(spec: Any, world: World) -> Any:
    """A fresh object for ``spec`` in ``world`` (new lists and dicts every time)."""
    if isinstance(spec, New):
        return world.type_(spec.cls)(**{k: materialize(v, world)
                                        for k, v in spec.kwargs.items()})
    if isinstance(spec, Call):
        method = getattr(world.type_(spec.cls), spec.method)
        return method(*(materialize(a, world) for a in spec.args))
    if isinstance(spec, NDArray):
        return np.array(spec.values, dtype=spec.dtype)
    if isinstance(spec, Member):
        return getattr(world.type_(spec.cls), spec.name)
    if spec == OPAQUE:
        return Opaque()
    if isinstance(spec, list):
        return [materialize(v, world) for v in spec]
    if isinstance(spec, tuple):
        return tuple(materialize(v, world) for v in spec)
    if isinstance(spec, dict):
        return {k: materialize(v, world) for k, v in spec.items()}
    return spec


class Unsupported(Exception):
    """No generated value for this annotation."""


# Good values of types whose constructors need more than their field annotations say.
GOOD_SPECS: dict[str, Any] = {
    "TensorData": New("TensorData", {"data": [0.5, 1.5], "dtype": "float32", "shape": [2]}),
    "Datum": New("Datum", {
        "model_input": Call("ModelInput", "from_ints", ([1, 2, 3],)),
        "loss_fn_inputs": {"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 0.0]}}),
}
# Good values for single fields (by "Type.field") where the annotation is not enough.
GOOD_FIELD_SPECS: dict[str, Any] = {
    "DimuonParams.beta1": 0.5,
    # Any EventType passes the official check; the class's own event is the meaningful one.
    "SessionStartEvent.event": "SESSION_START",
    "SessionEndEvent.event": "SESSION_END",
    "UnhandledExceptionEvent.event": "UNHANDLED_EXCEPTION",
    "DmelChunk.dmel": b"\xfe\x01\x01\x02\x00\x00\x00\x00\x00\x00\x00\x00",
}


def gen_good(annotation: Any, depth: int = 0) -> Any:
    """A neutral spec of a value of ``annotation``'s type."""
    if depth > 6:
        raise Unsupported("too deep")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return gen_good(args[0], depth)
    if origin is typing.Literal:
        return args[0]
    if origin is typing.Union or origin is pytypes.UnionType:
        for arg in args:
            if arg is type(None):
                continue
            try:
                return gen_good(arg, depth + 1)
            except Unsupported:
                continue
        raise Unsupported(repr(annotation))
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence, set,
                  frozenset, collections.abc.Iterable):
        return [gen_good(args[0] if args else int, depth + 1)]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return [gen_good(args[0], depth + 1)]
        return tuple(gen_good(a, depth + 1) for a in args)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        key = gen_good(args[0], depth + 1) if args else "k"
        return {key if isinstance(key, (str, int)) else "k":
                gen_good(args[1] if args else str, depth + 1)}
    if origin is not None:
        if isinstance(origin, type) and issubclass(origin, np.ndarray):
            return NDArray((1,), "int32")
        raise Unsupported(repr(annotation))
    return _gen_good_plain(annotation, depth)


def _gen_good_plain(annotation: Any, depth: int) -> Any:
    if annotation is Any or annotation is object:
        return "anything"
    if annotation is type(None):
        return None
    if not isinstance(annotation, type):
        raise Unsupported(repr(annotation))
    if issubclass(annotation, bool):
        return True
    if issubclass(annotation, enum.Enum):
        return Member(annotation.__name__, next(iter(annotation)).name)
    if issubclass(annotation, str):
        return "text"
    if issubclass(annotation, int):
        return 1
    if issubclass(annotation, float):
        return 0.5
    if issubclass(annotation, bytes):
        return b"\x00\x01"
    if issubclass(annotation, datetime.datetime) or annotation.__name__ == "AwareDatetime":
        return AWARE_TIME
    if issubclass(annotation, datetime.date):
        return datetime.date(2024, 5, 6)
    if issubclass(annotation, np.ndarray):
        return NDArray((1,), "int32")
    if is_type_class(annotation):
        name = annotation.__name__
        if getattr(official_types, name, None) is not annotation:
            raise Unsupported(f"{name} is not exported by tinker.types")
        return good_spec(name, depth + 1)
    raise Unsupported(repr(annotation))


def good_spec(name: str, depth: int = 0) -> Any:
    """A neutral spec of a valid instance of ``tinker.types.<name>``: required fields
    only."""
    if name in GOOD_SPECS:
        return GOOD_SPECS[name]
    return New(name, good_kwargs(name, depth))


def good_kwargs(name: str, depth: int = 0) -> dict[str, Any]:
    cls = getattr(official_types, name)
    notes = official_annotations(cls)
    kwargs: dict[str, Any] = {}
    for field, default in official_fields(cls).items():
        if default is not REQUIRED:
            continue
        if f"{name}.{field}" in GOOD_FIELD_SPECS:
            kwargs[field] = GOOD_FIELD_SPECS[f"{name}.{field}"]
        elif field in notes:
            kwargs[field] = gen_good(notes[field], depth)
        else:
            raise Unsupported(f"{name}.{field} has no resolvable annotation")
    return kwargs


def _allows(annotation: Any, predicate: Callable[[Any], bool]) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _allows(typing.get_args(annotation)[0], predicate)
    if origin is typing.Union or origin is pytypes.UnionType:
        return any(_allows(a, predicate) for a in typing.get_args(annotation))
    return predicate(annotation)


def accepts_none(annotation: Any) -> bool:
    return _allows(annotation, lambda a: a is type(None) or a is Any or a is object)


def gen_wrong(annotation: Any) -> Any:
    """A value of the wrong type for ``annotation`` (a non-numeric string for numbers, a
    number for strings, an opaque object for the rest); ``Unsupported`` for ``Any``."""
    if _allows(annotation, lambda a: a is Any or a is object):
        raise Unsupported("Any accepts everything")
    inner = annotation
    while typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    if typing.get_origin(inner) in (typing.Union, pytypes.UnionType):
        arms = [a for a in typing.get_args(inner) if a is not type(None)]
        inner = arms[0] if len(arms) == 1 else None
    if inner is not None and typing.get_origin(inner) is typing.Literal:
        values = typing.get_args(inner)
        return "not-one-of-the-literals" if isinstance(values[0], str) else 987654
    if isinstance(inner, type) and not issubclass(inner, enum.Enum):
        if issubclass(inner, (int, float)) and not issubclass(inner, bool):
            return "not-a-number"
        if issubclass(inner, bool):
            return "not-a-bool"
        if issubclass(inner, str):
            return 12345
    return OPAQUE


def container_kind(spec: Any) -> str | None:
    if isinstance(spec, list):
        return "list"
    if isinstance(spec, dict):
        return "dict"
    return None


# --------------------------------------------------------------------------------------
# Outcomes: run a thing in a world, describe the result comparably
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Obj:
    """A record as a comparable value: class name and public field values."""

    cls: str
    fields: dict[str, Any]


def canon(value: Any, depth: int = 0) -> Any:
    """A plain comparable form of ``value`` that does not depend on the world."""
    if depth > 20:
        return "<deep>"
    if isinstance(value, Obj):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str, bytes,
                                           datetime.date, datetime.datetime)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return ("ndarray", value.tolist())
    if isinstance(value, (list, tuple)):
        return [canon(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {canon(k, depth + 1): canon(v, depth + 1) for k, v in value.items()}
    name = type(value).__name__
    if name == "TensorData":
        return Obj(name, {"dtype": value.dtype, "shape": canon(value.shape),
                          "values": canon(value.tolist())})
    if dataclasses.is_dataclass(value):
        return Obj(name, {f.name: canon(getattr(value, f.name), depth + 1)
                          for f in dataclasses.fields(value) if not f.name.startswith("_")})
    if isinstance(value, pydantic.BaseModel):
        return Obj(name, {n: canon(getattr(value, n), depth + 1)
                          for n in type(value).model_fields})
    if isinstance(value, msgspec.Struct):
        out = {n: canon(getattr(value, n), depth + 1) for n in value.__struct_fields__
               if not n.startswith("_")}
        config = value.__struct_config__
        if config.tag_field is not None:
            out[config.tag_field] = config.tag
        return Obj(name, out)
    return ("object", name)


def canon_diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two canon values; records compare on their common fields
    (missing fields are the ``fields[...]`` cases' business)."""
    if isinstance(a, Obj) and isinstance(b, Obj):
        out: list[str] = []
        for key in sorted(set(a.fields) & set(b.fields)):
            out += canon_diff(a.fields[key], b.fields[key], f"{path}.{key}")
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path or 'value'}: keys {sorted(map(str, b))} vs official "
                    f"{sorted(map(str, a))}"]
        out = []
        for key in a:
            out += canon_diff(a[key], b[key], f"{path}[{key!r}]")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path or 'value'}: {b!r} vs official {a!r}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += canon_diff(x, y, f"{path}[{i}]")
        return out
    if a == b and (type(a) is type(b) or {type(a), type(b)} <= {int, float}):
        return []
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return []
    return [f"{path or 'value'}: {b!r} vs official {a!r}"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened: ``ok`` with a value, or the exception."""

    ok: bool
    value: Any = None
    error: BaseException | None = None

    def describe(self) -> str:
        if self.ok:
            text = f"ok: {self.value!r}"
        else:
            lines = [line.strip() for line in str(self.error).splitlines() if line.strip()]
            text = f"raised {type(self.error).__name__}: {' | '.join(lines[:2])}"
        return text if len(text) <= 160 else text[:157] + "..."


def run(fn: Callable[[], Any]) -> Outcome:
    try:
        return Outcome(True, fn())
    except Exception as exc:
        return Outcome(False, error=exc)


_ERROR_CLASSES = (KeyError, IndexError, AttributeError, TypeError, ValueError)


def expected_error_class(official_error: BaseException) -> type[BaseException]:
    """The class our error must be an instance of: pydantic's ValidationError maps to
    ValueError (its base), a frozen dataclass's error to AttributeError, else the first
    builtin class of the official error."""
    if isinstance(official_error, pydantic.ValidationError):
        return ValueError
    for klass in _ERROR_CLASSES:
        if isinstance(official_error, klass):
            return klass
    return Exception


def compare_outcomes(official: Outcome, ours: Outcome,
                     view: Callable[[Any], Any] = canon) -> list[str]:
    """Both fail alike (ours raising the matching class), or both succeed with equal
    views."""
    if official.ok != ours.ok:
        return [f"ours {ours.describe()}; official {official.describe()}"]
    if not official.ok:
        assert official.error is not None
        wanted = expected_error_class(official.error)
        if not isinstance(ours.error, wanted):
            return [f"ours {ours.describe()} where the official raised "
                    f"{type(official.error).__name__} (expected a {wanted.__name__})"]
        return []
    left, right = run(lambda: view(official.value)), run(lambda: view(ours.value))
    if not (left.ok and right.ok):
        return [f"could not view the results: ours {right.describe()}; "
                f"official {left.describe()}"]
    return canon_diff(canon(left.value), canon(right.value))


def in_both(fn: Callable[[World], Any],
            view: Callable[[Any], Any] = canon) -> list[str]:
    return compare_outcomes(run(lambda: fn(OFFICIAL)), run(lambda: fn(OURS)), view)


# --------------------------------------------------------------------------------------
# Record behaviours, each a function of one world
# --------------------------------------------------------------------------------------


def build(spec: Any) -> Callable[[World], Any]:
    return lambda world: materialize(spec, world)


def copies_container(name: str, kwargs: dict[str, Any], field: str) -> Callable[[World], Any]:
    """Does mutating the caller's list/dict after construction change the instance?"""

    def probe(world: World) -> str:
        args = {k: materialize(v, world) for k, v in kwargs.items()}
        obj = world.type_(name)(**args)
        before = canon(getattr(obj, field))
        passed = args[field]
        if isinstance(passed, list):
            passed.append(passed[0])
        else:
            passed["zz_added_key"] = next(iter(passed.values()))
        after = canon(getattr(obj, field))
        return "shared with the caller" if after != before else "copied"

    return probe


def equal_pair(spec: Any) -> Callable[[World], Any]:
    return lambda world: materialize(spec, world) == materialize(spec, world)


def hash_pair(spec: Any) -> Callable[[World], Any]:
    def probe(world: World) -> bool:
        # Both alive at once: a type hashed by identity must not pass because the
        # second instance happened to reuse the first one's freed memory (and id).
        first, second = materialize(spec, world), materialize(spec, world)
        return hash(first) == hash(second)

    return probe


def pickle_round_trip(spec: Any) -> Callable[[World], Any]:
    def probe(world: World) -> Any:
        obj = materialize(spec, world)
        back = pickle.loads(pickle.dumps(obj))
        diffs = canon_diff(canon(obj), canon(back))
        return {"same type": type(back) is type(obj), "fields equal": not diffs,
                "==": bool(back == obj)}

    return probe


def set_first_field(spec: Any, field: str) -> Callable[[World], Any]:
    def probe(world: World) -> str:
        obj = materialize(spec, world)
        setattr(obj, field, getattr(obj, field))
        return "assignable"

    return probe


def model_dump_json(spec: Any) -> Callable[[World], Any]:
    return lambda world: materialize(spec, world).model_dump(mode="json")


def validate_official_dump(name: str, spec: Any) -> Callable[[World], Any]:
    """``T.model_validate`` of the official instance's JSON dump, in each world."""

    def probe(world: World) -> Any:
        dumped = materialize(spec, OFFICIAL).model_dump(mode="json")
        return world.type_(name).model_validate(dumped)

    return probe


# --------------------------------------------------------------------------------------
# Case generation
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TypeCase:
    """One generated behaviour case of a record type."""

    id: str
    probe: Callable[[World], Any]
    setup_error: str | None = None


def type_behaviour_cases(name: str) -> Iterator[TypeCase]:
    cls = getattr(official_types, name)
    try:
        special = GOOD_SPECS.get(name)
        if special is None:
            base: dict[str, Any] | None = good_kwargs(name)
        else:
            base = special.kwargs if isinstance(special, New) and special.cls == name else None
        good = good_spec(name)
    except Unsupported as exc:
        yield TypeCase(f"construct[{name}]", build(None), f"no generated input: {exc}")
        return
    yield TypeCase(f"construct[{name}]", build(good))
    yield TypeCase(f"eq[{name}]", equal_pair(good))
    yield TypeCase(f"pickle[{name}]", pickle_round_trip(good))
    yield TypeCase(f"hash[{name}]", hash_pair(good))
    fields = official_fields(cls)
    if fields:
        yield TypeCase(f"frozen[{name}]", set_first_field(good, next(iter(fields))))
    if base is not None:
        yield TypeCase(f"extra_field[{name}]", build(New(name, {**base, "zz_unknown": 1})))
    if issubclass(cls, pydantic.BaseModel):
        yield TypeCase(f"dump[{name}]", model_dump_json(good))
        yield TypeCase(f"validate[{name}]", validate_official_dump(name, good))
    if base is None:
        return
    notes = official_annotations(cls)
    for field, default in fields.items():
        annotation = notes.get(field)
        if annotation is None:
            continue
        if default is REQUIRED:
            rest = {k: v for k, v in base.items() if k != field}
            yield TypeCase(f"missing[{name}.{field}]", build(New(name, rest)))
        try:
            wrong = gen_wrong(annotation)
        except Unsupported:
            pass
        else:
            yield TypeCase(f"wrong_type[{name}.{field}]",
                           build(New(name, {**base, field: wrong})))
        if not accepts_none(annotation):
            yield TypeCase(f"none[{name}.{field}]", build(New(name, {**base, field: None})))
        try:
            value = base[field] if field in base else gen_good(annotation)
        except Unsupported:
            continue
        if container_kind(value) is not None and value:
            yield TypeCase(f"copy[{name}.{field}]",
                           copies_container(name, {**base, field: value}, field))
