"""What the server speaks, so that clients never branch on server kinds themselves.

A :class:`Dialect` is chosen from the configuration (``dialect=`` or the Twinkle
environment variables) and refined at the handshake: a server that answers
``client/config`` is official 0.38 and its flags are kept here; one that answers 404 is a
legacy JSON server (tinkercloud, older skyrl-tx, ...); one whose answer names none of the
official flags (hatchery-core) gets JSON bodies too. It is refined again by what
the server answers later: a refusal that shows a missing capability switches that
capability off for the rest of the session (:meth:`Dialect.lacks`).

Every server difference is a field here; clients, the session and the poller read the
fields and never test :attr:`Dialect.name`, which only names the server for people.
Adding a server is one new preset in :func:`make_dialect` (plus its tests).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Literal

from .errors import ConfigurationError

log = logging.getLogger("tinker_async")

DialectName = Literal["official", "legacy", "strict", "tinkercloud", "twinkle"]
KNOWN_DIALECTS: tuple[str, ...] = ("official", "legacy", "strict", "tinkercloud", "twinkle")

#: The official SDK's fallbacks for the server-controlled flags (reference §2.9).
DEFAULT_FLAGS: Mapping[str, Any] = {
    "pjwt_auth_enabled": False,
    "parallel_fwdbwd_chunks": True,
    "proto_compress_fwdbwd": False,
    "fwdbwd_max_chunk_len": 1024,
    "fwdbwd_max_chunk_bytes_count": 5_000_000,
    "sample_max_concurrent_requests": 2000,
    "sample_use_retrieve_futures": False,
    "sample_join_sampling_session": False,
}


#: flags the official service's client/config answer always carries
_OFFICIAL_WIRE_FLAGS = ("proto_compress_fwdbwd", "parallel_fwdbwd_chunks",
                        "fwdbwd_max_chunk_len", "fwdbwd_max_chunk_bytes_count",
                        "pjwt_auth_enabled", "sample_use_retrieve_futures")


@dataclasses.dataclass
class Dialect:
    """The protocol details of one server."""

    name: str = "official"
    route_prefix: str = "/api/v1"
    #: "x-api-key" (Tinker) or "bearer" (Twinkle: Authorization + Twinkle-Authorization)
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    #: the server answered client/config (False until the handshake says so)
    has_client_config: bool = False
    #: forward_backward bodies in protobuf (else JSON, and forward at /forward)
    protobuf: bool = True
    #: the batch long-poll ``retrieve_futures`` is offered
    retrieve_futures: bool = False
    #: create-from-checkpoint as one load_weights (else create_model + load_weights)
    create_via_load: bool = True
    #: the server may omit sample_sequence_ids
    sequence_ids_optional: bool = False
    #: JSON forward passes go to ``/forward`` (else ``forward_backward`` + ``forward_only``);
    #: cleared when a server answers 404 there
    separate_forward: bool = True
    #: ``client/config`` is worth asking for at the handshake (Twinkle has none)
    client_config_route: bool = True
    #: ``create_session`` body: the official request, or Twinkle's ``{"metadata": ...}``
    session_request: Literal["official", "twinkle"] = "official"
    #: ``POST sessions/{id}/finish`` exists (Twinkle sessions simply lapse)
    session_finish: bool = True
    #: ``GET checkpoint_path/{run}/{checkpoint}`` exists (Twinkle); else the list is read
    checkpoint_path_route: bool = False
    #: ``weights_info`` takes and answers Twinkle's shapes (``twinkle_path``, wrapped)
    twinkle_weights_info: bool = False
    #: JSON training/sampling bodies in tinkercloud's documented shape (``model_id`` names
    #: the sampler; forward_backward fields at the top level)
    tinkercloud_bodies: bool = False
    #: a blocking ``POST sample`` answers with the result itself (no future to poll)
    sync_sample: bool = False
    #: futures are polled at ``retrieve_future/{request_id}`` (tinkercloud)
    future_id_in_path: bool = False
    #: where sampling sessions are made (tinkercloud also calls it create_sampling_client)
    sampling_session_route: str = "create_sampling_session"
    flags: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_FLAGS))
    dynamic_flags: dict[str, Any] = dataclasses.field(default_factory=dict)

    def url(self, base_url: str, endpoint: str) -> str:
        """The full URL of ``endpoint`` (e.g. ``"training_runs"``) on this server."""
        return f"{base_url}{self.route_prefix}/{endpoint}"

    def auth_headers(self, key: str) -> dict[str, str]:
        if self.auth == "bearer":
            return {"Authorization": f"Bearer {key}", "Twinkle-Authorization": f"Bearer {key}"}
        return {"X-API-Key": key}

    def flag(self, name: str) -> Any:
        return self.flags.get(name, DEFAULT_FLAGS.get(name))

    def adopt(self, flags: Mapping[str, Any], has_client_config: bool,
              dynamic_flags: Mapping[str, Any]) -> None:
        """Take what another client of the same server learned at its handshake (a copy
        joining its session skips the handshake)."""
        self.flags.update(flags)
        if has_client_config:
            self.apply_client_config(flags)
        self.dynamic_flags.update(dynamic_flags)

    def apply_client_config(self, flags: Mapping[str, Any]) -> None:
        """Record the server's client/config answer (unknown flags are kept, not used).

        An answer that names none of the official forward_backward flags comes from a
        server with a client/config of its own (hatchery-core), not from one that speaks
        the official protobuf body: such a server gets JSON.
        """
        self.has_client_config = True
        self.flags.update(flags)
        self.retrieve_futures = bool(self.flag("sample_use_retrieve_futures"))
        if self.protobuf and not any(name in flags for name in _OFFICIAL_WIRE_FLAGS):
            self.lacks("protobuf", "its client/config names none of the official flags")

    def lacks(self, capability: str, evidence: object) -> None:
        """The server showed it lacks ``capability`` (a boolean field): switch it off for
        the session, once, with a DEBUG line saying why."""
        if getattr(self, capability) is not False:
            log.debug("server lacks %s (%s); using the other form from now on",
                      capability, evidence)
            setattr(self, capability, False)

    def mark_legacy(self) -> None:
        """The server has no client/config: an older JSON-only Tinker-compatible server."""
        self.has_client_config = False
        if self.name == "official":
            self.name = "legacy"  # for people (``ServiceClient.dialect``); nothing reads it
        self.protobuf = False
        self.retrieve_futures = False
        self.create_via_load = False
        self.sequence_ids_optional = True


def make_dialect(name: str | None, route_prefix: str | None = None) -> Dialect:
    """The starting dialect for a configuration (refined later by the handshake)."""
    name = name or "official"
    if name not in KNOWN_DIALECTS:
        raise ConfigurationError(
            f"Unknown dialect {name!r}; expected one of {', '.join(KNOWN_DIALECTS)}"
        )
    dialect = Dialect(name=name)
    if name == "twinkle":
        dialect = Dialect(name=name, route_prefix="/twinkle", auth="bearer",
                          client_config_route=False, session_request="twinkle",
                          session_finish=False, checkpoint_path_route=True,
                          twinkle_weights_info=True)
        dialect.mark_legacy()
    elif name in ("legacy", "tinkercloud"):
        dialect.mark_legacy()
        if name == "tinkercloud":
            dialect.tinkercloud_bodies = dialect.sync_sample = dialect.future_id_in_path = True
    if route_prefix is not None:
        dialect.route_prefix = "/" + route_prefix.strip("/") if route_prefix.strip("/") else ""
    return dialect
