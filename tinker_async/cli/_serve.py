"""``tinker-async serve``: the embedded server, until Ctrl-C (or SIGTERM).

Same server as ``python -m tinker_async.local``; a port that cannot be bound is one
line ("address already in use ..."), not an ``OSError`` traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sys
from typing import TYPE_CHECKING

from ._output import CliError, Context

if TYPE_CHECKING:
    from ..local import LocalServer

__all__ = ["serve"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


async def _serve(server: LocalServer, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except OSError as exc:
        host = server.host
        reason = ("address already in use" if exc.errno == errno.EADDRINUSE
                  else (exc.strerror or str(exc)).lower())
        hint = ("; stop the other server or pick another --port (0 picks a free one)"
                if exc.errno == errno.EADDRINUSE else "")
        raise CliError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    try:
        print(f"Tinker-compatible server listening on {server.url}", flush=True)
        print(f"  export TINKER_BASE_URL={server.url}", flush=True)
        if server.config.api_key is None:
            print("  (no API key required; clients may send any tml-... key)", flush=True)
        await stop.wait()
    finally:
        await server.aclose()
    print("stopped", flush=True)


def serve(ctx: Context) -> int:
    from ..local import LocalServer

    a = ctx.args
    api_key = a.api_key or os.environ.get("TINKER_LOCAL_API_KEY")
    if a.host not in _LOOPBACK and not api_key:
        print(f"warning: serving on {a.host} without --api-key: anyone who can reach it may "
              "use it", file=sys.stderr)
    options = {"models": a.models} if a.models else {}
    try:
        server = LocalServer(
            host=a.host, port=a.port, api_key=api_key, data_dir=a.data_dir,
            zero_compute=a.zero_compute, session_timeout_s=a.session_timeout,
            dialect=a.dialect or "official", poll_hold_s=a.poll_hold,
            client_config={"custom_loss_server_side": True} if a.custom_loss_server_side
            else None,
            **options,
        )
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    asyncio.run(_serve(server, a.port))
    return 0
