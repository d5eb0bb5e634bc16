"""Shared by the examples: use the server in TINKER_BASE_URL, or start the embedded one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import NamedTuple


class Target(NamedTuple):
    base_url: str
    api_key: str
    base_model: str
    embedded: bool


@contextlib.asynccontextmanager
async def server_target(base_model: str = "local/byte-lm") -> AsyncIterator[Target]:
    """The server to talk to: ``TINKER_BASE_URL``/``TINKER_API_KEY`` if set, else a local one."""
    url = os.environ.get("TINKER_BASE_URL")
    if url:
        key = os.environ.get("TINKER_API_KEY", "")
        model = os.environ.get("TINKER_BASE_MODEL", base_model)
        print(f"using the server at {url} (model {model})")
        yield Target(url, key, model, embedded=False)
        return
    from tinker_async.local import LocalServer

    async with LocalServer() as srv:
        print(f"started the embedded server at {srv.url}")
        yield Target(srv.url, srv.api_key, base_model, embedded=True)
