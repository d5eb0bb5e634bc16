"""Waiting in tests on a condition, never on a duration.

A test that needs something to have happened (a background renewal, a heartbeat, a
close handed to another loop) polls for it with :func:`wait_until`. The time limit is only
a hang guard: it is generous enough (60 s) to hold on a loaded 2-core machine, so a slow
machine makes the test slower, never red.

A test that needs a call to be still unfinished at some point (to block on it, cancel it,
time out on it) stalls its request on the server and lets it go with :func:`released_when`
once that point has passed, rather than hoping a delay is long enough.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tinker_async.local import LocalServer

HANG_GUARD_S = 60.0
"""How long any wait in the tests may take before it counts as a hang."""

_STEP_S = 0.01


def wait_until(predicate: Callable[[], object], what: str,
               timeout: float = HANG_GUARD_S) -> None:
    """Return once ``predicate()`` is true; fail the test (saying ``what``) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g} s for {what}")
        time.sleep(_STEP_S)


async def wait_until_async(predicate: Callable[[], object], what: str,
                           timeout: float = HANG_GUARD_S) -> None:
    """:func:`wait_until` for async tests: yields to the running loop while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g} s for {what}")
        await asyncio.sleep(_STEP_S)


# -- holding a request until the test is ready ------------------------------------------


def blocked_in_result(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked waiting on a ``concurrent.futures.Future``'s result
    (as ``APIFuture.result()`` does), read from its current stack."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "result" and code.co_filename.endswith(_CF_BASE):
            return True
        frame = frame.f_back
    return False


_CF_BASE = os.path.join("concurrent", "futures", "_base.py")


@contextmanager
def released_when(server: LocalServer, ready: Callable[[], object]) -> Iterator[None]:
    """Within the block, requests the server stalls (``faults.add(..., stall=True)``) are
    let go (dropped, so the client retries) only once ``ready()`` is true, for example
    once the test's thread blocks in ``result()``. So a call is certainly not finished
    before that, however slow or fast the machine is."""
    stop = threading.Event()

    def release() -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while not stop.is_set() and time.monotonic() < deadline:
            if ready():
                # Again and again: a stall that has not begun yet cannot be released.
                server.faults.release_stalled()
            stop.wait(_STEP_S)

    thread = threading.Thread(target=release, name="test-releaser", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(HANG_GUARD_S)


# -- the official SDK's close ----------------------------------------------------------


def close_official(service: object, server: LocalServer, session_id: str | None = None) -> None:
    """``service.close("success")`` of an official-SDK ServiceClient, waited for by its
    effect on the server (the finish request), not by the SDK's own future.

    tinker 0.38's close awaits its session futures poller after cancelling it, and that
    poller can swallow the cancel inside its ``retrieve_futures`` request stack and park
    idle for ever (state "cancelling", at ``session_futures_poller.py:156 await
    self._has_work.wait()``): the close future then never completes, on any server. That
    is the SDK's bug; what these tests check is what our server saw.
    """
    future = service.close("success")  # type: ignore[attr-defined]
    session = re.escape(session_id) if session_id is not None else "[^/]+"
    wait_until(lambda: server.count(rf"/sessions/{session}/finish$", "POST") >= 1,
               "the SDK's finish request")
    try:
        future.result(5)  # a hang guard for the usual case; see the docstring
    except TimeoutError:  # only the hang is forgiven; an error of the close still fails
        pass
