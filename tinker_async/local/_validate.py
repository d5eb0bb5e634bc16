"""Request bodies -> the request Structs of ``tinker_async.types``, with FastAPI-style errors.

Every JSON body of the training, sampling, session and futures API is decoded with
msgspec into the *same* Struct the client encodes (``decode_request``): there is one
schema, in ``tinker_async.types``, and the server reads it rather than re-parsing each
field by hand. What is left here is what a Struct cannot say by itself:

- **Error shape.** msgspec stops at the first problem and words it its own way; servers
  built on pydantic (the official one, tuft, FastAPI servers) answer 422 with a list of
  ``{"loc", "msg", "type", "input"}`` issues, one per wrong field. On failure (the slow
  path only) :func:`explain` re-checks each field against its Struct type with msgspec
  and turns msgspec's messages and paths into such issues. Invalid JSON is a 400.
- **Unknown fields, per dialect.** The strict dialect rejects unknown fields (as servers
  on ``extra="forbid"`` models do), the others ignore them. The Structs are shared with
  the client, which must stay tolerant of responses, so ``forbid_unknown_fields`` cannot
  be set on them; :func:`unknown_fields` walks the body against the Struct's schema
  (``msgspec.inspect``) instead, nested Structs included.
- **Server-side bounds** (:func:`at_least`). The official schema has no numeric bounds
  (``seq_id=-1`` is a valid ``SampleRequest``); the server refuses such values with 422.
- :class:`Fields`: the hand reader for what has no request Struct: query strings of the
  REST routes (strings parsed into numbers and flags), the REST bodies, and
  ``create_custom_loss`` (read in ``_custom_losses``, not a route module). See its
  docstring.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal, TypeVar

import msgspec
import msgspec.inspect as mi
from aiohttp import web

from ..types._codec import convert
from ._errors import ApiError, ValidationIssue, bad_request, unprocessable

__all__ = [
    "Fields",
    "at_least",
    "convert_request",
    "decode_request",
    "explain",
    "finish",
    "missing",
    "read_json_object",
    "read_request",
    "unknown_fields",
]

Where = Literal["body", "query", "path"]
S = TypeVar("S")

_TRUE_STRINGS = frozenset({"true", "1", "yes", "on"})
_FALSE_STRINGS = frozenset({"false", "0", "no", "off"})


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


def _kind(message: str) -> tuple[str, str | None]:
    """The pydantic error ``type`` of a msgspec message (and a field it names, if any)."""
    named = re.match(r"Object (missing required|contains unknown) field `([^`]*)`", message)
    if named:
        return ("missing" if named.group(1) == "missing required" else "extra_forbidden",
                named.group(2))
    expected = _EXPECTED.match(message)
    if expected:
        constraint = expected.group(2)
        if "length" in constraint:
            return ("string_too_short" if ">" in constraint else "string_too_long"), None
        for sign, kind in ((">=", "greater_than_equal"), (">", "greater_than"),
                           ("<=", "less_than_equal"), ("<", "less_than")):
            if sign in constraint:
                return kind, None
        first = expected.group(1).split(" | ")[0]
        return _BASE_KINDS.get(first, "type_error"), None
    if message.startswith("Invalid value") or message.startswith("Invalid enum value"):
        return "literal_error", None
    return "value_error", None


def _value_at(obj: Any, path: Iterable[str | int]) -> Any:
    for part in path:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def _from_error(obj: Any, exc: msgspec.ValidationError,
                loc: tuple[str | int, ...]) -> ValidationIssue:
    message, path = _split(exc)
    kind, named = _kind(message)
    if named is not None:
        path = (*path, named)
    return _issue((*loc, *path), kind, message, _value_at(obj, path))


def explain(obj: Any, cls: type[Any], exc: msgspec.ValidationError,
            loc: tuple[str | int, ...]) -> list[ValidationIssue]:
    """Every field of ``obj`` that does not fit the Struct ``cls``, as 422 issues.

    Each field is converted on its own with msgspec, so each wrong field gives its own
    issue (msgspec alone reports the first). ``exc`` (the whole conversion's error) is
    the answer when no single field is at fault (a rule across fields, in the Struct's
    ``__post_init__``).
    """
    if not isinstance(obj, dict):
        return [_from_error(obj, exc, loc)]
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
            convert(value, info.type)
        except msgspec.ValidationError as field_exc:
            issues.append(_from_error(value, field_exc, (*loc, info.encode_name)))
    return issues or [_from_error(obj, exc, loc)]


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


async def read_json_object(request: web.Request, *, allow_empty: bool = True) -> dict[str, Any]:
    """The request body as a JSON object (for bodies without a request Struct).

    An empty body is ``{}`` when ``allow_empty`` (the SDK sends no body for some POSTs).
    Unparseable JSON is a 400; valid JSON that is not an object is a 422, as FastAPI does.
    """
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise unprocessable([_issue(("body",), "missing", "Field required", None)])
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


# --------------------------------------------------------------------- the hand reader


class _Missing:
    """Marks an absent field (distinct from an explicit JSON null)."""


_MISSING = _Missing()


class Fields:
    """Reads typed fields from a mapping and collects validation issues.

    Kept only for what has no request Struct to decode into: REST query strings (values
    arrive as strings; ``limit``, ``offset``, flags...), the REST bodies in
    ``_rest_routes`` (not converted yet), tinkercloud's ``get_tokenizer`` query, and
    ``create_custom_loss`` (read in ``_custom_losses``, outside the route modules).

    ``where`` is the first element of each issue's ``loc`` (``body``, ``query`` or ``path``).
    Query values arrive as strings and are parsed; body values must already have the right
    JSON type. In ``strict`` mode, fields the handler never read are reported as
    ``extra_forbidden`` (as servers built on strict pydantic models do).
    """

    def __init__(
        self,
        source: Mapping[str, Any],
        where: Where = "body",
        *,
        strict: bool = False,
        _loc: tuple[str | int, ...] | None = None,
        _issues: list[ValidationIssue] | None = None,
    ) -> None:
        self._source = source
        self._parse_strings = where != "body"
        self._strict = strict
        self._loc: tuple[str | int, ...] = _loc if _loc is not None else (where,)
        self._issues: list[ValidationIssue] = _issues if _issues is not None else []
        self._seen: set[str] = set()
        self._children: list[Fields] = []

    # ----------------------------------------------------------------------------- helpers

    def _fetch(self, name: str) -> Any:
        self._seen.add(name)
        return self._source.get(name, _MISSING)

    def _add(self, name: str, kind: str, msg: str, value: Any, **ctx: Any) -> None:
        self._issues.append(_issue((*self._loc, name), kind, msg, value, **ctx))

    def _missing(self, name: str) -> None:
        self._add(name, "missing", "Field required", None)

    def _bounds(self, name: str, value: float, ge: float | None, le: float | None) -> None:
        if ge is not None and value < ge:
            self._add(
                name,
                "greater_than_equal",
                f"Input should be greater than or equal to {ge}",
                value,
                ge=ge,
            )
        if le is not None and value > le:
            self._add(
                name, "less_than_equal", f"Input should be less than or equal to {le}", value, le=le
            )

    # ------------------------------------------------------------------------------ strings

    def opt_text(
        self, name: str, *, choices: Collection[str] | None = None, min_length: int | None = None
    ) -> str | None:
        """An optional string (absent or null is ``None``)."""
        value = self._fetch(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, str):
            self._add(name, "string_type", "Input should be a valid string", value)
            return None
        if min_length is not None and len(value) < min_length:
            self._add(
                name,
                "string_too_short",
                f"String should have at least {min_length} character{'s' if min_length != 1 else ''}",
                value,
                min_length=min_length,
            )
        if choices is not None and value not in choices:
            expected = " or ".join(repr(c) for c in choices)
            self._add(
                name, "literal_error", f"Input should be {expected}", value, expected=expected
            )
        return value

    def text(
        self,
        name: str,
        *,
        default: str | None = None,
        choices: Collection[str] | None = None,
        min_length: int | None = None,
    ) -> str:
        """A string; required unless ``default`` is given (then absent or null gives it)."""
        raw = self._source.get(name, _MISSING)
        if raw is _MISSING or raw is None:
            self._seen.add(name)
            if default is not None:
                return default
            if raw is _MISSING:
                self._missing(name)
            else:
                self._add(name, "string_type", "Input should be a valid string", None)
            return ""
        return self.opt_text(name, choices=choices, min_length=min_length) or ""

    # ------------------------------------------------------------------------------ numbers

    def opt_integer(self, name: str, *, ge: int | None = None, le: int | None = None) -> int | None:
        """An optional integer (absent or null is ``None``). Booleans are not integers."""
        value = self._fetch(name)
        if value is _MISSING or value is None:
            return None
        if self._parse_strings and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                self._add(
                    name,
                    "int_parsing",
                    "Input should be a valid integer, unable to parse string as an integer",
                    value,
                )
                return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self._add(name, "int_type", "Input should be a valid integer", value)
            return None
        self._bounds(name, value, ge, le)
        return value

    def integer(
        self, name: str, *, default: int | None = None, ge: int | None = None, le: int | None = None
    ) -> int:
        """An integer; required unless ``default`` is given (then absent or null gives it)."""
        raw = self._source.get(name, _MISSING)
        if raw is _MISSING or raw is None:
            self._seen.add(name)
            if default is not None:
                return default
            if raw is _MISSING:
                self._missing(name)
            else:
                self._add(name, "int_type", "Input should be a valid integer", None)
            return 0
        value = self.opt_integer(name, ge=ge, le=le)
        return value if value is not None else 0

    def opt_number(
        self, name: str, *, ge: float | None = None, le: float | None = None
    ) -> float | None:
        """An optional number (int or float; absent or null is ``None``)."""
        value = self._fetch(name)
        if value is _MISSING or value is None:
            return None
        if self._parse_strings and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                self._add(
                    name,
                    "float_parsing",
                    "Input should be a valid number, unable to parse string as a number",
                    value,
                )
                return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self._add(name, "float_type", "Input should be a valid number", value)
            return None
        self._bounds(name, float(value), ge, le)
        return float(value)

    # ------------------------------------------------------------------------------- others

    def flag(self, name: str, *, default: bool = False) -> bool:
        """A boolean with a default (absent or null gives the default)."""
        value = self._fetch(name)
        if value is _MISSING or value is None:
            return default
        if self._parse_strings and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE_STRINGS:
                return True
            if lowered in _FALSE_STRINGS:
                return False
            self._add(
                name,
                "bool_parsing",
                "Input should be a valid boolean, unable to interpret input",
                value,
            )
            return default
        if not isinstance(value, bool):
            self._add(name, "bool_type", "Input should be a valid boolean", value)
            return default
        return value

    def opt_mapping(self, name: str, *, str_values: bool = False) -> dict[str, Any] | None:
        """An optional JSON object; ``str_values`` also requires every value to be a string."""
        value = self._fetch(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, dict):
            self._add(name, "dict_type", "Input should be a valid dictionary", value)
            return None
        if str_values:
            for key, item in value.items():
                if not isinstance(item, str):
                    self._issues.append(
                        _issue(
                            (*self._loc, name, key),
                            "string_type",
                            "Input should be a valid string",
                            item,
                        )
                    )
        return value

    def strings(self, name: str) -> list[str]:
        """A list of strings; absent or null is ``[]``."""
        value = self._fetch(name)
        if value is _MISSING or value is None:
            return []
        if not isinstance(value, list):
            self._add(name, "list_type", "Input should be a valid list", value)
            return []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self._issues.append(
                    _issue(
                        (*self._loc, name, index),
                        "string_type",
                        "Input should be a valid string",
                        item,
                    )
                )
        return [item for item in value if isinstance(item, str)]

    def opt_strings(self, name: str) -> list[str] | None:
        """An optional list of strings (absent or null is ``None``)."""
        if self._source.get(name) is None:
            self._seen.add(name)
            return None
        return self.strings(name)

    def items(self, name: str) -> list[Fields] | None:
        """Readers over a list of objects (absent or null is ``None``)."""
        values = self.opt_list(name)
        if values is None:
            return None
        readers: list[Fields] = []
        for index, value in enumerate(values):
            if not isinstance(value, dict):
                self._issues.append(
                    _issue(
                        (*self._loc, name, index),
                        "dict_type",
                        "Input should be a valid dictionary",
                        value,
                    )
                )
                continue
            reader = Fields(
                value, strict=self._strict, _loc=(*self._loc, name, index), _issues=self._issues
            )
            self._children.append(reader)
            readers.append(reader)
        return readers

    def opt_list(self, name: str) -> list[Any] | None:
        """An optional JSON array of anything."""
        value = self._fetch(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, list):
            self._add(name, "list_type", "Input should be a valid list", value)
            return None
        return value

    def nested(self, name: str, *, required: bool = True) -> Fields | None:
        """A reader over a nested object, sharing this reader's issue list.

        Returns ``None`` when the field is absent (reported as missing if ``required``)
        or not an object (reported).
        """
        value = self._fetch(name)
        if value is _MISSING or value is None:
            if required:
                self._missing(name)
            return None
        if not isinstance(value, dict):
            self._add(name, "dict_type", "Input should be a valid dictionary", value)
            return None
        child = Fields(value, strict=self._strict, _loc=(*self._loc, name), _issues=self._issues)
        self._children.append(child)
        return child

    def ignore(self, *names: str) -> None:
        """Mark fields as known without reading them (so strict mode accepts them)."""
        self._seen.update(names)

    def add_issue(self, name: str, kind: str, msg: str, value: Any) -> None:
        """Report a handler-specific problem with one field (still a 422)."""
        self._add(name, kind, msg, value)

    # ------------------------------------------------------------------------------ finish

    def _collect_extras(self) -> None:
        for name, value in self._source.items():
            if name not in self._seen:
                self._add(name, "extra_forbidden", "Extra inputs are not permitted", value)
        for child in self._children:
            child._collect_extras()

    def finish(self) -> None:
        """Raise one 422 listing every problem found so far (and, when strict, extras)."""
        if self._strict:
            self._collect_extras()
        if self._issues:
            raise unprocessable(self._issues)
