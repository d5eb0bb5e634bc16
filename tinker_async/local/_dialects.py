"""What the embedded server speaks: protocol dialects and HTTP surfaces.

A **dialect** is a whole-server personality: the official 0.38 service, or one of the
Tinker-compatible servers others run (skyrl-tx, tuft, tinkercloud, Twinkle; they lack
``client/config``, poll differently, use other path schemes, ...). It lets the client's
tests check its tolerances against a real HTTP server. Flags marked *(follow-up)* are read
by the training and sampling routes, which are added later.

A **surface** is one route tree of the running server: ``/api/v1`` (the Tinker protocol)
or the Twinkle management API under its prefix. The handlers are shared; a surface only
says how auth is read and how a few response fields are named.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["DIALECTS", "Dialect", "Surface", "resolve_dialect"]


@dataclass(frozen=True)
class Dialect:
    """Switches that make the server behave like one family of Tinker-compatible servers."""

    name: str
    client_config: bool = True
    """``POST client/config`` and ``client/dynamic_config`` exist (else 404, as on most
    third-party servers)."""
    retrieve_futures: bool = True
    """The session long-poll ``POST retrieve_futures`` exists."""
    cancel_future: bool = True
    """``POST cancel_future`` exists."""
    join_sampling_session: bool = True
    """``POST join_sampling_session`` exists."""
    path_scheme: Literal["tinker", "twinkle"] = "tinker"
    """Scheme of checkpoint paths in /api/v1 responses (``tinker://`` or ``twinkle://``)."""
    future_shape: Literal["official", "tinkercloud"] = "official"
    """``official``: ``{"type":"try_again"}`` / result / ``{"error","category"}``;
    ``tinkercloud``: ``{"status": "pending"|"completed"|"failed", "result"|"error"}``, also
    at ``POST retrieve_future/{request_id}``."""
    pending_status: int = 200
    """Status of a long-poll that ran out of time: 200 (official, try_again body) or 408
    (skyrl; its body is the same try_again JSON)."""
    capabilities_shape: Literal["official", "tinkercloud"] = "official"
    """``official``: ``supported_models: [{"model_name", ...}]``; ``tinkercloud``: a list of
    names plus ``max_batch_size`` and ``features``."""
    strict_fields: bool = False
    """Reject unknown request fields with a 422 (servers built on ``extra="forbid"`` models)."""
    protobuf: bool = True
    """*(follow-up)* forward_backward bodies and fwd/sample results may be protobuf."""
    separate_forward: bool = False
    """*(follow-up)* JSON ``POST forward`` exists beside ``forward_backward``."""
    sample_sequence_ids: bool = True
    """*(follow-up)* ``asample`` promises carry ``sample_sequence_ids``."""
    create_via_load: bool = True
    """*(follow-up)* ``load_weights`` with ``session_id`` + ``model_seq_id`` creates a model."""
    sync_sample: bool = False
    """*(follow-up)* blocking ``POST sample`` exists (tinkercloud)."""
    checkpoint_archive: bool = True
    """``GET .../checkpoints/{kind}/{name}/archive`` answers 302 to a signed tar (the API
    before SDK 0.38, which dropped it); off, the route is missing (404), as on servers
    built for 0.38."""


_OFFICIAL = Dialect("official")
_THIRD_PARTY = replace(
    _OFFICIAL,
    name="third_party",
    client_config=False,
    retrieve_futures=False,
    cancel_future=False,
    join_sampling_session=False,
    create_via_load=False,
    sample_sequence_ids=False,
    checkpoint_archive=False,
)

DIALECTS: dict[str, Dialect] = {
    "official": _OFFICIAL,
    # skyrl-tx-like: JSON only, separate /forward, long holds that end in 408.
    "legacy": replace(
        _THIRD_PARTY, name="legacy", pending_status=408, protobuf=False, separate_forward=True
    ),
    # tuft-like: strict request models, protobuf or JSON.
    "strict": replace(_THIRD_PARTY, name="strict", strict_fields=True),
    "tinkercloud": replace(
        _THIRD_PARTY,
        name="tinkercloud",
        future_shape="tinkercloud",
        capabilities_shape="tinkercloud",
        protobuf=False,
        separate_forward=True,
        sync_sample=True,
        sample_sequence_ids=True,
    ),
    "twinkle": replace(
        _THIRD_PARTY, name="twinkle", path_scheme="twinkle", protobuf=False, separate_forward=True
    ),
}


def resolve_dialect(dialect: str | Dialect) -> Dialect:
    """A :class:`Dialect` from a preset name or an instance (returned unchanged)."""
    if isinstance(dialect, Dialect):
        return dialect
    try:
        return DIALECTS[dialect]
    except KeyError:
        names = ", ".join(sorted(DIALECTS))
        raise ValueError(f"unknown dialect {dialect!r}; expected one of: {names}") from None


@dataclass(frozen=True)
class Surface:
    """How one route tree reads credentials and names its fields."""

    name: Literal["tinker", "twinkle"]
    scheme: Literal["tinker", "twinkle"]
    """Scheme of checkpoint paths this surface writes."""
    path_field: str
    """Name of the checkpoint-path field in responses (``tinker_path`` / ``twinkle_path``)."""
    bearer_auth: bool
    """Credential in ``Authorization: Bearer`` (Twinkle) instead of ``X-API-Key``."""
    wrap_weights_info: bool
    """Twinkle wraps the weights info as ``{"weights_info": {...}}``."""
    extended_records: bool
    """Twinkle adds model fields to checkpoints and ``save_dir`` to runs."""
    delete_reply_body: bool
    """Twinkle answers a delete with ``{"success", "message"}``; Tinker with 204."""

    @staticmethod
    def tinker(dialect: Dialect) -> Surface:
        """The ``/api/v1`` surface, whose path scheme follows the dialect."""
        return Surface(
            name="tinker",
            scheme=dialect.path_scheme,
            path_field="tinker_path",
            bearer_auth=False,
            wrap_weights_info=False,
            extended_records=False,
            delete_reply_body=False,
        )

    @staticmethod
    def twinkle() -> Surface:
        """The Twinkle management surface (``/twinkle`` by default)."""
        return Surface(
            name="twinkle",
            scheme="twinkle",
            path_field="twinkle_path",
            bearer_auth=True,
            wrap_weights_info=True,
            extended_records=True,
            delete_reply_body=True,
        )
