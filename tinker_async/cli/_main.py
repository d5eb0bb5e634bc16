"""Runs one command: parse, dispatch (lazily), and turn every failure into one line.

Exit status: 0 ok, 1 the server, the network or a file said no, 2 the command line is
wrong (bad arguments, a missing key or URL, a malformed path), 130 Ctrl-C (quietly).
``--debug`` adds the traceback and the library's debug log.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from ._parser import UsageError, parse

if TYPE_CHECKING:
    import argparse

    from ._output import Context

# Only the parser is imported up front: --help and usage errors need nothing else.

__all__ = ["run"]

# Library messages name the Python arguments; on the command line they are options.
_OPTION_NAMES = (
    (re.compile(r"[Pp]ass api_key=\.\.\.( / set| or set)?"), "Pass --api-key or set"),
    (re.compile(r"[Pp]ass base_url=\.\.\.( or set| / set)?"), "Pass --base-url or set"),
    (re.compile(r"\bapi_key=\.\.\."), "--api-key"),
    (re.compile(r"\bbase_url=\.\.\."), "--base-url"),
    (re.compile(r"\(TINKER_API_KEY\)"), "(--api-key or TINKER_API_KEY)"),
    (re.compile(r"--force \(force=True\)"), "--force"),
    (re.compile(r"force=True"), "--force"),
    (re.compile(r"; for the embedded server, use LocalServer\(\)\.api_key"),
     "; for 'tinker-async serve', the key it was started with"),
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _classify(exc: BaseException) -> tuple[int, str]:
    """(exit status, message) for a failure."""
    from ..errors import (
        APIConnectionError,
        ConfigurationError,
        InvalidRequestError,
        TinkerError,
    )
    from ..paths import InvalidPathError
    from ._output import CliError

    if isinstance(exc, CliError):
        return exc.status, str(exc)
    if isinstance(exc, (ConfigurationError, InvalidRequestError, InvalidPathError)):
        message = str(exc)
        for pattern, replacement in _OPTION_NAMES:
            message = pattern.sub(replacement, message)
        return 2, message
    if isinstance(exc, APIConnectionError):
        return 1, f"{exc} (server from --base-url or TINKER_BASE_URL)"
    if isinstance(exc, TinkerError):
        message = str(exc)
        for pattern, replacement in _OPTION_NAMES:
            message = pattern.sub(replacement, message)
        return 1, message or type(exc).__name__
    if isinstance(exc, OSError):
        if exc.filename is not None and exc.strerror:
            return 1, f"{exc.strerror}: {exc.filename}"
        message = str(exc) or type(exc).__name__
        for pattern, replacement in _OPTION_NAMES:
            message = pattern.sub(replacement, message)
        return 1, message
    return 1, f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)"


def _setup_logging(debug: bool) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(levelname)s %(name)s: %(message)s" if debug else "%(levelname)s: %(message)s"))
    for name in ("tinker_async", "aiohttp.access") if debug else ("tinker_async",):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        # Without --debug a failure is one line: the retries before it are not shown.
        logger.setLevel(logging.DEBUG if debug else logging.ERROR)
        logger.propagate = False


async def _run_async(ctx: Context, coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return await coro
    finally:
        await ctx.aclose()


def run(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        try:
            args = parse(argv)
        except UsageError as exc:
            print(f"error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        debug = bool(args.debug)
        _setup_logging(debug)
        return _dispatch(args)
    except SystemExit as exc:  # --help, --version of argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tinker-async run list | head`: not an error of ours
        return 0
    except BaseException as exc:  # every failure is one line, by design
        status, message = _classify(exc)
        if debug:
            import traceback

            traceback.print_exc()
        print(f"error: {_one_line(message)}", file=sys.stderr)
        return status


def _dispatch(args: argparse.Namespace) -> int:
    import asyncio
    import importlib
    import inspect

    from ._output import Context

    module_name, _, function = str(args.handler).partition(":")
    handler = getattr(importlib.import_module(module_name), function)
    ctx = Context(args)
    result = handler(ctx)
    if inspect.iscoroutine(result):
        result = asyncio.run(_run_async(ctx, result))
    sys.stdout.flush()
    return int(result or 0)
