"""Shared fixtures: one embedded server per test session, on 127.0.0.1, in its own thread.

The server runs on its own loop in a thread so that blocking sync calls made by a test
cannot stall it. Tests that inject faults or read the request log clear them first
(``fresh_server``), so tests stay independent.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tinker_async import ServiceClient
from tinker_async.local import LocalServer

API_KEY = "tml-test-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def server() -> Iterator[LocalServer]:
    with LocalServer(api_key=API_KEY, session_timeout_s=30.0).in_thread() as srv:
        yield srv


@pytest.fixture
def fresh_server(server: LocalServer) -> Iterator[LocalServer]:
    server.faults.clear()
    server.clear_requests()
    yield server
    server.faults.clear()


@pytest.fixture
async def service(fresh_server: LocalServer) -> AsyncIterator[ServiceClient]:
    """A ServiceClient on the shared server, closed after the test."""
    async with ServiceClient(base_url=fresh_server.url, api_key=API_KEY) as svc:
        yield svc


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def _empty_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _no_ambient_tinker_env(monkeypatch: pytest.MonkeyPatch, _empty_home: Path) -> None:
    """Tests pass settings explicitly; a developer's own environment (and the key stored in
    their ~/.tinker) must not leak in."""
    for name in ("TINKER_BASE_URL", "TINKER_API_KEY", "TINKER_PROJECT_ID", "TINKER_TAGS",
                 "TWINKLE_SERVER_URL", "TWINKLE_SERVER_TOKEN", "TINKER_CREDENTIAL_CMD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(_empty_home))


@pytest.fixture
def run_script() -> Callable[..., str]:
    """``run_script(code, env=None, timeout=60)``: run code in a fresh interpreter."""
    return _run_script


def _run_script(code: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> str:
    """Run ``code`` in a fresh interpreter (for fork/exit behaviour); a hang fails the test."""
    import subprocess

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr
