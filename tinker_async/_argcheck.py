"""Argument checks at the call: a wrong type fails where the call is made, clearly.

Each client method's parameters are checked against its own annotations when it is
called (before a coroutine or a future exists), so ``client.sample(prompt="hi", ...)``
raises at that line, naming the method, the parameter, what it wants and what it got;
the official SDK's pydantic requests fail at the call too. The checks are built once per
method from the annotations; what an annotation cannot say cheaply (``Any``, protocols,
names only imported for type checking) is left to the method itself.

Accepted like pydantic's lax mode: an integral number for ``int`` (numpy ints too, never
``bool``), any real number for ``float``, a list or tuple for a sequence.
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InvalidRequestError

__all__ = ["ArgumentChecks", "check_call"]

Check = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(annotation: Any) -> str:
    """What an annotation asks for, in words: ``one of 'a', 'b'``, ``a list of Datum``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    # (On 3.10 a generic alias such as Sequence[Datum] also passes isinstance(_, type).)
    if origin is None and isinstance(annotation, type):
        return annotation.__name__
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join("None" if a is type(None) else _describe(a) for a in args)
    if origin in (list, collections.abc.Sequence, tuple, collections.abc.Iterable):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _check_for(annotation: Any) -> Check | None:
    """A predicate for values of ``annotation``, or None when it cannot be checked cheaply."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    if annotation is type(None) or annotation is None:
        return lambda v: v is None
    if annotation is bool:
        return lambda v: isinstance(v, bool)
    if annotation is int:
        return _is_int
    if annotation is float:
        return _is_real
    if annotation is str:
        return lambda v: isinstance(v, str)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        parts = [_check_for(a) for a in args]
        if any(p is None for p in parts):
            return None
        checks = [p for p in parts if p is not None]
        return lambda v: any(c(v) for c in checks)
    if origin is typing.Literal:
        allowed = frozenset(args)
        return lambda v: isinstance(v, typing.Hashable) and v in allowed
    if origin in (list, collections.abc.Sequence, tuple, collections.abc.Iterable):
        item = _check_for(args[0]) if args and origin is not tuple else None
        if item is None:
            return lambda v: isinstance(v, (list, tuple))
        return lambda v: isinstance(v, (list, tuple)) and all(item(x) for x in v)
    if origin in (dict, collections.abc.Mapping):
        return lambda v: isinstance(v, Mapping)
    if origin is not None:
        # Another generic class (os.PathLike[str]...): its class alone. On 3.10 the alias
        # also passes isinstance(annotation, type), but isinstance() refuses it.
        if isinstance(origin, type) and not getattr(origin, "_is_protocol", False):
            return lambda v: isinstance(v, origin)
        return None
    if isinstance(annotation, type) and not getattr(annotation, "_is_protocol", False):
        return lambda v: isinstance(v, annotation)
    return None


class ArgumentChecks:
    """The argument checks of one client method, built from its annotations on first use."""

    __slots__ = ("_checks", "_fn", "_owner", "_positional")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        self._checks: dict[str, tuple[Check, str]] | None = None
        self._owner = fn.__qualname__.removesuffix("_async")
        #: the names positional arguments bind to, in order (after ``self``)
        self._positional: tuple[str, ...] = ()

    def _build(self) -> dict[str, tuple[Check, str]]:
        fn = self._fn
        signature = inspect.signature(fn)
        self._positional = tuple(
            name for name, p in signature.parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        module = sys.modules.get(fn.__module__)
        namespace = dict(vars(module)) if module is not None else {}
        checks: dict[str, tuple[Check, str]] = {}
        for name, param in signature.parameters.items():
            if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            annotation = param.annotation
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, namespace)  # the module's own names
                except Exception:  # a name imported only for type checking: not checked
                    continue
            check = _check_for(annotation)
            if check is not None:
                checks[name] = (check, _describe(annotation))
        self._checks = checks
        return checks

    def named(self, values: Mapping[str, Any]) -> None:
        """Check arguments given by name (a plain form's ``locals()``)."""
        checks = self._checks if self._checks is not None else self._build()
        for name, (check, wanted) in checks.items():
            if name in values:
                value = values[name]
                if not check(value):
                    raise self._error(name, wanted, value)

    def positional(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Check the arguments of a call ``fn(self, *args, **kwargs)`` (a call that does not
        fit the signature is left for the call itself to refuse, with Python's TypeError)."""
        checks = self._checks if self._checks is not None else self._build()
        if not checks:
            return
        if args:
            self.named(dict(zip(self._positional, args, strict=False)))  # extra args: TypeError later
        if kwargs:
            self.named(kwargs)

    def _error(self, name: str, wanted: str, value: Any) -> InvalidRequestError:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return InvalidRequestError(
            f"{self._owner}(): {name} must be {wanted}, got {type(value).__name__} {shown}")


def check_call(method: Any, values: Mapping[str, Any]) -> None:
    """Check a plain form's arguments against its ``_async`` method's annotations (a
    method some tracing code replaced has no checks, and is not checked)."""
    checks = getattr(method, "__argcheck__", None)
    if isinstance(checks, ArgumentChecks):
        checks.named(values)
