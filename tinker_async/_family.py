"""Family: what one ServiceClient shares with every client it makes.

A ServiceClient and the TrainingClients, SamplingClients and RestClients it makes are a
*family*: they send through one transport (connection pool, dialect, credentials), live
in one server session, wait for results through one poller and run on one home loop. The
family is that shared machinery, made by the ServiceClient and handed to each client at
construction; clients use it instead of reaching into each other's attributes.

Its ``owner`` is the ServiceClient itself, for what needs the public client (a RestClient
on the same pool, sampling copies that join through it).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._futures import FuturePoller
from ._loops import Home
from ._session import Session
from ._transport import Transport
from .errors import APIError, ClientClosedError
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .service import ServiceClient

__all__ = ["Family"]


class Family:
    """The transport, session, poller, telemetry and home loop of one client family, its
    closed state, and its model and sampling-session sequence counters."""

    def __init__(self, owner: ServiceClient, home: Home, transport: Transport,
                 session: Session) -> None:
        self.owner = owner
        self.home = home
        self.transport = transport
        self.session = session
        self.poller = FuturePoller(transport)
        self.telemetry = Telemetry(lambda: session.id)
        #: set by ServiceClient.close (and after a fork's exit handling): calls are refused
        self.closed = False
        self._counter_lock = threading.Lock()
        self._model_seq = 0
        self._sampling_session_seq = 0

    # -- state ---------------------------------------------------------------------------

    def check_open(self) -> None:
        """Refuse a call when the family is closed or its server session is gone."""
        self.check_not_closed()
        self.session.check_alive()

    def check_not_closed(self) -> None:
        """Refuse a call when the family is closed (calls that need no session: REST)."""
        if self.closed:
            raise ClientClosedError("This ServiceClient is closed; create a new one.")

    async def ensure_session(self) -> str:
        """The server session's id, after the handshake and its creation if not yet done."""
        self.check_open()
        return await self.session.ensure()

    # -- sequence counters ---------------------------------------------------------------

    def next_model_seq(self) -> int:
        """The ``model_seq_id`` of the next ``create_model`` of this session."""
        with self._counter_lock:
            seq, self._model_seq = self._model_seq, self._model_seq + 1
        return seq

    def give_back_model_seq(self, seq: int) -> None:
        """Reuse ``seq`` for the next model: its request was refused, so the server's
        sequence has no such entry (a gap would stall later creates there)."""
        with self._counter_lock:
            if self._model_seq == seq + 1:
                self._model_seq = seq

    def next_sampling_session_seq(self) -> int:
        """The ``sampling_session_seq_id`` of the next sampling session of this session."""
        with self._counter_lock:
            seq = self._sampling_session_seq
            self._sampling_session_seq = seq + 1
        return seq

    # -- results -------------------------------------------------------------------------

    async def poll_json(self, resp_json: Any, request_type: str) -> Any:
        """The JSON result of the server future that ``resp_json`` (a submit's answer)
        names."""
        request_id = resp_json.get("request_id") if isinstance(resp_json, dict) else None
        if not isinstance(request_id, str):
            raise APIError(f"expected a future with a request_id, got {resp_json!r}")
        return await self.poller.result(request_id, request_type, lambda r: r.json())
