"""The event loops clients live on: the background loop, each client family's home loop,
loop-bound locks, and *guest* runs.

The rule (design.md §3): **a client lives where it is first used.** A :class:`Home` is
shared by a ServiceClient and every client it creates (they share one aiohttp session,
which belongs to one loop). Its first ``foo_async()`` call inside a running loop makes
that loop its home; its first plain ``foo()`` call makes the process-wide background loop
its home. If the home loop closes or stops (scripts call ``asyncio.run`` several times),
or the process forks, the next use moves the home; transport, poller and session drop
their loop-bound state through :meth:`Home.on_move` hooks.

A **guest run** is the one exception: a plain call made on the home loop's own thread
whose ``.result()`` is asked for before the loop ran it (tinker-cookbook does this inside
``async def`` on clients first used through ``_async`` methods; the official SDK blocks
and succeeds). Blocking that thread stops the home loop, so the call runs on the
background loop instead, as a guest: :func:`in_guest_run` is true there, and the
loop-bound resources (aiohttp session, poll semaphore, locks) use guest instances of
their own instead of the home's. The home does not move: async code keeps its loop and
pays no thread hop.

This module sits below the transport and the session; it imports nothing of the package.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "Home",
    "LoopLock",
    "background_loop",
    "background_loop_if_started",
    "current_pid",
    "guest_run",
    "in_guest_run",
    "running_loop",
]

log = logging.getLogger("tinker_async")

_pid = os.getpid()


def current_pid() -> int:
    """This process's id, as last seen (updated in a forked child)."""
    return _pid


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop of this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _BackgroundLoop:
    """One event loop in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(started,), name="tinker-async-loop", daemon=True
        )
        self.thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()


_background: _BackgroundLoop | None = None
_background_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide background loop (started lazily, fresh after a fork)."""
    global _background
    bg = _background
    if bg is None:
        with _background_lock:
            if _background is None:
                _background = _BackgroundLoop()
            bg = _background
    return bg.loop


def background_loop_if_started() -> asyncio.AbstractEventLoop | None:
    """The background loop if this process has started it, else None (never starts it)."""
    bg = _background
    return bg.loop if bg is not None else None


# -- guest runs -------------------------------------------------------------------------

_guest: contextvars.ContextVar[bool] = contextvars.ContextVar("tinker_async_guest", default=False)


def in_guest_run() -> bool:
    """True inside a call running as a guest on the background loop (see the module doc)."""
    return _guest.get()


async def guest_run(coro: Any) -> Any:
    """Run ``coro`` (on the background loop) as a guest. Tasks it starts inherit that."""
    _guest.set(True)  # this task's own context: nothing outside it sees the change
    return await coro


# -- homes -------------------------------------------------------------------------------


class Home:
    """The event loop a family of clients lives on, and what must follow it when it moves.

    ``pending`` holds the plain calls made on the home thread whose tasks have not started
    yet: a direct ``await foo_async()`` must not overtake them (training seq ids are taken
    when a call starts), and a blocking ``.result()`` may hand them to the background loop
    as guests, in order.
    """

    __slots__ = ("__weakref__", "_move_hooks", "loop", "pending", "pid")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pid = _pid
        self.pending: collections.deque[Any] = collections.deque()
        self._move_hooks: list[Callable[[], None]] = []

    def on_move(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` (synchronously, on the new loop's thread) whenever the home moves."""
        self._move_hooks.append(hook)

    def is_home(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self.loop is loop and self.pid == _pid

    def usable(self) -> bool:
        loop = self.loop
        return (
            loop is not None
            and self.pid == _pid
            and not loop.is_closed()
            and loop.is_running()
        )

    def _move(self, loop: asyncio.AbstractEventLoop) -> None:
        moved = self.loop is not None
        self.loop = loop
        self.pid = _pid
        self.pending = collections.deque()
        if moved:
            log.debug("client home moved to a new event loop")
        for hook in self._move_hooks:
            hook()

    def claim(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Make ``loop`` the home if there is no usable one. True if ``loop`` is the home."""
        if self.is_home(loop):
            return True
        if self.usable():
            return False
        self._move(loop)
        return True

    def loop_for_sync(self) -> asyncio.AbstractEventLoop:
        """The loop a plain call should run on: the home, or the background loop."""
        if self.usable():
            assert self.loop is not None
            return self.loop
        loop = background_loop()
        if self.is_home(loop):
            return loop
        if loop is running_loop():
            self._move(loop)
        else:
            # Move on the loop's own thread: hooks touch loop-bound state.
            asyncio.run_coroutine_threadsafe(_call_on_loop(self._move, loop), loop).result()
        return loop


async def _call_on_loop(fn: Callable[[asyncio.AbstractEventLoop], None], loop: Any) -> None:
    fn(loop)


class LoopLock:
    """An ``asyncio.Lock`` for the running loop, remade when the home loop changes (a lock
    cannot outlive its loop). A guest run gets a lock of its own, leaving the home's be."""

    __slots__ = ("_guest_lock", "_guest_loop", "_lock", "_loop")

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guest_lock: asyncio.Lock | None = None
        self._guest_loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if _guest.get() and loop is not self._loop:
            if self._guest_lock is None or self._guest_loop is not loop:
                self._guest_lock, self._guest_loop = asyncio.Lock(), loop
            return self._guest_lock
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock


def _after_fork_in_child() -> None:
    global _pid, _background, _background_lock
    _pid = os.getpid()
    _background = None
    _background_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
