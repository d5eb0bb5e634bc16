"""The server session of a ServiceClient: handshake, create_session, heartbeat, finish.

One :class:`Session` per ServiceClient, shared by the clients it creates. It is created
lazily by the first call that needs it. The heartbeat runs as a task on the home loop; if
that loop ends (``asyncio.run`` returning), the task's cancellation also closes the
aiohttp session there, so nothing is left unclosed, and the next use starts a new
heartbeat on the new home. A 410 from the server ends the session for good: every later
call raises :class:`SessionExpiredError` at once instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Literal

from . import _budget, _requests
from . import types as t
from ._config import NO_RETRY, PROTOCOL_SDK_VERSION
from ._loops import LoopLock, in_guest_run
from ._transport import Transport
from .errors import APIError, NotFoundError, SessionExpiredError, TinkerError

__all__ = ["Session"]

log = logging.getLogger("tinker_async")

FinishStatus = Literal["success", "errored", "interrupted"]
_FINISH_REASONS: dict[FinishStatus, type[t.ClientSessionFinishReason]] = {
    "success": t.ClientSessionFinishSuccess,
    "errored": t.ClientSessionFinishErrored,
    "interrupted": t.ClientSessionFinishInterrupted,
}
_UNHEALTHY_AFTER_S = 120.0
#: after a 404, the server is asked whether it still knows the session at most this often
_PROBE_EVERY_S = 1.0


class Session:
    """Handshake and the server-side session, with its heartbeat."""

    def __init__(
        self,
        transport: Transport,
        *,
        tags: Sequence[str] = (),
        user_metadata: Mapping[str, str] | None = None,
        project_id: str | None = None,
        display_name: str | None = None,
    ) -> None:
        self.transport = transport
        self.tags = list(dict.fromkeys(tags))
        self.user_metadata = dict(user_metadata) if user_metadata else None
        self.project_id = project_id
        self.display_name = display_name
        self.id: str | None = None
        self.handshaken = False
        self.gone: SessionExpiredError | None = None
        self.finished = False
        #: False for a client that joined another's session (it must not finish it)
        self.owned = True
        #: the process that made the server session; a forked copy must not finish it
        self._pid = os.getpid()
        self.heartbeats_ok = 0
        self._loop_lock = LoopLock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self._last_ok = 0.0
        transport.on_session_gone = self._gone_error
        transport.on_not_found = self.check_known
        self._last_probe = -1e9
        transport.home.on_move(self._forget_loop_state)

    def join(self, session_id: str | None) -> None:
        """Use another client's server session (its handshake done there): this client
        sends in it but does not own it, so it never finishes it."""
        self.handshaken = True
        self.id = session_id
        self.owned = False

    def _forget_loop_state(self) -> None:
        # Loop-bound objects die with their loop; the server session itself carries over.
        self._heartbeat = None
        self._loop_lock = LoopLock()

    def check_alive(self) -> None:
        """Raise if the server ended this session."""
        if self.gone is not None:
            raise self.gone

    async def handshake(self) -> None:
        """``client/config`` then ``client/dynamic_config``; a 404 means a legacy server."""
        if self.handshaken:
            return
        dialect = self.transport.dialect
        body = t.ClientConfigRequest(sdk_version=PROTOCOL_SDK_VERSION)
        if dialect.client_config_route:
            try:
                flags = (await self.transport.request("POST", "client/config", json=body)).json()
            except NotFoundError:
                log.info("server has no client/config: using the legacy JSON protocol")
                dialect.mark_legacy()
            else:
                dialect.apply_client_config(flags if isinstance(flags, dict) else {})
                if dialect.flag("pjwt_auth_enabled"):
                    # Now, so that a failed exchange is its own error, not a missing
                    # (optional) dynamic config below.
                    await self.transport.start_jwt_mode()
                try:
                    dyn = await self.transport.request(
                        "POST", "client/dynamic_config", json=body, retry=NO_RETRY, timeout=10
                    )
                    if isinstance(data := dyn.json(), dict):
                        dialect.dynamic_flags.update(data)
                except APIError as exc:  # optional endpoint; defaults apply
                    log.debug("no client/dynamic_config (%s); using defaults", exc)
        if not dialect.flag("pjwt_auth_enabled"):
            self.transport.credentials.refuse_command_without_jwt()
        self.handshaken = True

    async def ensure(self) -> str:
        """The session id, creating the session (and handshake) on first use."""
        self.check_alive()
        if self.id is None:
            async with self._loop_lock():
                if self.id is None:
                    await self.handshake()
                    self.id = await self._create()
                    self._pid = os.getpid()
        # A guest run (``_loops``) is brief, on a loop that is not the home: the heartbeat
        # starts with the next call on the home loop.
        if self._heartbeat is None and not self._closing and not in_guest_run():
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name="tinker-async-heartbeat"
            )
        return self.id

    async def _create(self) -> str:
        request = t.CreateSessionRequest(
            tags=self.tags,
            # Always sent, as the official SDK does (``user_metadata or {}``): servers built
            # on the 0.25-0.38 request models (tuft, for one) require the field.
            user_metadata=self.user_metadata or {},
            sdk_version=PROTOCOL_SDK_VERSION,
            project_id=self.project_id or None,
            display_name=self.display_name or None,
        )
        body = _requests.create_session_body(request, self.transport.dialect)
        data = (await self.transport.request("POST", "create_session", json=body)).json()
        for level, key in ((logging.INFO, "info_message"), (logging.WARNING, "warning_message"),
                           (logging.ERROR, "error_message")):
            if isinstance(data, dict) and data.get(key):
                log.log(level, "server: %s", data[key])
        session_id = data.get("session_id") if isinstance(data, dict) else None
        if not isinstance(session_id, str) or not session_id:
            raise APIError(f"create_session answered without a session_id: {data!r}")
        loop = asyncio.get_running_loop()
        self._last_ok = loop.time()
        return session_id

    async def _heartbeat_loop(self) -> None:
        _budget.detach()  # a background loop: not bound by the call that started it
        interval = self.transport.config.heartbeat_interval
        loop = asyncio.get_running_loop()
        try:
            while self.id is not None and self.gone is None:
                await asyncio.sleep(interval)
                await self.beat(timeout=min(interval, 10.0))
                if loop.time() - self._last_ok > _UNHEALTHY_AFTER_S:
                    log.warning(
                        "no successful heartbeat for %.0f s: the server may end session %s",
                        loop.time() - self._last_ok,
                        self.id,
                    )
        finally:
            if self._heartbeat is asyncio.current_task():
                self._heartbeat = None

    async def beat(self, timeout: float = 10.0) -> bool:
        """Send one heartbeat. False (and the session marked gone) on 410."""
        if self.id is None:
            return False
        try:
            resp = await self.transport.request(
                "POST",
                "session_heartbeat",
                json=t.SessionHeartbeatRequest(session_id=self.id),
                retry=NO_RETRY,
                timeout=timeout,
                ok_statuses=frozenset({410}),
            )
        except NotFoundError as exc:
            if "session" not in str(exc.body).lower():  # a server without the route, say
                log.debug("heartbeat failed: %s", exc)
                return True
            self.mark_gone(unknown=True)  # the server forgot it: a restart
            return False
        except APIError as exc:
            log.debug("heartbeat failed: %s", exc)
            return True
        if resp.status == 410:
            self.mark_gone()
            return False
        self.heartbeats_ok += 1
        self._last_ok = asyncio.get_running_loop().time()
        return True

    async def check_known(self) -> SessionExpiredError | None:
        """After a 404 from one of this session's calls: whether the server still knows the
        session (one heartbeat; at most one a second). The error to raise if not."""
        if self.gone is not None or self.id is None:
            return self.gone
        now = asyncio.get_running_loop().time()
        if now - self._last_probe >= _PROBE_EVERY_S:
            self._last_probe = now
            await self.beat(timeout=min(self.transport.config.timeout, 10.0))
        return self.gone

    def _gone_error(self) -> SessionExpiredError:
        self.mark_gone()
        assert self.gone is not None
        return self.gone

    def mark_gone(self, unknown: bool = False) -> None:
        """The server ended the session (a 410), or no longer knows it (``unknown``: its
        heartbeat got a 404, as after a server restart): every later call fails at once."""
        if self.gone is None:
            why = ("no longer knows session {} (HTTP 404 on its heartbeat: the server "
                   "restarted, or dropped the session)" if unknown else
                   "ended session {} (HTTP 410: finished, expired after missed heartbeats, "
                   "or lost in a server restart)").format(self.id)
            log.warning("the server %s", why)
            self.gone = SessionExpiredError(
                f"The server {why}. Its training and sampling clients cannot be used any "
                "more: create a new ServiceClient, and resume training from your last "
                "checkpoint (create_training_client_from_state).",
                session_id=self.id,
            )

    async def close(self, status: FinishStatus = "success", detail: str | None = None) -> None:
        """Stop the heartbeat and tell the server the session finished (once)."""
        self._closing = True
        task, self._heartbeat = self._heartbeat, None
        if task is not None and not task.done():
            if task.get_loop() is asyncio.get_running_loop():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif not task.get_loop().is_closed():  # closing from a guest run: tell its loop
                task.get_loop().call_soon_threadsafe(task.cancel)
        if (self.id is None or self.finished or self.gone is not None or not self.owned
                or self._pid != os.getpid()):
            return
        self.finished = True
        if not self.transport.dialect.session_finish:
            return  # such sessions (Twinkle's) simply lapse
        try:
            await self.transport.request(
                "POST",
                f"sessions/{self.id}/finish",
                json=t.FinishSessionRequest(reason=_FINISH_REASONS[status](), detail=detail),
                timeout=10,
            )
        except TinkerError as exc:  # also the closing transport's own ClientClosedError
            log.info("finishing session %s failed: %s", self.id, exc)
