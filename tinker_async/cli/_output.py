"""What the command line prints: aligned tables, key/value blocks, relative times, human
sizes, JSON; and the per-command context (parsed options, the REST client).

Tables and messages go to stdout; prompts, progress and errors to stderr, so that
``--json`` output can be piped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..rest import AdminClient, RestClient

__all__ = [
    "CliError",
    "Context",
    "ago",
    "emit_json",
    "human_size",
    "print_pairs",
    "print_table",
    "to_data",
    "yes_no",
]


class CliError(Exception):
    """A failure to report as one line; ``status`` 1 (could not be done) or 2 (usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- formatting


def human_size(n: int | None) -> str:
    """``1.5 MB``-style (powers of 1024, as the official CLI); ``-`` when unknown."""
    if n is None or n < 0:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if size < 1024 or unit == "PB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def ago(value: dt.datetime | str | None, now: dt.datetime | None = None) -> str:
    """``just now``, ``42 s ago``, ``3 min ago``, ``5 h ago``, ``2 days ago``, ``in 3 days``;
    a date beyond 30 days; ``-`` when unknown."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    else:
        when = value
    value = _aware(when)
    now = now or dt.datetime.now(dt.timezone.utc)
    delta = (now - value).total_seconds()
    future, seconds = delta < 0, abs(delta)
    if seconds < 10:
        return "just now"
    if seconds >= 30 * 86400:
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")
    for size, unit in ((86400, "day"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            n = int(seconds // size)
            text = f"{n} {unit}" + ("s" if unit == "day" and n != 1 else "")
            return f"in {text}" if future else f"{text} ago"
    raise AssertionError("unreachable")


def yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _cell(value: Any) -> str:
    return "-" if value is None else " ".join(str(value).split("\n"))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                title: str | None = None, empty: str = "(none)") -> None:
    """An aligned table with upper-case headers; ``empty`` if there are no rows."""
    cells = [[_cell(v) for v in row] for row in rows]
    if title:
        print(title)
    if not cells:
        print(empty)
        return
    heads = [h.upper() for h in headers]
    widths = [max(len(heads[i]), *(len(r[i]) for r in cells)) for i in range(len(heads))]
    for row in (heads, *cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_pairs(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> None:
    """``Key   value`` lines, keys aligned."""
    items = [(k, _cell(v)) for k, v in pairs]
    if title:
        print(title)
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        print(f"{key.ljust(width)}  {value}".rstrip())


def to_data(value: Any) -> Any:
    """Plain JSON-able data from API types (msgspec Structs, dataclasses, datetimes), with
    every field, also those left at their defaults (like the official ``model_dump``)."""
    import dataclasses

    import msgspec

    if isinstance(value, msgspec.Struct):
        return {name: to_data(getattr(value, name)) for name in value.__struct_fields__}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    return msgspec.to_builtins(value, str_keys=True, enc_hook=str)


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(to_data(data), indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- context


class Context:
    """The parsed options of one command, and the clients it needs (made on first use)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = bool(args.json)
        self._rest: RestClient | None = None

    def client_options(self) -> dict[str, Any]:
        """The settings every client of this command gets."""
        a = self.args
        options: dict[str, Any] = {"base_url": a.base_url, "api_key": a.api_key}
        if a.dialect:
            options["dialect"] = a.dialect
        if a.timeout:
            options["timeout"] = a.timeout
        return options

    def rest(self) -> RestClient:
        if self._rest is None:
            from ..rest import RestClient

            self._rest = RestClient(**self.client_options())
        return self._rest

    def admin(self) -> AdminClient:
        from ..rest import AdminClient

        return AdminClient(self.rest())

    async def aclose(self) -> None:
        if self._rest is not None:
            await self._rest.close_async()

    def say(self, data: Any, text: str) -> None:
        """``data`` as JSON with ``--json``, else the line ``text``."""
        if self.json:
            emit_json(data)
        else:
            print(text)

    def pairs_or_json(self, data: Mapping[str, Any], pairs: Iterable[tuple[str, Any]],
                      title: str | None = None) -> None:
        if self.json:
            emit_json(data)
        else:
            print_pairs(pairs, title)
