"""Construction-time validation, the way the official SDK's types do it: the error type
and the lax conversions of single values.

The official types are pydantic models in lax mode: a constructor converts what it can
(``"5"`` or ``5.0`` for an int, ``1`` for a float, ``"yes"`` for a bool, a tuple for a
list, a dict for a nested model), refuses the rest with a ``ValueError``, and builds new
lists and dicts (nested model instances are kept as they are). Our Struct types do the
same in ``__post_init__`` with the checkers of ``_checks``; this module holds what they
share: :class:`ValidationError` (what a constructor raises: the type, each field, what
was expected and what was given), the internal :class:`Invalid` a converter raises, and
the lax converters of single values (``lax_int``, ``lax_float``, ...), which follow
pydantic's rules as checked against the SDK (tests/test_types_validation.py).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import enum
import math
import operator
import re
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple, NoReturn, TypedDict

import msgspec
import numpy as np

__all__ = [
    "Detail",
    "ErrorDetails",
    "Invalid",
    "ValidationError",
    "b64_bytes_check",
    "fail",
    "lax_bool",
    "lax_bytes",
    "lax_datetime",
    "lax_float",
    "lax_int",
    "lax_str",
    "prefixed",
    "raise_errors",
]


class ErrorDetails(TypedDict):
    """One problem found by a :class:`ValidationError`."""

    loc: tuple[str | int, ...]
    """Where: the field name, then list indexes / dict keys / nested field names."""
    msg: str
    """What was expected and what was given."""
    input: Any
    """The offending value."""


class ValidationError(ValueError):
    """A type was given a value it cannot hold.

    A ``ValueError``, as pydantic's ValidationError (what the official types raise) is.
    ``title`` is the type's name; :meth:`errors` lists every problem found.
    """

    def __init__(self, title: str, errors: Sequence[ErrorDetails]) -> None:
        self.title = title
        self._errors = list(errors)
        super().__init__(self._message())

    def errors(self) -> list[ErrorDetails]:
        """Each problem: ``loc`` (field path), ``msg`` and ``input``."""
        return [ErrorDetails(loc=e["loc"], msg=e["msg"], input=e["input"]) for e in self._errors]

    def error_count(self) -> int:
        """How many problems were found."""
        return len(self._errors)

    def _message(self) -> str:
        count = len(self._errors)
        lines = [f"{count} validation error{'s' if count != 1 else ''} for {self.title}"]
        for error in self._errors:
            where = ".".join(str(part) for part in error["loc"]) or "(value)"
            lines.append(f"  {where}: {error['msg']}")
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.title, self._errors))


# --- problems while converting one value -------------------------------------------------


class Detail(NamedTuple):
    """One problem: where, what was expected, the value, and how to describe it."""

    loc: tuple[str | int, ...]
    expected: str
    input: Any
    got: str | None
    """How to describe the input when its repr would not say it well; "" when
    ``expected`` is the whole message."""


class Invalid(Exception):
    """Raised by a converter: the value (or a part of it) is not acceptable."""

    __slots__ = ("details",)

    def __init__(self, details: list[Detail]) -> None:
        super().__init__()
        self.details = details


def fail(expected: str, value: Any, got: str | None = None) -> NoReturn:
    """Refuse ``value``: ``expected`` says what would have been accepted."""
    raise Invalid([Detail((), expected, value, got)])


def prefixed(exc: Invalid, key: str | int) -> list[Detail]:
    """The details of ``exc`` located under ``key`` (a field name, index or dict key)."""
    return [d._replace(loc=(key, *d.loc)) for d in exc.details]


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return "None" if value is None else f"{type(value).__name__} {text}"


def _error(detail: Detail) -> ErrorDetails:
    if detail.got == "":
        msg = detail.expected
    else:
        got = detail.got if detail.got is not None else _show(detail.input)
        msg = f"expected {detail.expected}, got {got}"
    return ErrorDetails(loc=detail.loc, msg=msg, input=detail.input)


def raise_errors(title: str, details: list[Detail]) -> NoReturn:
    """Raise the :class:`ValidationError` of ``title`` for ``details``."""
    raise ValidationError(title, [_error(d) for d in details])


# --- lax scalars (pydantic's lax-mode rules) ----------------------------------------------

_INT_TEXT = re.compile(r"\s*([+-]?\d+(?:_\d+)*)(?:\.0*)?\s*")
_TRUE_TEXT = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_TEXT = frozenset({"0", "off", "f", "false", "n", "no"})
_EXACT_NUMBERS = (np.floating, Decimal, Fraction)


def _text(value: str | bytes | bytearray) -> str | None:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        return None


def lax_int(value: Any) -> int:
    """An int from an int, bool, integral float, numeric text, numpy or Decimal integer."""
    t = type(value)
    if t is int:
        return value  # type: ignore[no-any-return]
    if t is bool or isinstance(value, int):  # int subclasses, IntEnum members
        return int(value)
    if isinstance(value, float):  # float and np.float64
        if value.is_integer():
            return int(value)
        fail("an integer (no fractional part)", value)
    if isinstance(value, (str, bytes)):
        text = _text(value)
        match = _INT_TEXT.fullmatch(text) if text is not None else None
        if match is None:
            fail("an integer", value)
        return int(match.group(1))
    if isinstance(value, (np.integer, np.bool_)):
        return int(value)
    if isinstance(value, _EXACT_NUMBERS):
        try:
            whole = int(value)
        except (OverflowError, ValueError):
            whole = None
        if whole is None or whole != value:
            fail("an integer (no fractional part)", value)
        return whole
    if hasattr(t, "__index__"):
        return operator.index(value)
    fail("an integer", value)


def lax_float(value: Any) -> float:
    """A float from a float, int, bool, numeric text, numpy number, Decimal or Fraction."""
    t = type(value)
    if t is float:
        return value  # type: ignore[no-any-return]
    try:
        if t is int or t is bool or isinstance(value, (int, float, np.number, np.bool_)):
            return float(value)
        if isinstance(value, (str, bytes)):
            return float(value.strip())
        if isinstance(value, (Decimal, Fraction)):
            return float(value)
        if hasattr(t, "__index__"):
            return float(operator.index(value))
    except (ValueError, OverflowError):
        pass
    fail("a number", value)


def lax_str(value: Any) -> str:
    """A str from a str (subclasses, str enums) or UTF-8 bytes."""
    if type(value) is str:
        return value
    if isinstance(value, enum.Enum) and isinstance(value.value, str):
        return value.value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        text = _text(value)
        if text is not None:
            return text
    fail("a string", value)


def lax_bool(value: Any) -> bool:
    """A bool from a bool, 0/1, or text such as "true", "no", "on"."""
    if value is True or value is False:
        return value  # type: ignore[no-any-return]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, float, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, (str, bytes)):
        text = _text(value)
        if text is not None:
            text = text.strip().lower()
            if text in _TRUE_TEXT:
                return True
            if text in _FALSE_TEXT:
                return False
    fail("a boolean", value)


def lax_bytes(value: Any) -> bytes:
    """Bytes from bytes, a bytearray or memoryview, or text (UTF-8)."""
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    fail("bytes", value)


def b64_bytes_check(value: Any) -> bytes:
    """Bytes, or base64 text decoded to bytes (the SDK's image and DMel chunks accept both)."""
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            fail("bytes or base64 text", value)
    fail("bytes or base64 text", value)


def _timestamp(seconds: float) -> _dt.datetime:
    if abs(seconds) > 2e10:  # pydantic reads large numbers as milliseconds
        seconds /= 1000
    return _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)


def lax_datetime(value: Any) -> _dt.datetime:
    """A datetime from a datetime, ISO 8601 text, or a Unix timestamp (seconds; milliseconds
    when large, as pydantic reads them)."""
    if isinstance(value, _dt.datetime):
        return value
    try:
        if isinstance(value, (str, bytes)):
            text = _text(value)
            if text is not None:
                try:
                    parsed: _dt.datetime = msgspec.convert(text, _dt.datetime)
                    return parsed
                except msgspec.ValidationError:
                    pass
                try:
                    return _dt.datetime.fromisoformat(text)
                except ValueError:
                    return _timestamp(float(text))
        elif not isinstance(value, bool) and isinstance(value, (int, float, np.number)):
            if math.isfinite(value):
                return _timestamp(float(value))
    except (ValueError, OverflowError, OSError):
        pass
    fail("a datetime (or ISO 8601 text, or a Unix timestamp)", value)
