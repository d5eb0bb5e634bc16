"""``LocalServer``: runs the app on a loop (the caller's, or its own thread's) and offers
thread-safe helpers to tests: seeding, futures, faults, session expiry, the request log and
the applied-seq ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import shutil
import tempfile
import threading
import time as _time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from ._app import DEFAULT_ROUTES, build_app
from ._auth import Authenticator
from ._config import (
    DEFAULT_CLIENT_CONFIG,
    DEFAULT_DYNAMIC_CONFIG,
    DEFAULT_MODEL,
    SampleCapacity,
    ServerConfig,
    normalize_models,
)
from ._dialects import Dialect, resolve_dialect
from ._faults import FaultInjector
from ._files import FileSigner
from ._futures import FutureFailure, FutureStore
from ._ledger import Applied, ledger_of
from ._recorder import RecordedRequest, RequestLog
from ._routing import Route, ServerContext
from ._state import KIND_TO_TYPE, ServerState

__all__ = ["LocalServer"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_RESULT_TTL_S = 3600.0  # finished futures nobody acknowledged are dropped after this
_CLEANUP_EVERY_S = 60.0
_LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class LocalServer:
    """An embedded Tinker-compatible server (see the package docstring for the helpers).

    Use ``async with LocalServer() as srv`` on a running loop, or ``with
    LocalServer().in_thread() as srv`` to run it on its own loop in a daemon thread (so
    that blocking client calls in the calling thread cannot stall it). A server runs once:
    create a new one to restart (pass the same ``data_dir`` to keep runs and checkpoints).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        zero_compute: bool = False,
        session_timeout_s: float = 60.0,
        dialect: str | Dialect = "official",
        *,
        client_config: Mapping[str, Any] | None = None,
        dynamic_config: Mapping[str, Any] | None = None,
        models: Sequence[str | Mapping[str, Any]] = (DEFAULT_MODEL,),
        poll_hold_s: float = 10.0,
        twinkle_prefix: str = "/twinkle",
        max_loras: int = 64,
        inline_payload_limit: int = 8 * 1024 * 1024,
        record_requests: bool = True,
        max_recorded_requests: int = 100_000,
        routes: Iterable[Route] = (),
        jwt_ttl_s: float = 3600.0,
        require_jwt: bool = False,
        sample_capacity: SampleCapacity | None = None,
    ) -> None:
        if twinkle_prefix and (not twinkle_prefix.startswith("/") or twinkle_prefix == "/"):
            raise ValueError("twinkle_prefix must look like '/twinkle' (or be empty to disable)")
        self.host = host
        self._requested_port = port
        self.config = ServerConfig(
            dialect=resolve_dialect(dialect),
            models=normalize_models(models),
            client_config={**DEFAULT_CLIENT_CONFIG, **(client_config or {})},
            dynamic_config={**DEFAULT_DYNAMIC_CONFIG, **(dynamic_config or {})},
            session_timeout_s=session_timeout_s,
            zero_compute=zero_compute,
            twinkle_prefix=twinkle_prefix.rstrip("/"),
            max_loras=max_loras,
            inline_payload_limit=inline_payload_limit,
            api_key=api_key,
            jwt_ttl_s=jwt_ttl_s,
            sample_capacity=sample_capacity or SampleCapacity(),
        )
        if data_dir is None:
            path = Path(tempfile.mkdtemp(prefix="tinker-local-"))
            # Removed on stop, or when the server is garbage-collected or the process exits.
            self._remove_data_dir: Callable[[], Any] | None = weakref.finalize(
                self, shutil.rmtree, path, ignore_errors=True
            )
        else:
            path = Path(data_dir)
            path.mkdir(parents=True, exist_ok=True)
            self._remove_data_dir = None
        self.data_dir = path
        self.state = ServerState(path, session_timeout_s=session_timeout_s)
        self.futures = FutureStore(
            poll_hold_s=poll_hold_s, allow_proto=self.config.dialect.protobuf
        )
        self.faults = FaultInjector()
        self._log = RequestLog(max_recorded_requests, enabled=record_requests)
        self.context = ServerContext(
            config=self.config,
            state=self.state,
            futures=self.futures,
            faults=self.faults,
            log=self._log,
            auth=Authenticator(api_key, jwt_ttl_s=self.config.jwt_ttl_s,
                               require_jwt=require_jwt),
            files=FileSigner(),
        )
        self._routes: tuple[Route, ...] = (*DEFAULT_ROUTES, *routes)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._used = False

    def __repr__(self) -> str:
        where = self.url if self.running else "not running"
        return f"<LocalServer {where} dialect={self.config.dialect.name}>"

    # ----------------------------------------------------------------------------- address

    @property
    def port(self) -> int:
        """The bound port (known once started)."""
        if self._port is None:
            raise RuntimeError("the server is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000`` (pass it as ``base_url``)."""
        host = _LOOPBACK_FOR_WILDCARD.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def api_key(self) -> str:
        """A key this server accepts: the configured one, or (none configured, so any key
        is accepted) a placeholder in the official form."""
        return self.config.api_key or "tml-local-any-key"

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._runner is not None

    # --------------------------------------------------------------------- async lifecycle

    async def start(self) -> LocalServer:
        """Start serving on the running loop."""
        if self._used:
            raise RuntimeError("a LocalServer runs once; create a new one")
        self._used = True
        self._loop = asyncio.get_running_loop()
        app = build_app(self.context, self._routes)
        # handler_cancellation: a client that gives up on a long-poll frees its handler.
        # auto_decompress=False: zstd forward_backward bodies are decompressed by the
        # handler (aiohttp would refuse them without the optional backports.zstd).
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0,
            auto_decompress=False,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._reaper = self._loop.create_task(self._reap(), name="tinker-local-reaper")
        return self

    async def aclose(self) -> None:
        """Stop serving (idempotent); remove the data directory if the server made it."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.futures.close()  # releases held long-polls so shutdown is quick
        await runner.cleanup()
        if self._remove_data_dir is not None:
            self._remove_data_dir()

    async def __aenter__(self) -> LocalServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _reap(self) -> None:
        """Expire sessions past their timeout (and their futures); drop stale results."""
        interval = min(1.0, max(0.05, self.config.session_timeout_s / 4))
        last_cleanup = _time.monotonic()
        while True:
            await asyncio.sleep(interval)
            for session_id in self.state.sweep_expired_sessions():
                self.futures.expire_session(session_id)
            if _time.monotonic() - last_cleanup > _CLEANUP_EVERY_S:
                self.futures.cleanup(_RESULT_TTL_S)
                last_cleanup = _time.monotonic()

    # -------------------------------------------------------------------- thread lifecycle

    def start_in_thread(self, timeout: float = 30.0) -> LocalServer:
        """Start serving on a new event loop in a daemon thread; return once it listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=serve, name="tinker-local-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the local server did not start within {timeout} s")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop a server from another thread than its loop's (idempotent)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._on_loop_thread():
            raise RuntimeError("stop() would deadlock on the server's own loop; await aclose()")
        asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout)
        if self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
            self._thread = None

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[LocalServer]:
        """``with LocalServer().in_thread() as srv:`` -- serve from a daemon thread."""
        self.start_in_thread()
        try:
            yield self
        finally:
            self.stop()

    def __enter__(self) -> LocalServer:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------- thread-safe calls

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _on_loop(self, fn: Callable[[], _T], timeout: float = 30.0) -> _T:
        """Run ``fn`` on the server's loop and return its result (directly if already there)."""
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError("the server is not running")
        if self._on_loop_thread():
            return fn()

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)

    # ------------------------------------------------------------------------ test helpers

    def seed_training_run(
        self,
        base_model: str = DEFAULT_MODEL,
        lora_rank: int | None = 8,
        session_id: str | None = None,
        user_metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Create a training run (no model behind it) and return its id.

        Without ``session_id`` a new session (tagged ``seed``) owns it.
        """
        if session_id is None:
            session_id = self.state.create_session(tags=["seed"]).session_id
        run = self.state.create_training_run(
            session_id,
            self.state.next_model_seq_id(session_id),
            base_model,
            lora_rank=lora_rank,
            user_metadata=user_metadata,
        )
        return run.training_run_id

    def seed_checkpoint(
        self,
        run_id: str,
        name: str,
        kind: str = "weights",
        size_bytes: int = 1024,
        time: float | datetime.datetime | None = None,
        *,
        ttl_seconds: int | None = None,
        public: bool = False,
        user_metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Create a checkpoint of ``kind`` (``weights``, ``sampler_weights`` or
        ``external_weights``) whose file(s) total ``size_bytes``; return its path.

        The files are sparse, so large sizes cost no disk. ``time`` sets the creation
        time (``time.time()`` seconds), to control ordering.
        """
        if kind not in KIND_TO_TYPE:
            raise ValueError(f"kind must be one of {sorted(KIND_TO_TYPE)}")
        if isinstance(time, datetime.datetime):
            time = time.timestamp()
        directory = self.state.checkpoint_dir(run_id, kind, name)
        self.state.get_run(run_id)  # fail before touching the disk
        directory.mkdir(parents=True, exist_ok=True)
        if kind == "external_weights":
            config = b'{"peft_type": "LORA", "base_model_name_or_path": "local"}'
            (directory / "adapter_config.json").write_bytes(config)
            weights_size = max(0, size_bytes - len(config))
            weights = directory / "adapter_model.safetensors"
        else:
            weights_size = size_bytes
            weights = directory / "weights.bin"
        with open(weights, "wb") as handle:
            handle.truncate(weights_size)
        record = self.state.add_checkpoint(
            run_id,
            kind,
            name,
            size_bytes=size_bytes,
            ttl_seconds=ttl_seconds,
            user_metadata=user_metadata,
            created_at=time,
        )
        if public:
            self.state.update_checkpoint(record, public=True)
        return record.path(self.config.dialect.path_scheme)

    def create_future(
        self,
        result: dict[str, Any] | bytes | None = None,
        error: str | None = None,
        delay_s: float = 0.0,
        session_id: str | None = None,
        sampling_session_id: str | None = None,
        *,
        category: str = "user",
        cloned_sampler_id: int = 0,
        kind: str = "generic",
    ) -> str:
        """A server future that finishes after ``delay_s`` with ``result`` (``{}`` by
        default; ``bytes`` are served as protobuf) or fails with ``error``/``category``.

        Returns its request id. ``sampling_session_id`` also announces the completion to
        ``retrieve_futures`` pollers; ``session_id`` ties it to a session's expiry.
        """

        async def work() -> Any:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if error is not None:
                raise FutureFailure(error, category)
            return {} if result is None else result

        return self._on_loop(
            lambda: self.futures.submit(
                work,
                kind=kind,
                session_id=session_id,
                sampling_session_id=sampling_session_id,
                cloned_sampler_id=cloned_sampler_id,
            )
        )

    def complete_future(self, request_id: str, result: dict[str, Any] | bytes) -> None:
        """Finish a pending future now with ``result`` (``KeyError`` if unknown)."""
        self._on_loop(lambda: self.futures.resolve(request_id, result))

    def fail_future(self, request_id: str, error: str, category: str = "user") -> None:
        """Fail a pending future now (``KeyError`` if unknown; no-op if already done)."""
        self._on_loop(lambda: self.futures.fail(request_id, error, category))

    def expire_future(self, request_id: str) -> None:
        """Make a pending future answer 410, as an expired promise does."""
        self._on_loop(lambda: self.futures.expire(request_id))

    def expire_session(self, session_id: str) -> None:
        """Expire a session now (heartbeats then get 410) and its pending futures."""
        self.state.expire_session(session_id)
        if self.running:
            self._on_loop(lambda: self.futures.expire_session(session_id))

    def set_poll_hold(self, seconds: float) -> None:
        """How long ``retrieve_future(s)`` hold a pending poll before ``try_again``."""
        self.futures.poll_hold_s = max(0.0, float(seconds))

    # ------------------------------------------------------------------------------- ledger

    def ledger(self, model_id: str) -> list[Applied]:
        """The training requests ``model_id`` applied, in order: ``(seq_id, kind, tag)``.

        Only requests whose work succeeded are listed, once each (see ``_ledger``); compare
        it with what a client reported to find steps applied twice or lost.
        """
        return ledger_of(self.context).entries(model_id)

    def ledgers(self) -> dict[str, list[Applied]]:
        """:meth:`ledger` of every model that applied something."""
        book = ledger_of(self.context)
        return {model_id: book.entries(model_id) for model_id in book.models()}

    # ---------------------------------------------------------------------------- request log

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy, oldest first; secrets redacted)."""
        return self._log.snapshot()

    def count(self, path_pattern: str, method: str | None = None) -> int:
        """How many requests had a path matching ``path_pattern`` (``re.search``)."""
        return self._log.count(path_pattern, method)

    def clear_requests(self) -> None:
        """Empty the request log."""
        self._log.clear()
