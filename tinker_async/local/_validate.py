"""Request bodies and query strings -> Structs, with FastAPI-style errors.

Every JSON body the embedded server reads is decoded with msgspec into the *same* request
Struct of ``tinker_async.types`` that the client encodes (``read_request`` /
``decode_request`` / ``convert_request``): there is one schema, and the server reads it
rather than parsing fields by hand. Query strings are converted the same way, with
msgspec's lax mode parsing the strings (``convert_query``), into a small Struct per route
(or the ``types`` Struct, where one exists). What is left here is what a Struct cannot say
by itself:

- **Error shape.** msgspec stops at the first problem and words it its own way; servers
  built on pydantic (the official one, tuft, FastAPI servers) answer 422 with a list of
  ``{"loc", "msg", "type", "input"}`` issues, one per wrong field. On failure (the slow
  path only) :func:`explain` re-checks each field against its Struct type with msgspec
  and turns msgspec's messages and paths into such issues. Invalid JSON is a 400.
- **Unknown fields, per dialect.** The strict dialect rejects unknown body fields (as
  servers on ``extra="forbid"`` models do), the others ignore them. The Structs are shared
  with the client, which must stay tolerant of responses, so ``forbid_unknown_fields``
  cannot be set on them; :func:`unknown_fields` walks the body against the Struct's
  schema (``msgspec.inspect``) instead, nested Structs included. Unknown query
  parameters are always ignored.
- **Server-side bounds** (:func:`at_least`, :func:`non_empty`, :func:`aware`). The
  official schema has no such bounds (``seq_id=-1`` is a valid ``SampleRequest``); the
  server refuses such values with 422.
- **Rules across fields** (:func:`missing`): a field required in one form of a request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

import msgspec
import msgspec.inspect as mi
from aiohttp import web

from ..types._codec import convert
from ._errors import ApiError, ValidationIssue, bad_request, unprocessable

__all__ = [
    "at_least",
    "aware",
    "convert_query",
    "convert_request",
    "decode_request",
    "describe",
    "explain",
    "finish",
    "missing",
    "non_empty",
    "read_json_object",
    "read_request",
    "unknown_fields",
]

Where = Literal["body", "query", "path"]
S = TypeVar("S")


# ------------------------------------------------------------------------ Struct decoding


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}
_SCHEMAS: dict[Any, mi.Type] = {}


def _decoder(cls: Any) -> msgspec.json.Decoder[Any]:
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.json.Decoder(cls)
    return decoder


async def read_request(request: web.Request, cls: type[S], *, strict: bool,
                       defaults: Mapping[str, Any] | None = None) -> S:
    """The request body decoded into ``cls`` (see :func:`decode_request`)."""
    return decode_request(await request.read(), cls, strict=strict, defaults=defaults)


def decode_request(raw: bytes, cls: type[S], *, strict: bool, where: Where = "body",
                   defaults: Mapping[str, Any] | None = None) -> S:
    """``raw`` JSON decoded into the request Struct ``cls``.

    An empty body is ``{}`` (the SDK sends no body for some POSTs). Invalid JSON is a 400;
    a body that does not fit ``cls`` is a 422 listing every wrong field (:func:`explain`);
    with ``strict``, unknown fields are 422s too. The fast path (non-strict, valid body)
    is one msgspec decode.

    ``defaults`` fills top-level fields the official schema requires but this server has
    always taken as optional (``{}`` for ``client/dynamic_config``, a sample without
    ``sampling_params``): leniency of the server, not part of the shared schema, so it
    is applied here, on the slow path only.
    """
    if not raw.strip():
        raw = b"{}"
    if not strict:
        try:
            result: S = _decoder(cls).decode(raw)
            return result
        except msgspec.ValidationError:
            pass  # retried below: lenient repairs, then the full list of issues
        except msgspec.DecodeError as exc:
            raise bad_request(f"Invalid JSON body: {exc}") from None
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise bad_request(f"Invalid JSON body: {exc}") from None
    if defaults and isinstance(obj, dict):
        obj = {**defaults, **obj}
    return convert_request(obj, cls, strict=strict, where=where)


def convert_request(obj: Any, cls: type[S], *, strict: bool, where: Where = "body") -> S:
    """Already-parsed JSON converted into the request Struct ``cls`` (422 on failure).

    The conversion is msgspec's, retried once after the known repairs of other clients'
    shapes (model-input chunks without a ``type`` tag; ``types._codec.repaired``).
    """
    loc: tuple[str | int, ...] = (where,)
    issues = unknown_fields(obj, cls, loc) if strict else []
    if not issues:
        try:
            return convert(obj, cls)
        except msgspec.ValidationError as exc:
            issues = explain(obj, cls, exc, loc)
    raise unprocessable(issues)


def convert_query(query: Mapping[str, str], cls: type[S]) -> S:
    """A query string converted into the Struct ``cls`` (422 on failure, ``loc`` ``query``).

    msgspec's lax mode parses the strings (``"5"`` is an int, ``"true"`` a bool, ISO
    dates and times). Unknown parameters are ignored; of a repeated one, the first counts.
    """
    obj = {key: query[key] for key in query}
    try:
        result: S = msgspec.convert(obj, cls, strict=False)
        return result
    except msgspec.ValidationError as exc:
        raise unprocessable(explain(obj, cls, exc, ("query",), lax=True)) from None


def at_least(issues: list[ValidationIssue], name: str, value: float | None,
             minimum: float, where: Where = "body") -> None:
    """Add a ``greater_than_equal`` issue when ``value`` (if given) is below ``minimum``.

    The official request schema has no bounds; the local server refuses negative sequence
    ids, counts and temperatures as pydantic servers with bounds do.
    """
    if value is not None and value < minimum:
        issues.append(_issue((where, name), "greater_than_equal",
                             f"Input should be greater than or equal to {minimum}", value,
                             ge=minimum))


def non_empty(issues: list[ValidationIssue], name: str, value: str | None,
              where: Where = "body") -> None:
    """Add a ``string_too_short`` issue when ``value`` (if given) is the empty string."""
    if value is not None and not value:
        issues.append(_issue((where, name), "string_too_short",
                             "Expected `str` of length >= 1", value, min_length=1))


def aware(issues: list[ValidationIssue], name: str, value: datetime | None,
          where: Where = "query") -> None:
    """Add a ``timezone_aware`` issue when ``value`` (if given) has no time zone."""
    if value is not None and value.tzinfo is None:
        issues.append(_issue((where, name), "timezone_aware",
                             "Input should have timezone info", value.isoformat()))


def missing(name: str, where: Where = "body") -> ValidationIssue:
    """A ``missing`` issue, for a field required only in one form of a request (a rule
    across fields, which a Struct cannot state)."""
    return _issue((where, name), "missing", f"Object missing required field `{name}`", None)


def finish(issues: list[ValidationIssue]) -> None:
    """Raise the 422 for ``issues`` (if any)."""
    if issues:
        raise unprocessable(issues)


# ------------------------------------------------------------------- msgspec -> issues

_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_EXPECTED = re.compile(r"Expected `([^`]*)`(.*?)(?:, got `([^`]*)`)?$")
_BASE_KINDS = {
    "str": "string_type",
    "int": "int_type",
    "float": "float_type",
    "bool": "bool_type",
    "object": "dict_type",
    "array": "list_type",
    "null": "none_required",
}


def _split(exc: msgspec.ValidationError) -> tuple[str, tuple[str | int, ...]]:
    """msgspec's message without its path, and the path as a tuple of keys/indices."""
    message, _, path = str(exc).partition(" - at `")
    parts: list[str | int] = []
    for key, index in _PATH_PART.findall(path.rstrip("`")):
        parts.append(int(index) if index else key)
    return message, tuple(parts)


def _kind(message: str, *, lax: bool = False) -> tuple[str, str | None]:
    """The pydantic error ``type`` of a msgspec message (and a field it names, if any).

    ``lax``: the value was a string to parse (a query parameter), so a number or flag
    that does not parse is pydantic's ``int_parsing`` / ``float_parsing`` /
    ``bool_parsing`` rather than ``int_type`` (...).
    """
    named = re.match(r"Object (missing required|contains unknown) field `([^`]*)`", message)
    if named:
        return ("missing" if named.group(1) == "missing required" else "extra_forbidden",
                named.group(2))
    expected = _EXPECTED.match(message)
    if expected:
        return _expected_kind(expected, lax), None
    unparsed = re.match(r"Invalid RFC3339 encoded (date|datetime|time)\b", message)
    if unparsed:
        return f"{unparsed.group(1)}_parsing", None
    if message.startswith("Invalid value") or message.startswith("Invalid enum value"):
        return "literal_error", None
    return "value_error", None


def _expected_kind(expected: re.Match[str], lax: bool) -> str:
    """The pydantic error ``type`` of a msgspec ``Expected `...` ...`` message."""
    first = expected.group(1).split(" | ")[0]
    constraint, got = expected.group(2), expected.group(3)
    if "timezone component" in constraint:
        return "timezone_naive" if "without" in constraint else "timezone_aware"
    if "length" in constraint:
        prefix = "string_" if first == "str" else ""
        return prefix + ("too_short" if ">" in constraint else "too_long")
    for sign, kind in ((">=", "greater_than_equal"), (">", "greater_than"),
                       ("<=", "less_than_equal"), ("<", "less_than")):
        if sign in constraint:
            return kind
    if lax and got == "str" and first in ("int", "float", "bool"):
        return f"{first}_parsing"
    return _BASE_KINDS.get(first, "type_error")


def _value_at(obj: Any, path: Iterable[str | int]) -> Any:
    for part in path:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def _from_error(obj: Any, exc: msgspec.ValidationError,
                loc: tuple[str | int, ...], *, lax: bool = False) -> ValidationIssue:
    message, path = _split(exc)
    kind, named = _kind(message, lax=lax)
    if named is not None:
        path = (*path, named)
    return _issue((*loc, *path), kind, message, _value_at(obj, path))


def explain(obj: Any, cls: type[Any], exc: msgspec.ValidationError,
            loc: tuple[str | int, ...], *, lax: bool = False) -> list[ValidationIssue]:
    """Every field of ``obj`` that does not fit the Struct ``cls``, as 422 issues.

    Each field is converted on its own with msgspec (in its lax mode if ``lax``, as query
    strings are), so each wrong field gives its own issue (msgspec alone reports the
    first). ``exc`` (the whole conversion's error) is the answer when no single field is
    at fault (a rule across fields, in the Struct's ``__post_init__``).
    """
    if not isinstance(obj, dict):
        return [_from_error(obj, exc, loc, lax=lax)]
    issues: list[ValidationIssue] = []
    config = cls.__struct_config__
    tag_field = config.tag_field
    if tag_field is not None and tag_field in obj and obj[tag_field] != config.tag:
        issues.append(_issue((*loc, tag_field), "literal_error",
                             f"Invalid value {obj[tag_field]!r}", obj[tag_field],
                             expected=repr(config.tag)))
    for info in msgspec.structs.fields(cls):
        if info.encode_name not in obj:
            if info.required:
                issues.append(_issue((*loc, info.encode_name), "missing",
                                     f"Object missing required field `{info.encode_name}`",
                                     None))
            continue
        value = obj[info.encode_name]
        try:
            if lax:
                msgspec.convert(value, info.type, strict=False)
            else:
                convert(value, info.type)
        except msgspec.ValidationError as field_exc:
            issues.append(_from_error(value, field_exc, (*loc, info.encode_name),
                                      lax=lax))
    return issues or [_from_error(obj, exc, loc, lax=lax)]


def _schema(cls: Any) -> mi.Type:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = mi.type_info(cls)
    return schema


def unknown_fields(obj: Any, cls: type[Any],
                   loc: tuple[str | int, ...]) -> list[ValidationIssue]:
    """``extra_forbidden`` issues for keys of ``obj`` (nested objects too) that the
    Struct ``cls`` does not have (its type tag counts as known)."""
    issues: list[ValidationIssue] = []
    _walk(obj, _schema(cls), loc, issues)
    return issues


def _struct_for(obj: dict[str, Any], union: mi.UnionType) -> mi.StructType | None:
    structs = [t.type if isinstance(t, mi.Metadata) else t for t in union.types]
    candidates = [t for t in structs if isinstance(t, mi.StructType)]
    for struct in candidates:
        if struct.tag_field is not None and obj.get(struct.tag_field) == struct.tag:
            return struct
    return candidates[0] if len(candidates) == 1 else None


def _walk(obj: Any, schema: mi.Type, loc: tuple[str | int, ...],
          issues: list[ValidationIssue]) -> None:
    while isinstance(schema, mi.Metadata):
        schema = schema.type
    if isinstance(schema, mi.UnionType):
        if isinstance(obj, dict):
            struct = _struct_for(obj, schema)
            if struct is not None:
                _walk(obj, struct, loc, issues)
        elif isinstance(obj, list):
            for member in schema.types:
                if isinstance(member, (mi.ListType, mi.SetType, mi.VarTupleType)):
                    _walk(obj, member, loc, issues)
                    break
        return
    if isinstance(schema, (mi.StructType, mi.DataclassType)) and isinstance(obj, dict):
        known = {f.encode_name: f for f in schema.fields}
        tag_field = getattr(schema, "tag_field", None)
        for key, value in obj.items():
            field = known.get(key)
            if field is not None:
                _walk(value, field.type, (*loc, key), issues)
            elif key != tag_field:
                issues.append(_issue((*loc, key), "extra_forbidden",
                                     f"Object contains unknown field `{key}`", value))
    elif isinstance(schema, (mi.ListType, mi.SetType, mi.VarTupleType)) and isinstance(obj, list):
        for index, item in enumerate(obj):
            _walk(item, schema.item_type, (*loc, index), issues)
    elif isinstance(schema, mi.DictType) and isinstance(obj, dict):
        for key, value in obj.items():
            _walk(value, schema.value_type, (*loc, key), issues)


# ------------------------------------------------------------------ plain JSON objects


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, for a route that looks at it before choosing
    its Struct (``convert_request``), or that ignores it.

    An empty body is ``{}`` (the SDK sends no body for some POSTs). Unparseable JSON is a
    400; valid JSON that is not an object is a 422, as FastAPI does.
    """
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise bad_request(f"Invalid JSON body: {exc}") from None
    if not isinstance(value, dict):
        raise unprocessable(
            [_issue(("body",), "dict_type", "Input should be a valid dictionary", value)]
        )
    return value


def _issue(
    loc: tuple[str | int, ...], kind: str, msg: str, value: Any, **ctx: Any
) -> ValidationIssue:
    issue: ValidationIssue = {"loc": list(loc), "msg": msg, "type": kind}
    if kind != "missing":
        issue["input"] = value
    if ctx:
        issue["ctx"] = ctx
    return issue


def describe(exc: ApiError) -> str:
    """A one-line message for an HTTP error (a 422's issues joined), e.g. for a failed
    future that takes the place of a refused request."""
    if isinstance(exc.detail, str):
        return exc.detail
    parts = []
    for issue in exc.detail:
        where = ".".join(str(p) for p in issue.get("loc", [])[1:]) or "body"
        parts.append(f"{where}: {issue.get('msg', 'invalid')}")
    return "Invalid request: " + "; ".join(parts)
