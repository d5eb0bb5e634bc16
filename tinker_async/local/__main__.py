"""``python -m tinker_async.local``: serve the embedded Tinker-compatible server until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from ._config import DEFAULT_MODEL
from ._dialects import DIALECTS
from ._server import LocalServer

__all__ = ["main"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinker_async.local",
        description="Run a local Tinker-compatible server (no account, no GPU).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks one)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TINKER_LOCAL_API_KEY"),
        help="require this key (default: $TINKER_LOCAL_API_KEY; unset accepts any request)",
    )
    parser.add_argument("--data-dir", help="keep checkpoints here (default: a temporary dir)")
    parser.add_argument(
        "--zero-compute", action="store_true", help="skip model math (for client benchmarks)"
    )
    parser.add_argument("--dialect", default="official", choices=sorted(DIALECTS))
    parser.add_argument("--session-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--poll-hold", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help=f"a supported model name (repeatable; default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--custom-loss-server-side",
        action="store_true",
        help="offer server-side custom losses (create_custom_loss; needs torch here)",
    )
    return parser


async def _serve(server: LocalServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows event loops; Ctrl-C then raises KeyboardInterrupt instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with server:
        print(f"Tinker-compatible server listening on {server.url}", flush=True)
        print(f"  export TINKER_BASE_URL={server.url}", flush=True)
        if server.config.api_key is None:
            print("  (no API key required; clients may send any tml-... key)", flush=True)
        await stop.wait()
    print("stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and serve until interrupted."""
    args = _parser().parse_args(argv)
    if args.host not in _LOOPBACK and not args.api_key:
        print(
            f"warning: serving on {args.host} without --api-key: anyone who can reach it "
            "may use it",
            file=sys.stderr,
        )
    server = LocalServer(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        data_dir=args.data_dir,
        zero_compute=args.zero_compute,
        session_timeout_s=args.session_timeout,
        dialect=args.dialect,
        models=args.models or (DEFAULT_MODEL,),
        poll_hold_s=args.poll_hold,
        client_config={"custom_loss_server_side": True} if args.custom_loss_server_side else None,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
