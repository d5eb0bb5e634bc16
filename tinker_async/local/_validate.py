"""Typed field access for JSON bodies and query strings, with FastAPI-style 422 errors.

The server deliberately does not reuse the client's types: it is an independent reading of
the wire format, so a mistake in one is caught by the other. Each handler reads its fields
through a :class:`Fields` reader, which collects *every* problem (as pydantic does) and
raises one 422 from :meth:`Fields.finish`::

    f = Fields(body, "body", strict=dialect.strict_fields)
    session_id = f.text("session_id")
    seq = f.integer("sampling_session_seq_id", ge=0)
    base_model = f.opt_text("base_model")
    f.finish()            # raises ApiError(422, [...]) if anything was wrong

Until ``finish`` has run, a value whose field was invalid is a placeholder; do not use it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal

import msgspec
from aiohttp import web

from ._errors import ValidationIssue, bad_request, unprocessable

__all__ = ["Fields", "read_json_object"]

Where = Literal["body", "query", "path"]

_TRUE_STRINGS = frozenset({"true", "1", "yes", "on"})
_FALSE_STRINGS = frozenset({"false", "0", "no", "off"})


async def read_json_object(request: web.Request, *, allow_empty: bool = True) -> dict[str, Any]:
    """The request body as a JSON object.

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


class _Missing:
    """Marks an absent field (distinct from an explicit JSON null)."""


_MISSING = _Missing()


class Fields:
    """Reads typed fields from a mapping and collects validation issues.

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
