"""The benchmark server: the embedded zero-compute server in a process of its own.

``python -m benchmarks._server [--no-long-poll] [--record] [--sample-delay S] [--poll-hold S]``
prints one JSON line ``{"url": ..., "api_key": ..., "pid": ...}`` once it listens, then
answers JSON commands on stdin, one per line, with one JSON line each:

- ``{"cmd": "counts", "since": t0, "until": t1}`` -> ``{"counts": {"POST /api/v1/asample":
  n, ...}}``: requests that arrived between ``t0`` and ``t1`` (``time.time()``; both
  optional) by the request log (needs ``--record``),
- ``{"cmd": "clear"}`` -> ``{"ok": true}`` (empties the request log),
- ``{"cmd": "sample_delay", "seconds": s}`` -> ``{"ok": true}``,
- ``{"cmd": "pending"}`` -> ``{"pending": n}`` (server futures not finished yet),
- ``{"cmd": "quit"}`` (or end of stdin) stops the server.

Only 127.0.0.1. The server is ``tinker_async.local.LocalServer(zero_compute=True, ...)``;
the one thing added here is ``--sample-delay``: sampling futures finish that many seconds
after submission (zero-compute samples otherwise finish at once), so that benchmarks can
hold futures in flight on the server. It wraps the server's future store in this process
only; no library code changes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import inspect
import json
import os
import sys
from typing import Any


def _delaying_submit(store: Any, delay: list[float]) -> None:
    """Wrap ``store.submit`` so that ``Sample`` work finishes ``delay[0]`` s later."""
    original = store.submit

    def submit(work: Any, *args: Any, kind: str = "generic", **kwargs: Any) -> str:
        seconds = delay[0]
        if kind == "Sample" and seconds > 0:
            inner = work

            async def delayed() -> Any:
                await asyncio.sleep(seconds)
                value = inner() if callable(inner) else await inner
                if inspect.isawaitable(value):
                    value = await value
                return value

            work = delayed
        request_id: str = original(work, *args, kind=kind, **kwargs)
        return request_id

    store.submit = submit


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._server")
    parser.add_argument("--no-long-poll", action="store_true",
                        help="client_config sample_use_retrieve_futures=false")
    parser.add_argument("--record", action="store_true", help="keep the request log")
    parser.add_argument("--sample-delay", type=float, default=0.0)
    parser.add_argument("--poll-hold", type=float, default=10.0)
    args = parser.parse_args()

    from tinker_async.local import LocalServer

    srv = LocalServer(
        host="127.0.0.1",
        port=0,
        zero_compute=True,
        session_timeout_s=900.0,
        client_config={"sample_use_retrieve_futures": not args.no_long_poll},
        poll_hold_s=args.poll_hold,
        record_requests=args.record,
        max_recorded_requests=1_000_000,
    )
    delay = [args.sample_delay]
    _delaying_submit(srv.futures, delay)
    srv.start_in_thread()
    out = sys.stdout
    out.write(json.dumps({"url": srv.url, "api_key": srv.api_key, "pid": os.getpid()}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            name = cmd.get("cmd")
            reply: dict[str, Any]
            if name == "counts":
                since, until = cmd.get("since", 0.0), cmd.get("until", float("inf"))
                counts = collections.Counter(
                    f"{r.method} {r.path}" for r in srv.requests if since <= r.time <= until)
                reply = {"counts": dict(counts)}
            elif name == "clear":
                srv.clear_requests()
                reply = {"ok": True}
            elif name == "sample_delay":
                delay[0] = float(cmd["seconds"])
                reply = {"ok": True}
            elif name == "pending":
                n = srv._on_loop(
                    lambda: sum(1 for f in srv.futures._futures.values() if f.state == "pending"))
                reply = {"pending": n}
            elif name == "quit":
                break
            else:
                reply = {"error": f"unknown command {name!r}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        srv.stop(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
