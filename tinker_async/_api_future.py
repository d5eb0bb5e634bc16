"""APIFuture: the handle the sync forms return, usable from sync and async code alike.

An APIFuture wraps work running as a task on a client's home loop. It is backed by a
``concurrent.futures.Future`` so that any thread can block on it, and it remembers the
home loop so that code *on* that loop awaits the task directly (no thread hop) and is
refused, clearly, when it would block the very loop the work needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = ["APIFuture", "BlockingCallWarning", "ClientFuture", "forward_client_methods"]

T = TypeVar("T")


class BlockingCallWarning(RuntimeWarning):
    """A blocking ``.result()`` was called inside a running event loop."""


_warned_blocking = False
_warn_lock = threading.Lock()


def _warn_blocking_once() -> None:
    """Warn the first time a blocking result() runs inside a running event loop."""
    global _warned_blocking
    with _warn_lock:
        if _warned_blocking:
            return
        _warned_blocking = True
    # stacklevel 4: the user's line that called .result() (through result -> _result)
    warnings.warn(
        "APIFuture.result() blocks this thread's running event loop until the work is done; "
        "use `await future` (or `await x_async(...)`) inside async code. This warning is "
        "shown once.",
        BlockingCallWarning,
        stacklevel=4,
    )


def _reset_after_fork() -> None:
    global _warned_blocking, _warn_lock
    _warned_blocking = False
    _warn_lock = threading.Lock()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class APIFuture(Generic[T]):
    """The pending result of a call.

    ``await fut`` or ``await fut.result_async(timeout)`` in async code, ``fut.result(timeout)``
    in sync code. ``done()``, ``cancel()`` (cancels the work, and the server request where
    the server allows), ``future()`` for a ``concurrent.futures.Future`` and ``coroutine()``
    for APIs that need a real coroutine. An exception raised by the work is never lost: it
    is raised by whichever of these reads the result.
    """

    __slots__ = ("__weakref__", "_cf", "_guest", "_loop", "_run_elsewhere", "_task", "_what")

    def __init__(
        self,
        cf: concurrent.futures.Future[T],
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Future[T] | None = None,
        run_elsewhere: Callable[[], concurrent.futures.Future[T] | None] | None = None,
    ) -> None:
        self._cf = cf
        self._loop = loop
        self._task = task
        #: hands work not yet started on ``loop`` to another loop (for a blocking result()
        #: on ``loop``'s own thread); None once it started there
        self._run_elsewhere = run_elsewhere
        self._guest: concurrent.futures.Future[T] | None = None
        #: what the future stands for ("SamplingClient.sample"), for timeout messages
        self._what = "the call"

    # -- construction -------------------------------------------------------------------

    @classmethod
    def _from_task(
        cls,
        task: asyncio.Future[T],
        loop: asyncio.AbstractEventLoop,
        run_elsewhere: Callable[[], concurrent.futures.Future[T] | None] | None = None,
    ) -> APIFuture[T]:
        """Wrap a task of ``loop`` (called on that loop's thread)."""
        # ``cf`` stays pending until the task ends (as run_coroutine_threadsafe's does): a
        # running concurrent future can no longer be cancelled, so a cancelled task would
        # leave it unfinished and every thread blocked on it would wait forever.
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()

        def copy_outcome(t: asyncio.Future[T]) -> None:
            if t.cancelled():
                cf.cancel()
            exc = None if t.cancelled() else t.exception()
            if not cf.set_running_or_notify_cancel():
                return  # cancelled (by the task, or by a caller of cf.cancel())
            if exc is not None:
                cf.set_exception(exc)
            else:
                cf.set_result(t.result())

        def propagate_cancel(f: concurrent.futures.Future[T]) -> None:
            if f.cancelled() and not task.done() and not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

        task.add_done_callback(copy_outcome)
        cf.add_done_callback(propagate_cancel)
        return cls(cf, loop, task, run_elsewhere)

    @classmethod
    def _from_threadsafe(
        cls, coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
    ) -> APIFuture[T]:
        """Schedule ``coro`` on ``loop`` from another thread."""
        return cls(asyncio.run_coroutine_threadsafe(coro, loop), loop)

    # -- reading ------------------------------------------------------------------------

    def _on_owner_thread(self) -> bool:
        return _running_loop() is self._loop

    def result(self, timeout: float | None = None) -> T:
        """Block until the result is ready and return it (or raise the work's error).

        Raises ``TimeoutError`` after ``timeout`` seconds; the work goes on (cancel it with
        :meth:`cancel`). Inside a running event loop it blocks that loop (and warns once),
        as the official SDK does. On the thread of the loop that runs the work, a call that
        has not started yet runs on the background loop instead; one that already started
        there cannot finish while its loop is blocked, so that raises ``RuntimeError``.
        """
        return self._result(timeout, warn=True)

    def _result(self, timeout: float | None, *, warn: bool) -> T:
        """:meth:`result`; ``warn=False`` for the library's own blocking waits (leaving a
        ``with`` block), which the official SDK does not warn about either."""
        cf = self._guest or self._cf
        if cf.done():
            return cf.result()
        running = _running_loop()
        if running is not None:
            if running is self._loop:
                cf = self._to_guest()
            if warn:
                _warn_blocking_once()
        return _wait(cf, timeout, self._what)

    def _to_guest(self) -> concurrent.futures.Future[T]:
        guest = self._run_elsewhere() if self._run_elsewhere is not None else None
        if guest is None:
            raise RuntimeError(
                "result() was called on the thread of the event loop that is already running "
                "this work, and it cannot finish while result() blocks that loop. Use "
                "`await future` here (or call .result() before the loop runs the work, "
                "right after the plain call, as the official SDK allows)."
            )
        self._guest = guest
        return guest

    async def result_async(self, timeout: float | None = None) -> T:
        """Await the result. A ``timeout`` (seconds) cancels the work and raises TimeoutError."""
        cf = self._guest or self._cf
        if cf.done():
            return cf.result()
        awaitable: asyncio.Future[T]
        if self._guest is None and self._task is not None and self._on_owner_thread():
            awaitable = self._task
        else:
            awaitable = asyncio.wrap_future(cf)
        if timeout is None:
            return await awaitable
        waiter = asyncio.ensure_future(awaitable)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            if waiter.done() and not waiter.cancelled():
                raise  # the work's own timeout error (an APITimeoutError, say)
            raise _not_ready(self._what, timeout, cancelled=True) from None

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()

    async def coroutine(self) -> T:
        """A coroutine that returns the result (for ``asyncio.create_task`` and friends)."""
        return await self.result_async()

    def future(self) -> concurrent.futures.Future[T]:
        """The underlying ``concurrent.futures.Future``; cancelling it cancels the work."""
        return self._cf

    def done(self) -> bool:
        """True once the result (or an error) is there."""
        return self._cf.done() or (self._guest is not None and self._guest.done())

    def cancel(self) -> bool:
        """Cancel the work. Returns False if it had already finished."""
        if self._cf.done():
            return False
        if self._task is not None:
            if self._on_owner_thread():
                self._task.cancel()
            elif not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._task.cancel)
        return self._cf.cancel()

    def cancelled(self) -> bool:
        return self._cf.cancelled()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The work's exception (or None), waiting like :meth:`result`."""
        try:
            self.result(timeout)
        except (TimeoutError, RuntimeError) as exc:
            if not self.done():
                raise exc from None
        except BaseException:
            pass
        return (self._guest or self._cf).exception(0)

    def add_done_callback(self, fn: Callable[[APIFuture[T]], object]) -> None:
        """Call ``fn(self)`` when done (on the thread that completes the work)."""
        self._cf.add_done_callback(lambda _cf: fn(self))

    def __repr__(self) -> str:
        state = "done" if self._cf.done() else "pending"
        return f"<APIFuture {state}>"


#: The official SDK's name of the future its plain methods return.
AwaitableConcurrentFuture = APIFuture


def _not_ready(what: str, timeout: float, *, cancelled: bool = False) -> TimeoutError:
    then = "it was cancelled" if cancelled else "the call goes on: wait again, or cancel() it"
    return TimeoutError(f"{what}: the result was not ready within {timeout:g} s ({then})")


def _wait(cf: concurrent.futures.Future[T], timeout: float | None, what: str) -> T:
    """``cf.result(timeout)``, telling the work's own TimeoutError (an APITimeoutError,
    which on Python 3.11+ is a concurrent.futures.TimeoutError too) from running out of
    ``timeout``."""
    try:
        return cf.result(timeout)
    except concurrent.futures.TimeoutError:
        if cf.done():
            raise
        assert timeout is not None  # cf.result(None) only returns when done
        raise _not_ready(what, timeout) from None


class ClientFuture(APIFuture[T]):
    """The future of a client-creating call, which also stands in for the client.

    Code written for SDKs before 0.38 uses the result of ``create_lora_training_client()``
    (and friends) as the client itself. Attribute access on this future waits for the
    client and forwards to it, with a one-time FutureWarning saying to call ``.result()``.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        _warn_client_future_once()
        return getattr(self.result(), name)


def forward_client_methods(future_cls: type[ClientFuture[Any]], client_cls: type) -> None:
    """Make ``future_cls`` (a ClientFuture that subclasses ``client_cls``, as the official
    Backcompat futures do, so ``isinstance(fut, SamplingClient)`` holds) forward every
    public attribute of the client class to the client it resolves to, warning once."""
    names = {name for klass in client_cls.__mro__ if klass is not object
             for name in vars(klass) if not name.startswith("_")}
    for name in names - set(vars(APIFuture)) - set(vars(ClientFuture)):
        setattr(future_cls, name, _forwarded(name))


def _forwarded(name: str) -> property:
    def get(self: ClientFuture[Any]) -> Any:
        _warn_client_future_once()
        return getattr(self.result(), name)

    return property(get, doc=f"The resolved client's ``{name}`` (deprecated: call .result()).")


_warned_client_future = False


def _warn_client_future_once() -> None:
    global _warned_client_future
    if not _warned_client_future:
        _warned_client_future = True
        warnings.warn(
            "Using the future returned by a create_*_client() call as the client is "
            "deprecated; call .result() (or await it) to get the client.",
            FutureWarning,
            stacklevel=3,
        )
