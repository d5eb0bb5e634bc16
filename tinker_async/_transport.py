"""The one aiohttp session of a client family: headers, auth, retries, errors.

Every HTTP exchange of a ServiceClient and the clients it creates goes through one
:class:`Transport`. It owns the aiohttp ``ClientSession`` (created lazily on the home loop,
replaced when the home moves), builds headers once, retries in one place with ``backoff``'s
wait generators, and turns every failure into a typed error from :mod:`tinker_async.errors`
in one function (:func:`status_error`).

Retries never apply work twice: every non-GET request carries an ``X-Idempotency-Key``
made once per logical call and reused on each retry, and training submits also carry
their seq id.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import platform
import secrets
import ssl
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

import aiohttp
import msgspec
from multidict import CIMultiDict

from . import _budget, _loops, _retrying, _sync
from ._auth import Credentials
from ._budget import Limit
from ._config import PROTOCOL_SDK_VERSION, ClientConfig, RetryPolicy
from ._dialect import Dialect
from ._loops import Home
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    NotFoundError,
    status_error_class,
)
from .types import _wire
from .types._codec import decode_json_lenient

__all__ = ["Response", "Transport", "UnreadableAnswer", "new_idempotency_key", "status_error"]

log = logging.getLogger("tinker_async")
T = TypeVar("T")

# One encoder for every body; its hook handles TensorData, numpy values and datetimes.
_json_encode = _wire.encode_json
_json_decode_any = msgspec.json.Decoder().decode
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}

# Abandoned aiohttp sessions (from a parent process, or a loop that ended without telling
# us) are kept referenced so that their finalizers never run: closing a forked child's
# copy of the parent's sockets would be wrong, and their warnings would only be noise.
_orphans: list[aiohttp.ClientSession] = []

PROTOBUF = "application/x-protobuf"


_keepers: set[asyncio.Task[None]] = set()  # asyncio holds tasks weakly


async def _keep_until_loop_ends(session: aiohttp.ClientSession) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        if not session.closed:
            await session.close()
        raise


class _IdempotencyKeys:
    """Unique keys, cheaply: a random per-process prefix and a counter (not a uuid4 each).

    The prefix is drawn again in a forked child, whose counter continues the parent's.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = f"tinker-async-{secrets.token_hex(8)}-"
        self.counter = itertools.count()

    def __call__(self) -> str:
        return self.prefix + str(next(self.counter))


_new_idempotency_key = new_idempotency_key = _IdempotencyKeys()


def _close_soon(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
    if session.closed:
        return
    if loop.is_running() and not loop.is_closed():
        try:
            asyncio.run_coroutine_threadsafe(session.close(), loop)
            return
        except RuntimeError:  # the loop closed in between
            pass
    _orphans.append(session)


def _closed_error() -> ClientClosedError:
    return ClientClosedError("This client was closed while the call was in flight (or "
                             "before it); create a new client to continue.")


def _cancel_requested() -> bool:
    """Whether the running task itself was asked to cancel (by its caller), as opposed to
    a CancelledError raised out of a future that aiohttp cancelled. Python 3.10 cannot
    tell the two apart: it assumes a cancel of the task."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return task is None or cancelling is None or cancelling() > 0


def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.json.Decoder(type_)
    return dec


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refusing one larger than ``limit`` bytes (after decompression)
    without buffering it: a server cannot make the client hold an unbounded answer."""
    length = resp.content_length
    if length is not None and length > limit:
        raise _too_large(resp, limit)
    if length is not None and not resp.headers.get("Content-Encoding"):
        return await resp.read()  # the common case: exactly the announced length
    chunks = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise _too_large(resp, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(resp: aiohttp.ClientResponse, limit: int) -> APIResponseValidationError:
    return APIResponseValidationError(
        f"The answer to {resp.method} {resp.url} is larger than max_response_bytes "
        f"({limit:,} bytes); refused. Raise max_response_bytes= if it is expected.",
        request_id=resp.headers.get("x-request-id"),
    )


class UnreadableAnswer(APIResponseValidationError, ValueError):
    """An answer whose body cannot be decoded (a ``ValueError`` too, as the decoders'
    own errors are, for the code that catches those)."""


class Response:
    """A finished HTTP exchange: status, headers and the whole body."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.content_type = headers.get("Content-Type", "").split(";", 1)[0].strip()

    @property
    def is_protobuf(self) -> bool:
        return self.content_type == PROTOBUF

    def json(self) -> Any:
        """The body as JSON (None when empty); an unreadable one is an
        :class:`APIResponseValidationError` (also a ``ValueError``), never msgspec's."""
        if not self.body:
            return None
        try:
            return _json_decode_any(self.body)
        except msgspec.DecodeError as exc:
            raise UnreadableAnswer(
                f"The server's answer is not valid JSON ({exc}): "
                f"{bytes(self.body[:200])!r}",
                request_id=self.headers.get("x-request-id"),
            ) from None

    def decode(self, type_: type[T]) -> T:
        try:
            # Strict first; on a mismatch, once more on the known repairs of other
            # servers' shapes (tinkercloud's plain model names, untagged chunks).
            return decode_json_lenient(self.body, type_, _decoder(type_))
        except msgspec.ValidationError as exc:
            raise APIResponseValidationError(
                f"The server's answer does not match {getattr(type_, '__name__', type_)}: {exc}",
                body=self.body[:2000].decode("utf-8", "replace"),
                request_id=self.headers.get("x-request-id"),
            ) from None
        except msgspec.DecodeError as exc:
            raise APIResponseValidationError(
                f"The server's answer is not valid JSON: {exc}",
                body=self.body[:2000].decode("utf-8", "replace"),
            ) from None


def _explain(body: object) -> str:
    """A readable message from an error body: ``{"detail": ...}``, validation lists, ..."""
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if key in body:
                return _explain(body[key])
        return str(msgspec.json.encode(body), "utf-8")
    if isinstance(body, list):
        parts = []
        for item in body:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(_explain(item))
        return "; ".join(parts)
    return str(body)


def status_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    method: str,
    url: str,
    scrub: Sequence[str] = (),
) -> APIStatusError:
    """The typed error for an HTTP error response (the one place statuses become errors).

    Every string in ``scrub`` (the credentials) is masked in the body first."""
    for secret in scrub:  # a server that echoes the key must not make us repeat it
        if secret:
            body = body.replace(secret.encode(), b"***")
    text = body.decode("utf-8", "replace")
    parsed: object
    try:
        parsed = _json_decode_any(body) if body else None
    except msgspec.DecodeError:
        parsed = text[:2000]
    detail = _explain(parsed) if parsed not in (None, "") else ""
    request_id = headers.get("x-request-id") or headers.get("request-id")
    if request_id is None and isinstance(parsed, dict):
        rid = parsed.get("request_id")
        request_id = rid if isinstance(rid, str) else None
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    path = url.split("://", 1)[-1].split("/", 1)[-1]
    message = f"{status} {reason}" + (f": {detail}" if detail else "")
    message += f" ({method} /{path}" + (f", request id {request_id}" if request_id else "") + ")"
    if status == 401:
        message += ". Check the API key (TINKER_API_KEY) is right for this server."
    return status_error_class(status)(
        message, status_code=status, method=method, url=url, body=parsed, request_id=request_id
    )


#: sampling.py reads the server's Retry-After with this name
_retry_after = _retrying.retry_after


class Transport:
    """HTTP for one client family. All methods run on the family's home loop."""

    def __init__(self, config: ClientConfig, dialect: Dialect, home: Home) -> None:
        self.config = config
        self.dialect = dialect
        self.home = home
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        #: the pool of guest runs (``_loops``), on the background loop beside the home's
        self._guest_session: aiohttp.ClientSession | None = None
        self._guest_loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._ssl_context: ssl.SSLContext | None = None
        self._base_headers = self._build_base_headers()
        self.credentials = Credentials(config, self._exchange)
        self._auth_for: str | None = None
        self._auth_headers: dict[str, str] = {}
        self.closed = False
        #: set when the owner starts closing: calls still in flight end as ClientClosedError
        self.closing = False
        #: set by the family's Session: turns a 410 into its SessionExpiredError
        self.on_session_gone: Callable[[], BaseException] | None = None
        #: set by the family's Session: after a 404, says whether the server still knows
        #: the session (an error to raise instead if not: the server restarted, say)
        self.on_not_found: Callable[[], Awaitable[BaseException | None]] | None = None
        home.on_move(self._abandon_session)
        _sync.register_for_exit(self)

    def _build_base_headers(self) -> CIMultiDict[str]:
        # Case-insensitive, so that a user's "user-agent" replaces ours instead of going
        # out as a second header.
        headers = CIMultiDict({
            "User-Agent": f"tinker-async/{__version__} (compatible; tinker {PROTOCOL_SDK_VERSION})",
            "Accept": "application/json",
            "x-sdk-version": PROTOCOL_SDK_VERSION,
            "X-Stainless-Runtime": platform.python_implementation(),
            "X-Stainless-Runtime-Version": platform.python_version(),
        })
        headers.update(self.config.default_headers)
        return headers

    # -- credentials ------------------------------------------------------------------

    async def start_jwt_mode(self) -> None:
        """Exchange the credential for a JWT now (the server said ``pjwt_auth_enabled``)."""
        if not self.credentials.jwt_mode:
            await self.credentials.prepare(wants_jwt=True)

    def _auth_header(self) -> dict[str, str]:
        """The auth header for the credential to send now (rebuilt only when it changes)."""
        credential = self.credentials.current()
        if credential is not self._auth_for:
            self._auth_for = credential
            self._auth_headers = self.dialect.auth_headers(credential) if credential else {}
        return self._auth_headers

    async def _exchange(self, credential: str) -> str:
        """``POST auth/token`` with ``credential``: the JWT the server gives for it."""
        response = await self.request(
            "POST", "auth/token", json={}, headers=self.dialect.auth_headers(credential),
            authenticate=False)
        try:
            data = response.json()
        except ValueError:  # msgspec's DecodeError is one
            data = None
        token = data.get("jwt") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise APIError('auth/token answered without {"jwt": ...}', method="POST",
                           url=self.url("auth/token"))
        return token

    async def _jwt_after_401(self, rejected: str) -> bool:
        """A fresh JWT after a 401 ``invalid_token`` refused ``rejected``; False if none
        can be had (the 401 then stands)."""
        try:
            await self.credentials.renew(rejected=rejected)
        except APIStatusError as exc:
            log.debug("no JWT after a 401 invalid_token: %s", exc)
            return False
        return True

    # -- the aiohttp session ----------------------------------------------------------

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(seconds)
        if t is None:
            t = self._timeouts[seconds] = aiohttp.ClientTimeout(
                total=None, connect=self.config.connect_timeout, sock_read=seconds
            )
        return t

    def _tls(self) -> ssl.SSLContext | bool:
        """What the connector verifies servers with: True is the system's CAs."""
        if not self.config.verify_tls:
            return False
        if self.config.ca_bundle is None:
            return True
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=self.config.ca_bundle)
        return self._ssl_context

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            ssl=self._tls(),
            limit=self.config.connection_limit,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=300,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # Sent on every request; aiohttp merges them in C, cheaper than per call.
            headers=self._base_headers,
            timeout=self._timeout(self.config.timeout),
            auto_decompress=True,
            raise_for_status=False,
            skip_auto_headers=("Content-Type",),
        )
        # A client dropped without close(): close its pool on its own loop, quietly.
        # Not at exit: ServiceClients still have a session to finish then.
        weakref.finalize(self, _close_soon, session, asyncio.get_running_loop()).atexit = False
        return session

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is not None and self._session_loop is loop and not self._session.closed:
            return self._session
        if _loops.in_guest_run():
            return self._guest_pool()
        self._abandon_session()
        self._session = self._new_session()
        self._session_loop = loop
        # A loop that ends (asyncio.run returning) cancels its tasks: the keeper closes
        # the pool then, on its own loop, so nothing is left unclosed. (The background
        # loop lives until exit, where _close_at_exit does this.)
        if loop is not _loops.background_loop_if_started():
            keeper = loop.create_task(_keep_until_loop_ends(self._session),
                                      name="tinker-async-keeper")
            _keepers.add(keeper)
            keeper.add_done_callback(_keepers.discard)
        return self._session

    def _guest_pool(self) -> aiohttp.ClientSession:
        # Guest runs happen on the background loop, which lives until exit (a forked
        # child gets a new one: the parent's pool then belongs to a dead loop).
        loop = asyncio.get_running_loop()
        session = self._guest_session
        if session is None or session.closed or self._guest_loop is not loop:
            if session is not None and not session.closed:
                _orphans.append(session)
            session = self._guest_session = self._new_session()
            self._guest_loop = loop
        return session

    def _abandon_session(self) -> None:
        """Drop the session of a loop we left; it is closed if its loop still runs here."""
        session, self._session, self._session_loop = self._session, None, None
        if session is None or session.closed:
            return
        _orphans.append(session)

    #: at exit, transports close after the ServiceClients that finish sessions through them
    _exit_order = 1

    def _close_at_exit(self) -> None:
        background = _loops.background_loop_if_started()
        if background is None or not background.is_running():
            return
        for session, loop in ((self._session, self._session_loop),
                              (self._guest_session, background)):
            if session is not None and not session.closed and loop is background:
                asyncio.run_coroutine_threadsafe(session.close(), loop).result(2.0)

    async def aclose(self) -> None:
        """Close for good: later requests raise ClientClosedError."""
        self.closed = True
        await self.release()

    async def release(self) -> None:
        """Close the aiohttp session (on its own loop); the next request opens a new one."""
        session, loop = self._session, self._session_loop
        self._session = self._session_loop = None
        if session is not None and not session.closed:
            if loop is asyncio.get_running_loop():
                await session.close()
            elif loop is not None:
                # Closing from a guest run: the home loop closes its pool when it next runs.
                _close_soon(session, loop)
        guest, self._guest_session = self._guest_session, None
        background = _loops.background_loop_if_started()
        if guest is not None and not guest.closed and background is not None:
            if background is asyncio.get_running_loop():
                await guest.close()
            else:
                _close_soon(guest, background)

    # -- requests ---------------------------------------------------------------------

    def url(self, endpoint: str) -> str:
        return self.dialect.url(self.config.base_url, endpoint)

    async def request(
        self,
        method: str,
        endpoint: str,
        *,
        json: Any = None,
        body: bytes | memoryview | None = None,
        content_type: str | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        ok_statuses: frozenset[int] = frozenset(),
        idempotency_key: bool | str = True,
        authenticate: bool = True,
        follow_redirects: bool = True,
        deadline: Limit | None = None,
    ) -> Response:
        """Send one logical request, retrying per ``retry``; return the response or raise.

        ``ok_statuses`` are error statuses the caller handles itself (e.g. 408 and 410 when
        polling); they are returned instead of raised or retried. Non-GET requests carry an
        ``X-Idempotency-Key`` (the same on every retry; a string is used as the key) unless
        ``idempotency_key=False``,
        for POSTs that only read (polls). ``authenticate=False`` sends no credential of its
        own (the token exchange passes the key in ``headers``). ``follow_redirects=False``
        returns a redirect itself (its ``Location`` is the answer).

        Time: each attempt waits ``timeout`` (else the configured one) for an answer; the
        call's budget (``_budget``: a control call's whole-call limit, a work call's
        ``call_timeout`` and ``progress_timeout``) and ``deadline`` (the poller's progress
        limit) bound the attempts and the retries together. Running out of one of them is
        an :class:`APITimeoutError` that names it.
        """
        url = self.url(endpoint)
        req_headers = dict(headers) if headers else {}  # the session adds the base headers
        if json is not None:
            body = _json_encode(json)
            content_type = "application/json"
        if content_type is not None:
            req_headers["Content-Type"] = content_type
        if method != "GET" and idempotency_key:
            req_headers["X-Idempotency-Key"] = (
                idempotency_key if isinstance(idempotency_key, str) else _new_idempotency_key())
        # JWT mode once the handshake said so (client/config itself goes with the key).
        wants_jwt = authenticate and endpoint != "client/config" and bool(
            self.dialect.flags.get("pjwt_auth_enabled"))
        attempts = self._attempts(method, endpoint, timeout, retry, deadline)
        error: APIError | None = None
        while True:
            attempt_timeout, limit = attempts.timeout(error)
            sent_credential = await self._authenticate(req_headers, wants_jwt) if authenticate else ""
            retry_after: float | None = None
            try:
                response = await self._send(method, url, req_headers, body, params,
                                            attempt_timeout, follow_redirects)
            except APIConnectionError as exc:
                if self.closing or self.closed:
                    # Our own close broke the connection: the call ends, it is not retried.
                    raise _closed_error() from None
                if limit is not None and isinstance(exc, APITimeoutError):
                    raise attempts.limit_error(limit, exc) from None
                error = exc
            except APIResponseValidationError:
                raise  # an answer we refuse (too large): asking again gets the same
            except APIError as exc:
                error = exc
            else:
                attempts.answered(response.status)
                if response.status < 400 or response.status in ok_statuses:
                    return response
                if await self._replay_after_401(response, attempts, authenticate,
                                                sent_credential):
                    continue
                try:
                    error, retry_after = self._retryable(response, method, url, attempts.policy)
                except NotFoundError as exc:
                    await self._raise_if_session_unknown(exc, endpoint)
                    raise
            delay = attempts.next_delay(error, retry_after)  # raises when out of retries
            _retrying.retry_log.retrying(method, endpoint, attempts, delay, error)
            req_headers["x-stainless-retry-count"] = str(attempts.count)
            await asyncio.sleep(delay)

    def _attempts(self, method: str, endpoint: str, timeout: float | None,
                  retry: RetryPolicy | None, deadline: Limit | None) -> _retrying.Attempts:
        """The retry state of one request: its policy and per-attempt timeout under the
        call's budget (a control call's attempt gets at most half its limit, so that one
        retry fits)."""
        read_s = timeout or self.config.timeout
        budget = _budget.current()
        if budget is not None and not budget.work:
            read_s = min(read_s, self.config.control_timeout / 2)
        return _retrying.Attempts(method, endpoint, self.config, retry or self.config.retry,
                                  read_s, self._timeout(read_s), deadline)

    async def _authenticate(self, req_headers: dict[str, str], wants_jwt: bool) -> str:
        """Put the current credential's header in; returns the credential (per attempt: a
        long retry can outlive a JWT)."""
        if not self.credentials.ready(wants_jwt):
            if not wants_jwt and self.dialect.has_client_config:
                # The server's flags are known (a copy carries them) and say no JWT
                # mode: a credential command is refused, as at the handshake.
                self.credentials.refuse_command_without_jwt()
            await self.credentials.prepare(wants_jwt)
        req_headers.update(self._auth_header())
        return self.credentials.current()

    async def _replay_after_401(self, response: Response, attempts: _retrying.Attempts,
                                authenticate: bool, sent_credential: str) -> bool:
        """Whether to send again after a 401 ``invalid_token``: the server wants a (new)
        JWT, got once by exchanging the key. This is also how a client that skipped the
        handshake (a bare RestClient) learns that the server is in JWT mode."""
        if (response.status != 401 or not authenticate or attempts.replayed
                or 'error="invalid_token"' not in response.headers.get("WWW-Authenticate", "")):
            return False
        attempts.replayed = True
        return await self._jwt_after_401(rejected=sent_credential)

    async def _raise_if_session_unknown(self, exc: NotFoundError, endpoint: str) -> None:
        """A 404 may mean the server forgot the whole session (it restarted): then every
        call of the family fails the same way, with one error that says what to do."""
        if self.on_not_found is None or endpoint == "session_heartbeat" or self.closing:
            return
        gone = await self.on_not_found()
        if gone is not None:
            raise gone from exc

    def _retryable(self, response: Response, method: str, url: str,
                   policy: RetryPolicy) -> tuple[APIStatusError, float | None]:
        """The typed error of an error answer, with the server's requested wait, when it
        may be retried; raises it when not (the one place an answer's status decides)."""
        status = response.status
        if status == 410 and self.closing:
            raise _closed_error()  # our own close finished the session
        if status == 410 and self.on_session_gone is not None:
            # The session is over (finished, expired, or lost in a server restart): no
            # retry can help, and every later call must fail the same way.
            raise self.on_session_gone()
        error = status_error(status, response.body, response.headers, method=method, url=url,
                             scrub=self.credentials.secrets())
        force = _retrying.should_retry_header(response.headers)
        if force is False or (force is None and not policy.should_retry_status(status)):
            raise error
        return error, _retrying.retry_after(response.headers, policy.retry_after_cap)

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | memoryview | None,
        params: Mapping[str, str | int] | None,
        timeout: aiohttp.ClientTimeout,
        follow_redirects: bool = True,
    ) -> Response:
        if self.closed:
            raise _closed_error()
        session = self.session()
        try:
            async with session.request(
                method, url, data=body, params=params, headers=headers, timeout=timeout,
                allow_redirects=follow_redirects,
            ) as resp:
                data = await _read_bounded(resp, self.config.max_response_bytes)
                return Response(resp.status, resp.headers, data)
        except asyncio.CancelledError:
            # Closing the pool cancels the requests still in it (also those waiting for a
            # connection): those calls end as closed, not with a cancel nobody asked for.
            if (self.closed or self.closing) and not _cancel_requested():
                raise _closed_error() from None
            raise
        except asyncio.TimeoutError:
            raise APITimeoutError(
                f"{method} {url} timed out (no answer within "
                f"{timeout.sock_read or timeout.total or 0:.3g} s)",
                method=method,
                url=url,
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise APIConnectionError(
                f"Cannot connect to {self.config.base_url} ({exc.os_error.strerror or exc}); "
                "is the server running and the base URL right?",
                method=method,
                url=url,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise APIConnectionError(
                f"{method} {url} failed: the connection broke ({type(exc).__name__}: {exc})",
                method=method,
                url=url,
            ) from None
