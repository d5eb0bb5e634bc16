"""TLS verification, the plain-HTTP warning and the response size limit (issue 11).

The TLS tests run a real HTTPS server on 127.0.0.1 with a certificate from a throwaway CA
(trustme): the client must refuse it by default, and accept it given that CA.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

import tinker_async as tinker
from tinker_async.local import LocalServer

pytestmark = pytest.mark.anyio
trustme = pytest.importorskip("trustme")


@pytest.fixture
async def https_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS server answering ``get_server_capabilities``; yields (base URL, CA path)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def capabilities(_: web.Request) -> web.Response:
        return web.json_response({"supported_models": [{"model_name": "tls/model"}]})

    app = web.Application()
    app.router.add_get("/api/v1/get_server_capabilities", capabilities)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", ca_file
    finally:
        await runner.cleanup()


async def test_an_unknown_certificate_is_refused_by_default(
    https_server: tuple[str, Path],
) -> None:
    url, _ = https_server
    rest = tinker.RestClient(base_url=url, api_key="tml-test", max_retries=0)
    with pytest.raises(tinker.APIConnectionError, match=r"(?i)certificate"):
        await asyncio.wait_for(rest.get_server_capabilities_async(), 60)
    await rest.close_async()


@pytest.mark.parametrize("how", ["argument", "environment"])
async def test_a_ca_bundle_makes_the_server_trusted(
    https_server: tuple[str, Path], how: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, ca_file = https_server
    if how == "environment":
        monkeypatch.setenv("TINKER_CA_BUNDLE", str(ca_file))
        rest = tinker.RestClient(base_url=url, api_key="tml-test")
    else:
        rest = tinker.RestClient(base_url=url, api_key="tml-test", ca_bundle=str(ca_file))
    caps = await asyncio.wait_for(rest.get_server_capabilities_async(), 60)
    assert [m.model_name for m in caps.supported_models] == ["tls/model"]
    await rest.close_async()


async def test_verification_can_be_turned_off(https_server: tuple[str, Path]) -> None:
    url, _ = https_server
    rest = tinker.RestClient(base_url=url, api_key="tml-test", verify_tls=False)
    caps = await asyncio.wait_for(rest.get_server_capabilities_async(), 60)
    assert [m.model_name for m in caps.supported_models] == ["tls/model"]
    await rest.close_async()


def test_a_missing_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(tinker.ConfigurationError, match="not a readable file"):
        tinker.RestClient(base_url="https://127.0.0.1:1", api_key="tml-test",
                          ca_bundle=str(tmp_path / "nope.pem"))


@pytest.mark.parametrize("url, warns", [
    ("http://tinker.example.org:8000", True),
    ("http://10.1.2.3", True),
    ("https://tinker.example.org", False),
    ("http://127.0.0.1:8000", False),
    ("http://localhost:8000", False),
    ("http://[::1]:8000", False),
])
def test_a_key_over_plain_http_off_this_machine_warns(url: str, warns: bool) -> None:
    from tinker_async import _config

    _config._warned_plain_http.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tinker.RestClient(base_url=url, api_key="tml-test")
    insecure = [w for w in caught if issubclass(w.category, tinker.InsecureTransportWarning)]
    assert len(insecure) == (1 if warns else 0)
    if warns:
        text = str(insecure[0].message)
        assert "plain HTTP" in text and "https://" in text and "tml-test" not in text


async def test_an_answer_over_the_size_limit_is_refused_once(
    fresh_server: LocalServer,
) -> None:
    rest = tinker.RestClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                             max_response_bytes=8)
    with pytest.raises(tinker.APIResponseValidationError, match="max_response_bytes"):
        await asyncio.wait_for(rest.list_training_runs_async(), 60)
    assert fresh_server.count(r"/training_runs$") == 1  # refused, not retried
    await rest.close_async()
