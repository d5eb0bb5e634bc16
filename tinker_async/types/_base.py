"""The msgspec bases of the Struct types, with the small pydantic surface people call.

``Model`` (every public Struct type) checks and copies its fields at construction,
as the official pydantic models do (see ``_validation`` and ``_checks``); its
metaclass gives keyword problems pydantic's treatment (a missing field or an unknown
keyword is a :class:`ValidationError`; response types ignore unknown keywords; the
type tag may be passed). ``WireModel`` (the internal JSON forms of the dataclass
types, built only from already checked objects or by msgspec's decoder) does not check.

Deliberate differences from the official types (see tests/test_types_validation.py):

- Every list-like field holds a list (pydantic keeps a tuple given for a ``Sequence``).
- ``EncodedTextChunk`` and ``ModelInput.from_ints`` accept integer numpy arrays (the
  chunk keeps the array without a copy; ``from_ints`` makes it a list).
- ``model_copy(update=...)`` checks the update (pydantic copies it unchecked).
- The ``type`` field of a response type and ``HealthResponse.status`` take any text
  (other Tinker-compatible servers send other values); official: one literal.
- Fields we default where the official type requires them (``Checkpoint.tinker_path``,
  ``CreateSessionRequest.user_metadata``...) may be left out.
- Telemetry events take only their own ``event`` tag (the official literal allows the
  four kinds on every event class).
- ``Datum`` (a dataclass) checks that ``model_input`` is a ModelInput; the official one
  keeps anything, and the request fails only when it is encoded.

Wire policy (see also ``_codec.keep``):

- ``omit_defaults=True``: a field at its default is not sent. That leaves out None and
  the optional feature switches (``topk_sample_logprobs=0``, ``kind="snapshot"``...)
  that strict servers reject when they do not know them.
- Core values whose server-side defaults may differ (hyperparameters, ``num_samples``)
  use ``keep(...)`` defaults and are always sent, as the official SDK does.
- A literal ``type`` on a request is a msgspec tag (``tag_field="type"``), so it is
  always encoded; a ``type`` ClassVar keeps ``obj.type`` readable.
- Unknown fields in responses are ignored (msgspec's default).
"""

from __future__ import annotations

import copy
import datetime
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from ._checks import Check, compile_checks, from_mapping
from ._codec import convert, decode_json_lenient, enc_hook, repaired
from ._validation import Detail, Invalid, fail, raise_errors

_M = TypeVar("_M", bound="_Surface")
_T = TypeVar("_T")

_JSON_ENCODER = msgspec.json.Encoder(enc_hook=enc_hook)

# msgspec >= 0.21 runs __post_init__ in structs.replace; older versions do not.
_REPLACE_RUNS_POST_INIT = tuple(int(p) for p in msgspec.__version__.split(".")[:2]) >= (0, 21)


class _Surface(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """Keyword-only, frozen, defaults left off the wire; pydantic's ``model_*`` methods."""

    def model_dump(
        self,
        *,
        mode: Literal["python", "json"] = "python",
        exclude_none: bool = False,
        exclude_defaults: bool = False,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """A dict of the fields (nested models as dicts), like pydantic's ``model_dump``.

        Unlike the wire encoding, defaults are included unless ``exclude_defaults``;
        ``mode="json"`` turns bytes into base64, datetimes into ISO strings, enums into
        values.
        """
        opts = _DumpOptions(mode == "json", exclude_none, exclude_defaults)
        out = _dump_struct(self, opts)
        if include is not None:
            keep_names = set(include)
            out = {k: v for k, v in out.items() if k in keep_names}
        if exclude is not None:
            drop = set(exclude)
            out = {k: v for k, v in out.items() if k not in drop}
        return out

    def model_dump_json(self, *, exclude_none: bool = False) -> str:
        """The JSON text of ``model_dump(mode="json")``."""
        data = self.model_dump(mode="json", exclude_none=exclude_none)
        return _JSON_ENCODER.encode(data).decode()

    def model_copy(self: _M, *, update: dict[str, Any] | None = None, deep: bool = False) -> _M:
        """A copy with the fields in ``update`` replaced (pydantic's ``model_copy``)."""
        base = copy.deepcopy(self) if deep else self
        new = msgspec.structs.replace(base, **(update or {}))
        post_init = getattr(new, "__post_init__", None)
        if post_init is not None and not _REPLACE_RUNS_POST_INIT:
            post_init()  # our __post_init__ methods only normalize, so running twice is safe
        return new

    @classmethod
    def model_validate(cls: type[_M], obj: Any) -> _M:
        """Build from a dict (or return ``obj`` if it already is one), validating types.

        Lax like pydantic (``{"rank": "8"}`` works); a :class:`ValidationError` names
        the fields that are wrong.
        """
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, msgspec.Struct):
            obj = msgspec.to_builtins(obj, enc_hook=enc_hook)
        try:
            return convert(obj, cls)
        except msgspec.ValidationError:
            pass
        try:
            if not isinstance(obj, Mapping):
                fail(f"a dict of the fields of {cls.__name__}", obj)
            result: _M = from_mapping(cls, repaired(obj))
            return result
        except Invalid as exc:
            raise_errors(cls.__name__, exc.details)

    @classmethod
    def model_validate_json(cls: type[_M], data: str | bytes) -> _M:
        """Decode JSON text into this type (lenient about known server deviations)."""
        return decode_json_lenient(data, cls)


_STRUCT_CALL = msgspec.StructMeta.__call__


class _ModelMeta(msgspec.StructMeta):
    """The metaclass of ``Model``: keyword problems in a constructor call become what the
    official pydantic types make of them.

    msgspec's constructor raises ``TypeError`` for a missing or unknown keyword; here a
    missing field, or an unknown keyword on a request type, is a :class:`ValidationError`
    naming it; unknown keywords on response types are ignored, and the type tag may be
    passed (``EncodedTextChunk(type="encoded_text", tokens=...)``), as the official
    types allow. Only failing calls take the slow path; decoding never comes here.
    """

    def __call__(cls, /, *args: Any, **kwargs: Any) -> Any:
        try:
            return _STRUCT_CALL(cls, *args, **kwargs)
        except TypeError as exc:
            error = exc
        # Outside the except block, so a ValidationError raised here stands on its own.
        fixed = None if args else _fixed_keywords(cls, kwargs)
        if fixed is None:
            raise error
        return _STRUCT_CALL(cls, **fixed)


def construct(cls: type[_T], **kwargs: Any) -> _T:
    """``cls(**kwargs)`` for calls whose keywords are known to be right: the fields are
    still checked, but the metaclass's call (a Python frame) is skipped."""
    result: _T = _STRUCT_CALL(cls, **kwargs)
    return result


def _fixed_keywords(cls: Any, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The keywords to call ``cls`` with instead, or None if they were not the problem.

    Raises the ValidationError for missing fields, a wrong tag or unknown keywords.
    """
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    config = cls.__struct_config__
    fixed = dict(kwargs)
    problems: list[Detail] = []
    tag_field = config.tag_field
    if tag_field is not None and tag_field in fixed and tag_field not in fields:
        tag = fixed.pop(tag_field)
        if tag != config.tag:
            problems.append(Detail((tag_field,), repr(config.tag), tag, None))
    for name in [k for k in fixed if k not in fields]:
        value = fixed.pop(name)
        if not cls._ignore_extra:
            known = ", ".join(fields)
            problems.append(Detail((name,), f"unexpected keyword: {cls.__name__} has {known}",
                                   value, ""))
    for name, info in fields.items():
        if info.required and name not in fixed:
            problems.append(Detail((name,), "field required: no value was given", None, ""))
    if problems:
        raise_errors(cls.__name__, problems)
    return fixed if fixed != kwargs else None


class Model(_Surface, kw_only=True, omit_defaults=True, frozen=True, metaclass=_ModelMeta):
    """Base of the public Struct types: fields checked and copied at construction.

    A subclass may give ``_field_checks`` (field name -> :class:`Check`) for fields
    whose rules are not those of their type; a subclass with a ``__post_init__`` of
    its own calls ``super().__post_init__()`` first. ``_ignore_extra`` is True on
    response types: unknown keywords are dropped there (a ValidationError elsewhere).

    Types whose fields cannot hold arbitrary objects (model inputs, sampling and
    optimizer parameters) are declared ``gc=False``: they can never be part of a
    reference cycle, so the garbage collector need not track them, and building many
    (a training batch) triggers fewer collections.
    """

    _field_checks: ClassVar[Mapping[str, Check]] = {}
    _ignore_extra: ClassVar[bool] = False
    __tinker_check__: ClassVar[Callable[[Any], None]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Each class compiles its own checker on first use (its field types may name
        # classes defined later in the module).
        cls.__tinker_check__ = _first_check

    def __post_init__(self) -> None:
        self.__tinker_check__()


def _first_check(self: Model) -> None:
    cls = type(self)
    overrides: dict[str, Check] = {}
    for base in reversed(cls.__mro__):
        overrides.update(base.__dict__.get("_field_checks", {}))
    checker = compile_checks(cls, overrides)
    cls.__tinker_check__ = checker
    checker(self)


class WireModel(_Surface, kw_only=True, omit_defaults=True, frozen=True):
    """Base of the internal JSON wire forms: no construction checks (their values come
    from checked objects or from msgspec's decoder, which checks types itself)."""


class _DumpOptions:
    __slots__ = ("exclude_defaults", "exclude_none", "json")

    def __init__(self, json: bool, exclude_none: bool, exclude_defaults: bool) -> None:
        self.json = json
        self.exclude_none = exclude_none
        self.exclude_defaults = exclude_defaults


def _is_default(info: msgspec.structs.FieldInfo, value: Any) -> bool:
    if info.default is not msgspec.NODEFAULT:
        return bool(value == info.default)
    if info.default_factory is not msgspec.NODEFAULT:
        return bool(value == info.default_factory())
    return False


def _dump_struct(obj: msgspec.Struct, opts: _DumpOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    config = obj.__struct_config__
    if config.tag_field is not None:
        out[config.tag_field] = config.tag
    for info in msgspec.structs.fields(obj):
        value = getattr(obj, info.name)
        if opts.exclude_none and value is None:
            continue
        if opts.exclude_defaults and _is_default(info, value):
            continue
        out[info.name] = _dump_value(value, opts)
    return out


def _dump_value(value: Any, opts: _DumpOptions) -> Any:
    if isinstance(value, msgspec.Struct):
        return _dump_struct(value, opts)
    if isinstance(value, (list, tuple)):
        return [_dump_value(v, opts) for v in value]
    if isinstance(value, dict):
        return {k: _dump_value(v, opts) for k, v in value.items()}
    if opts.json and isinstance(value, (bytes, datetime.datetime, enum.Enum)):
        return msgspec.to_builtins(value)
    return value
