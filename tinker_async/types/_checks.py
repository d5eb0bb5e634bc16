"""Per-field checkers of the Struct types, compiled once per class from its field types.

``compile_checks(cls)`` reads the field types with ``msgspec.inspect`` and generates one
straight-line function that ``Model.__post_init__`` runs (it runs for every instance
built, decoded or copied, so it is kept cheap):

- A value that already has its final type passes with one ``type(v) is T`` test.
- Lists and dicts are always rebuilt, so that later changes to the caller's container
  do not leak in (the official pydantic types copy too). A long list of plain ints,
  strings or floats is checked and copied in one C pass by ``msgspec.convert``; other
  values take the lax path (``_validation``).
- A nested Struct instance is kept as it is; a dict is accepted in its place.
- Problems are collected per field and raised as one :class:`ValidationError`.

Values msgspec has decoded already have their final types, so on decoding only the
list and dict copies cost anything (well under a microsecond for a typical response).
"""

from __future__ import annotations

import collections
import datetime as _dt
import enum
import operator
import re
from collections.abc import Callable, Iterable, KeysView, Mapping, Sequence, ValuesView
from types import GeneratorType
from typing import Any, NamedTuple

import msgspec
import msgspec.inspect as mi

from ._validation import (
    Detail,
    Invalid,
    ValidationError,
    fail,
    lax_bool,
    lax_bytes,
    lax_datetime,
    lax_float,
    lax_int,
    lax_str,
    prefixed,
    raise_errors,
)

__all__ = [
    "SHORT_LIST",
    "Check",
    "check_for",
    "compile_checks",
    "from_mapping",
    "list_converter",
]

_NoneType = type(None)
_MISSING: Any = object()


class Check(NamedTuple):
    """How to check one field: the types that pass as they are, and the converter.

    ``fast`` None means anything passes (``Any``); an empty set means the converter
    always runs (containers, which are always copied, and constrained values).
    """

    fast: frozenset[type] | None
    convert: Callable[[Any], Any]
    expected: str


def _identity(value: Any) -> Any:
    return value


_ANY = Check(None, _identity, "any value")


def _bounded(base: Callable[[Any], Any], what: str, t: Any) -> Callable[[Any], Any]:
    bounds: list[tuple[str, Callable[[Any, Any], bool], Any]] = [
        (f">= {t.ge}", operator.ge, t.ge),
        (f"> {t.gt}", operator.gt, t.gt),
        (f"<= {t.le}", operator.le, t.le),
        (f"< {t.lt}", operator.lt, t.lt),
    ]
    active = [(text, op, limit) for text, op, limit in bounds if limit is not None]
    expected = what + (" " + " and ".join(text for text, _, _ in active) if active else "")

    def convert(value: Any) -> Any:
        result = base(value)
        for _, op, limit in active:
            if not op(result, limit):
                fail(expected, value)
        return result

    return convert


def _sized(t: Any, kind: str) -> tuple[str, Callable[[int], bool]]:
    low, high = t.min_length, t.max_length
    parts = []
    if low is not None:
        parts.append(f"at least {low}")
    if high is not None:
        parts.append(f"at most {high}")
    text = f" with {' and '.join(parts)} {kind}" if parts else ""
    return text, lambda n: (low is None or n >= low) and (high is None or n <= high)


def _str_check(t: mi.StrType) -> Check:
    if t.min_length is None and t.max_length is None and t.pattern is None:
        return Check(frozenset({str}), lax_str, "a string")
    size_text, size_ok = _sized(t, "characters")
    pattern = re.compile(t.pattern) if t.pattern is not None else None
    expected = "a string" + size_text + (f" matching {t.pattern!r}" if pattern else "")

    def convert(value: Any) -> str:
        result = lax_str(value)
        if not size_ok(len(result)) or (pattern is not None and not pattern.search(result)):
            fail(expected, value)
        return result

    return Check(frozenset(), convert, expected)


def _number_check(t: mi.IntType | mi.FloatType, base: Callable[[Any], Any], what: str,
                  exact: type) -> Check:
    if t.ge is None and t.gt is None and t.le is None and t.lt is None:
        return Check(frozenset({exact}), base, what)
    return Check(frozenset(), _bounded(base, what, t), what)


def _datetime_check(t: mi.DateTimeType) -> Check:
    if t.tz is None:
        return Check(frozenset({_dt.datetime}), lax_datetime, "a datetime")
    expected = "a timezone-aware datetime" if t.tz else "a naive datetime"

    def convert(value: Any) -> _dt.datetime:
        result = lax_datetime(value)
        if (result.tzinfo is not None) != t.tz:
            fail(expected, value)
        return result

    return Check(frozenset(), convert, expected)


def _literal_check(t: mi.LiteralType) -> Check:
    canonical = {v: v for v in t.values}
    expected = " or ".join(repr(v) for v in t.values)

    def convert(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            value = value.value
        try:
            hit = canonical.get(value, _MISSING)
        except TypeError:  # unhashable
            hit = _MISSING
        # 1.0 or True match the literal 1 (as in pydantic); "1" does not.
        if hit is _MISSING or isinstance(value, str) != isinstance(hit, str):
            fail(expected, value)
        return hit

    return Check(frozenset(), convert, expected)


def _enum_check(t: mi.EnumType) -> Check:
    cls = t.cls
    expected = " or ".join(repr(m.value) for m in cls)

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            fail(expected, value)

    return Check(frozenset({cls}), convert, expected)


def _struct_check(cls: type[msgspec.Struct]) -> Check:
    expected = f"{_article(cls.__name__)} (or a dict of its fields)"

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value  # nested instances are kept, as pydantic keeps them
        if isinstance(value, Mapping):
            return from_mapping(cls, value)
        fail(expected, value)

    return Check(frozenset({cls}), convert, expected)


def from_mapping(cls: type[Any], value: Mapping[Any, Any]) -> Any:
    """Build Struct ``cls`` from a mapping of its fields (a ``type`` tag may be included).

    Strictly (msgspec) first; if that fails, the lax way, so ``{"rank": "8"}`` works and
    errors name the field. Unknown keys are ignored.
    """
    data = dict(value)
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError:
        pass
    config = cls.__struct_config__
    if config.tag_field is not None:
        tag = data.pop(config.tag_field, config.tag)
        if tag != config.tag:
            raise Invalid([Detail((config.tag_field,), repr(config.tag), tag, None)])
    fields: tuple[str, ...] = cls.__struct_fields__
    names: dict[Any, str] = dict(zip(cls.__struct_encode_fields__, fields, strict=True))
    names.update((f, f) for f in fields)
    kwargs: dict[str, Any] = {names[key]: item for key, item in data.items() if key in names}
    try:
        return cls(**kwargs)
    except ValidationError as exc:
        raise Invalid([Detail(tuple(e["loc"]), e["msg"], e["input"], "")
                       for e in exc.errors()]) from None
    except TypeError as exc:  # a required field is missing (the wire forms)
        fail(f"the fields of {cls.__name__} ({exc})", value)


def _struct_union(classes: list[type[msgspec.Struct]]) -> Callable[[Any], Any]:
    by_tag: dict[tuple[str, Any], type[msgspec.Struct]] = {}
    for cls in classes:
        config = cls.__struct_config__
        if config.tag_field is not None:
            by_tag[(config.tag_field, config.tag)] = cls
    tag_fields = {field for field, _ in by_tag}
    kinds = tuple(classes)

    def convert(value: Any) -> Any:
        if isinstance(value, kinds):
            return value
        if not isinstance(value, Mapping):
            return _MISSING
        for field in tag_fields:
            if field in value:
                cls = by_tag.get((field, value[field]))
                if cls is not None:
                    return from_mapping(cls, value)
        # Untagged: the first kind the fields fit, trying first the kinds that have most
        # of the keys given; if none fits, the errors of the closest kind are the answer.
        keys = set(value)
        ranked = sorted(classes, key=lambda c: -len(keys & set(c.__struct_fields__)))
        closest: Invalid | None = None
        for cls in ranked:
            try:
                return from_mapping(cls, value)
            except Invalid as exc:
                if closest is None and keys & set(cls.__struct_fields__):
                    closest = exc
        if closest is not None:
            raise closest
        return _MISSING

    return convert


def _article(name: str) -> str:
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}"


def _union_check(t: mi.UnionType) -> Check:
    options = [o for o in t.types if not isinstance(o, mi.NoneType)]
    has_none = len(options) != len(t.types)
    structs = [o.cls for o in options if isinstance(o, mi.StructType)]
    others = [check_for(o) for o in options if not isinstance(o, mi.StructType)]
    if any(c.fast is None for c in others):
        return _ANY
    expected = " or ".join(
        [_article(cls.__name__) for cls in structs] + [c.expected for c in others]
        + (["None"] if has_none else [])
    )
    fast: set[type] = set(structs) | ({_NoneType} if has_none else set())
    for c in others:
        assert c.fast is not None
        fast |= c.fast
    if len(options) == 1 and has_none:
        inner = others[0] if others else _struct_check(structs[0])

        def optional(value: Any) -> Any:
            if value is None:
                return None
            try:
                return inner.convert(value)
            except Invalid as exc:
                raise Invalid([d._replace(expected=d.expected + " or None") if not d.loc else d
                               for d in exc.details]) from None

        return Check(frozenset(fast), optional, expected)
    struct_convert = _struct_union(structs) if structs else None

    def convert(value: Any) -> Any:
        if value is None and has_none:
            return None
        if struct_convert is not None:
            result = struct_convert(value)
            if result is not _MISSING:
                return result
        for c in others:  # the exact type first, then the lax conversions in order
            if type(value) in c.fast:  # type: ignore[operator]
                return value
        for c in others:
            try:
                return c.convert(value)
            except Invalid:
                continue
        fail(expected, value)

    return Check(frozenset(fast), convert, expected)


# Containers a list field accepts (as pydantic's lax mode does); text and mappings are not.
_LIST_LIKE = (list, tuple, set, frozenset, collections.deque, range, KeysView, ValuesView,
              GeneratorType)
# Up to this many items, a Python loop checks a list faster than one C call's setup.
SHORT_LIST = 8
# Scalar item types whose lists msgspec can check and copy in one C pass.
_BULK_ITEMS: dict[type, Any] = {}


def _bulk_type(item: type) -> Any:
    bulk = _BULK_ITEMS.get(item)
    if bulk is None:
        # A Struct wrapper: msgspec caches a Struct's type info, not a bare list[int]'s.
        bulk = _BULK_ITEMS[item] = msgspec.defstruct(
            f"_Bulk_{item.__name__}", [("items", list[item])], array_like=True, gc=False,  # type: ignore[valid-type]
        )
    return bulk


def _plain_item(t: Any) -> type | None:
    if isinstance(t, mi.IntType) and (t.ge, t.gt, t.le, t.lt, t.multiple_of) == (None,) * 5:
        return int
    if isinstance(t, mi.FloatType) and (t.ge, t.gt, t.le, t.lt, t.multiple_of) == (None,) * 5:
        return float
    if isinstance(t, mi.StrType) and (t.min_length, t.max_length, t.pattern) == (None,) * 3:
        return str
    return None


def list_converter(item: Check, what: str, bulk_item: type | None = None,
                   size: tuple[str, Callable[[int], bool]] | None = None) -> Callable[[Any], Any]:
    """A converter to a new list whose items pass ``item`` (see :func:`check_for`)."""
    fast, convert_item = item.fast, item.convert
    bulk = _bulk_type(bulk_item) if bulk_item is not None else None
    size_text, size_ok = size if size is not None else ("", None)
    expected = f"{what}{size_text}"

    def convert(value: Any) -> list[Any]:
        result: list[Any] | None = None
        if type(value) is list:
            if bulk is not None and len(value) > SHORT_LIST:
                try:
                    result = msgspec.convert((value,), bulk).items
                except msgspec.ValidationError:
                    result = _convert_items(value)
            else:
                result = value.copy()
                if fast is not None:
                    # Usually every item already has its type (one C pass for long lists).
                    if len(result) > SHORT_LIST:
                        if not fast.issuperset(map(type, result)):
                            result = _convert_items(result)
                    else:
                        for x in result:
                            if type(x) not in fast:
                                result = _convert_items(result)
                                break
        elif isinstance(value, _LIST_LIKE) or (
            isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))
        ):
            result = _convert_items(value)
        else:
            fail(expected, value)
        if size_ok is not None and not size_ok(len(result)):
            fail(expected, value)
        return result

    def _convert_items(value: Iterable[Any]) -> list[Any]:
        if fast is None:
            return list(value)
        result = []
        errors: list[Detail] = []
        for i, x in enumerate(value):
            if type(x) in fast:
                result.append(x)
                continue
            try:
                result.append(convert_item(x))
            except Invalid as exc:
                errors.extend(prefixed(exc, i))
        if errors:
            raise Invalid(errors)
        return result

    return convert


def _list_check(t: mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType) -> Check:
    item = check_for(t.item_type)
    what = f"a list of {_plural(item.expected)}"
    size = _sized(t, "items") if (t.min_length, t.max_length) != (None, None) else None
    convert = list_converter(item, what, _plain_item(t.item_type), size)
    expected = what + (size[0] if size else "")
    if isinstance(t, mi.VarTupleType):
        return Check(frozenset(), lambda v: tuple(convert(v)), expected)
    if isinstance(t, (mi.SetType, mi.FrozenSetType)):
        make = set if isinstance(t, mi.SetType) else frozenset
        return Check(frozenset(), lambda v: make(convert(v)), expected)
    return Check(frozenset(), convert, expected)


def _plural(expected: str) -> str:
    match = re.fullmatch(r"an? (\w+)", expected)
    return f"{match.group(1)}s" if match else f"items that are each {expected}"


def _tuple_check(t: mi.TupleType) -> Check:
    items = [check_for(x) for x in t.item_types]
    expected = f"a sequence of {len(items)} items"

    def convert(value: Any) -> tuple[Any, ...]:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            fail(expected, value)
        values = list(value)
        if len(values) != len(items):
            fail(expected, value)
        out = []
        for i, (c, x) in enumerate(zip(items, values, strict=True)):
            try:
                out.append(x if c.fast is None or type(x) in c.fast else c.convert(x))
            except Invalid as exc:
                raise Invalid(prefixed(exc, i)) from None
        return tuple(out)

    return Check(frozenset(), convert, expected)


def _dict_check(t: mi.DictType) -> Check:
    key, item = check_for(t.key_type), check_for(t.value_type)
    size_text, size_ok = _sized(t, "items")
    expected = f"a dict{size_text}"
    sized = (t.min_length, t.max_length) != (None, None)

    def convert(value: Any) -> dict[Any, Any]:
        if not isinstance(value, Mapping):
            fail(expected, value)
        result: dict[Any, Any] = {}
        errors: list[Detail] = []
        for k, x in value.items():
            try:
                k2 = k if key.fast is None or type(k) in key.fast else key.convert(k)
                result[k2] = x if item.fast is None or type(x) in item.fast else item.convert(x)
            except Invalid as exc:
                errors.extend(prefixed(exc, k))
        if errors:
            raise Invalid(errors)
        if sized and not size_ok(len(result)):
            fail(expected, value)
        return result

    return Check(frozenset(), convert, expected)


def check_for(t: mi.Type) -> Check:
    """The check of a field of msgspec type ``t`` (pydantic lax-mode rules)."""
    if isinstance(t, mi.AnyType):
        return _ANY
    if isinstance(t, mi.NoneType):
        return Check(frozenset({_NoneType}), lambda v: fail("None", v), "None")
    if isinstance(t, mi.BoolType):
        return Check(frozenset({bool}), lax_bool, "a boolean")
    if isinstance(t, mi.IntType):
        return _number_check(t, lax_int, "an integer", int)
    if isinstance(t, mi.FloatType):
        return _number_check(t, lax_float, "a number", float)
    if isinstance(t, mi.StrType):
        return _str_check(t)
    if isinstance(t, (mi.BytesType, mi.ByteArrayType)):
        return Check(frozenset({bytes}), lax_bytes, "bytes")
    if isinstance(t, mi.DateTimeType):
        return _datetime_check(t)
    if isinstance(t, mi.LiteralType):
        return _literal_check(t)
    if isinstance(t, mi.EnumType):
        return _enum_check(t)
    if isinstance(t, mi.StructType):
        return _struct_check(t.cls)
    if isinstance(t, mi.UnionType):
        return _union_check(t)
    if isinstance(t, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        return _list_check(t)
    if isinstance(t, mi.TupleType):
        return _tuple_check(t)
    if isinstance(t, mi.DictType):
        return _dict_check(t)
    # Nothing of ours uses another kind; should one appear, it is left to msgspec.
    return _ANY


# --- per-class checkers -------------------------------------------------------------------


def compile_checks(cls: type[msgspec.Struct], overrides: Mapping[str, Check]) -> Callable[[Any], None]:
    """The checker of Struct ``cls``: converts each field in place, raises on problems.

    Generated as straight-line code (one fast type test per field), because it runs for
    every instance built, decoded or copied.
    """
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    namespace: dict[str, Any] = {
        "_set": msgspec.structs.force_setattr,
        "_Invalid": Invalid,
        "_prefixed": prefixed,
        "_raise": raise_errors,
    }
    body: list[str] = []
    for i, field in enumerate(info.fields):
        check = overrides.get(field.name) or check_for(field.type)
        if check.fast is None:
            continue
        namespace[f"_c{i}"] = check.convert
        body.append(f"    v = self.{field.name}")
        condition = _fast_condition(check.fast, i, namespace)
        indent = "    "
        if condition:
            body.append(f"    if {condition}:")
            indent = "        "
        body += [
            f"{indent}try:",
            f"{indent}    _set(self, {field.name!r}, _c{i}(v))",
            f"{indent}except _Invalid as exc:",
            f"{indent}    errors = (errors or []) + _prefixed(exc, {field.name!r})",
        ]
    if not body:
        return _no_check
    source = "\n".join([
        "def check(self):",
        "    errors = None",
        *body,
        "    if errors:",
        f"        _raise({cls.__name__!r}, errors)",
    ])
    exec(compile(source, f"<checks of {cls.__qualname__}>", "exec"), namespace)
    checker: Callable[[Any], None] = namespace["check"]
    return checker


def _no_check(self: Any) -> None:
    return None


def _fast_condition(fast: frozenset[type], i: int, namespace: dict[str, Any]) -> str:
    kinds = [t for t in fast if t is not _NoneType]
    parts = ["v is not None"] if _NoneType in fast else []
    if len(kinds) == 1:
        namespace[f"_t{i}"] = kinds[0]
        parts.append(f"type(v) is not _t{i}")
    elif kinds:
        namespace[f"_t{i}"] = frozenset(kinds)
        parts.append(f"type(v) not in _t{i}")
    return " and ".join(parts)
