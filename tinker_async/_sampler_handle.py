"""Sampler handles: a SamplingClient as a string, in the official SDK's format.

``get_sampler_handle()`` gives URL-safe base64 of the JSON the official SDK 0.38 writes::

    {"session_id", "sampling_session_id", "base_model", "record_stability_info",
     "holder": {"base_url", "default_headers_overrides", "client_config",
                "client_dynamic_config", "api_key": null}}

so handles pass between the two libraries both ways. It carries no credentials: no key,
and none of the extra headers that look like one. What only this library needs (the
dialect of a server that is not the official one) rides inside ``client_config`` under
``_tinker_async``, which handles for official servers never contain.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequestError

__all__ = ["decode_handle", "encode_handle", "without_credentials"]

_PRIVATE = "_tinker_async"
_CREDENTIAL_HEADER = re.compile(r"authorization|api[-_]?key|cookie|secret|token|password",
                                re.IGNORECASE)


def without_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` less the ones that look like credentials (they stay in this process)."""
    return {k: v for k, v in headers.items() if not _CREDENTIAL_HEADER.search(k)}


def encode_handle(state: dict[str, Any]) -> str:
    """The handle of a SamplingClient's pickle state (see ``SamplingClient.__reduce__``)."""
    client_config = dict(state["flags"]) if state["has_client_config"] else {}
    if state["dialect"] != "official" or state["route_prefix"] != "/api/v1":
        client_config[_PRIVATE] = {"dialect": state["dialect"],
                                   "route_prefix": state["route_prefix"],
                                   "has_client_config": state["has_client_config"]}
    handle = {
        "session_id": state["session_id"],
        "sampling_session_id": state["sampling_session_id"],
        "holder": {
            "base_url": state["base_url"],
            "default_headers_overrides": without_credentials(state["default_headers"]),
            "client_config": client_config,
            "client_dynamic_config": dict(state["dynamic_flags"]),
            "api_key": None,
        },
        "base_model": state["base_model"] or "",
        "record_stability_info": bool(state["record_stability_info"]),
    }
    return base64.urlsafe_b64encode(json.dumps(handle, separators=(",", ":")).encode()).decode()


def decode_handle(handle: str) -> dict[str, Any]:
    """The pickle state a handle stands for; ``InvalidRequestError`` if it is not one."""
    try:
        data = json.loads(base64.urlsafe_b64decode(handle.encode("ascii")))
        holder = data["holder"]
        client_config = dict(holder.get("client_config") or {})
        private = client_config.pop(_PRIVATE, {})
        state = {
            "base_url": str(holder["base_url"]),
            "default_headers": dict(holder.get("default_headers_overrides") or {}),
            "dialect": str(private.get("dialect", "official")),
            "route_prefix": str(private.get("route_prefix", "/api/v1")),
            "flags": client_config,
            "has_client_config": bool(private.get("has_client_config", bool(client_config))),
            "dynamic_flags": dict(holder.get("client_dynamic_config") or {}),
            "session_id": str(data["session_id"]),
            "sampling_session_id": str(data["sampling_session_id"]),
            "base_model": data.get("base_model") or None,
            "model_path": None,
            "record_stability_info": bool(data.get("record_stability_info", False)),
        }
    except (UnicodeEncodeError, binascii.Error, ValueError, KeyError, TypeError,
            AttributeError) as exc:
        raise InvalidRequestError(
            f"not a sampler handle ({type(exc).__name__}); pass the string that "
            "SamplingClient.get_sampler_handle() returned"
        ) from None
    return state
