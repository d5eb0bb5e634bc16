"""An HTTP proxy in front of the embedded server that can break file downloads mid-body.

The embedded server's fault injection acts before a handler runs, so it cannot drop a
connection in the middle of a response; this proxy can. It forwards every request to the
upstream server (keeping the ``Host`` it was called with, so the signed URLs the server
hands out point back through the proxy) and, for ``GET /files/...``:

- ``cut(after_bytes, times)``: the next ``times`` file responses send their headers (with
  the full ``Content-Length``) and ``after_bytes`` bytes of body, then the connection is
  closed: a dropped connection mid-download.
- ``stall(after_bytes, times=None)``: file responses (the next ``times`` of them, or all)
  send ``after_bytes`` bytes and then hang until ``release()`` (so a test can interrupt
  the client mid-download, or let its read time out).

It runs on its own loop in a daemon thread, like ``LocalServer.in_thread``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from aiohttp import web

_HOP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}
_STALL_POLLS = 2400  # 0.05 s each: a stalled response gives up after two minutes


class FlakyProxy:
    """See the module docstring. ``url`` is the proxy's base URL once started."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self._cut_after: int | None = None
        self._cuts_left = 0
        self._stall_after: int | None = None
        self._stalls_left: int | None = None
        self._released = threading.Event()
        self.cuts_done = 0
        #: file responses that have reached their stall point (and wait for release())
        self.stalls_begun = 0
        self.file_requests: list[dict[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def cut(self, after_bytes: int, times: int = 1) -> None:
        self._cut_after, self._cuts_left = after_bytes, times

    def stall(self, after_bytes: int, times: int | None = None) -> None:
        self._stall_after, self._stalls_left = after_bytes, times
        self._released.clear()

    def release(self) -> None:
        self._stall_after = None
        self._released.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._forward(request)
        except ConnectionResetError:  # the client went away (it was told to): no noise
            return web.Response(status=499)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Host"] = request.host
        body = await request.read()
        is_file = request.method == "GET" and request.path.startswith("/files/")
        if is_file:
            self.file_requests.append(dict(request.headers))
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         headers=headers, data=body or None,
                                         allow_redirects=False) as upstream:
            out_headers = {k: v for k, v in upstream.headers.items()
                           if k.lower() not in _HOP_HEADERS - {"content-length"}}
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            await response.prepare(request)
            cut_at = self._cut_after if is_file and self._cuts_left > 0 else None
            stall_at = self._stall_after if is_file and self._stalls_left != 0 else None
            sent = 0
            async for chunk in upstream.content.iter_chunked(16 * 1024):
                view = chunk
                while view:
                    if cut_at is not None and sent + len(view) > cut_at:
                        kind, at = "cut", cut_at
                    elif stall_at is not None and sent + len(view) > stall_at:
                        kind, at = "stall", stall_at
                    else:
                        await response.write(view)
                        sent += len(view)
                        break
                    head, view = view[: at - sent], view[at - sent:]
                    if head:
                        await response.write(head)
                    sent = at
                    if kind == "cut":
                        self._cuts_left -= 1
                        self.cuts_done += 1
                        # Let the client read what was sent before the connection goes
                        # (aiohttp drops unread bytes once it sees the broken stream).
                        # Not deterministic: the proxy cannot see what the client has
                        # read (its .part file is written in blocks), so this is a grace
                        # period, kept wide; only the exact-size checks of
                        # test_download depend on it.
                        await asyncio.sleep(0.5)
                        assert request.transport is not None
                        request.transport.close()
                        return response
                    if self._stalls_left is not None:
                        self._stalls_left -= 1
                    self.stalls_begun += 1
                    for _ in range(_STALL_POLLS):  # wait for release() (or give up)
                        if self._released.is_set():
                            break
                        await asyncio.sleep(0.05)
                    stall_at = None
            await response.write_eof()
            return response

    async def _serve(self, ready: threading.Event) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._stop = asyncio.Event()
        ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await self._session.close()

    @contextmanager
    def running(self) -> Iterator[FlakyProxy]:
        """Run the proxy in a thread for the duration of the ``with`` block."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._serve(ready),), daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the proxy did not start")
        try:
            yield self
        finally:
            self.release()
            assert self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
            self._loop.close()

    _session: aiohttp.ClientSession | None = None
