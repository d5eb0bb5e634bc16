"""Where the credential comes from, and JWT mode (``pjwt_auth_enabled``).

The JWT-mode servers here are strict (``require_jwt=True``): the API key itself opens only
``client/config`` and ``auth/token``, so every other request succeeding proves it carried
the JWT.
"""

from __future__ import annotations

import base64
import json
import pickle
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tinker_async as tinker
from tinker_async import ConfigurationError, RestClient, ServiceClient
from tinker_async.local import LocalServer

KEY = "tml-auth-test-0123456789"
MODEL = "local/byte-lm"


@pytest.fixture
def jwt_server() -> Iterator[LocalServer]:
    with LocalServer(api_key=KEY, client_config={"pjwt_auth_enabled": True},
                     require_jwt=True, jwt_ttl_s=3600).in_thread() as srv:
        yield srv


def _statuses(server: LocalServer, pattern: str) -> list[int | None]:
    return [r.status for r in server.requests if r.path.endswith(pattern)]


def _print_command(text: str, status: int = 0, stderr: str = "") -> str:
    code = f"import sys; print({text!r}); print({stderr!r}, file=sys.stderr); sys.exit({status})"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def test_jwt_mode_exchanges_the_key_once_and_sends_the_jwt(jwt_server: LocalServer) -> None:
    with ServiceClient(base_url=jwt_server.url, api_key=KEY) as service:
        sampler = service.create_sampling_client(base_model=MODEL).result(10)
        result = sampler.sample(tinker.ModelInput.from_ints([104, 105]), 1,
                                tinker.SamplingParams(max_tokens=2)).result(30)
        assert len(result.sequences[0].tokens) == 2
        rest = service.create_rest_client()
        assert rest.list_training_runs().result(10).training_runs == []
        # whoami reads the JWT the server gave (the key itself is not a JWT).
        assert rest.whoami().email == "local@localhost"
    assert _statuses(jwt_server, "/auth/token") == [200]
    assert all(r.status is None or r.status < 400 for r in jwt_server.requests), [
        (r.path, r.status) for r in jwt_server.requests]


def test_a_client_without_the_handshake_learns_jwt_mode_from_a_401(
    jwt_server: LocalServer,
) -> None:
    # A bare RestClient sends no client/config: the server's 401 invalid_token makes it
    # exchange the key and replay the request, once; later requests carry the JWT.
    with RestClient(base_url=jwt_server.url, api_key=KEY) as rest:
        assert rest.list_training_runs().result(10).training_runs == []
        assert rest.list_training_runs().result(10).training_runs == []
    assert _statuses(jwt_server, "/training_runs") == [401, 200, 200]
    assert _statuses(jwt_server, "/auth/token") == [200]


def test_a_401_without_jwt_mode_is_an_authentication_error(server: LocalServer) -> None:
    with RestClient(base_url=server.url, api_key="tml-wrong-key-0000") as rest:
        with pytest.raises(tinker.AuthenticationError, match="API key"):
            rest.list_training_runs().result(10)


def test_jwt_is_renewed_before_it_expires() -> None:
    with LocalServer(api_key=KEY, client_config={"pjwt_auth_enabled": True},
                     require_jwt=True, jwt_ttl_s=4).in_thread() as server:
        with ServiceClient(base_url=server.url, api_key=KEY) as service:
            rest = service.create_rest_client()
            service.connect().result(10)
            deadline = time.monotonic() + 15
            while len(_statuses(server, "/auth/token")) < 3 and time.monotonic() < deadline:
                rest.list_training_runs().result(10)  # each must succeed, token old or new
                time.sleep(0.25)
        assert _statuses(server, "/auth/token") == [200, 200, 200]
        assert 401 not in [r.status for r in server.requests]


def test_a_revoked_jwt_is_replaced_and_the_request_replayed(jwt_server: LocalServer) -> None:
    with ServiceClient(base_url=jwt_server.url, api_key=KEY) as service:
        service.connect().result(10)  # the handshake: JWT mode from the start
        rest = service.create_rest_client()
        rest.list_training_runs().result(10)
        jwt_server.context.auth.revoke_tokens()
        assert rest.list_training_runs().result(10).training_runs == []
    runs = _statuses(jwt_server, "/training_runs")
    assert runs == [200, 401, 200]
    assert _statuses(jwt_server, "/auth/token") == [200, 200]


def test_credential_command_supplies_the_key(
    jwt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(KEY))
    with ServiceClient(base_url=jwt_server.url) as service:
        assert service.create_rest_client().list_training_runs().result(10).training_runs == []
    assert _statuses(jwt_server, "/auth/token") == [200]


def test_credential_command_needs_a_jwt_server(
    server: LocalServer, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(api_key))
    with ServiceClient(base_url=server.url) as service:
        with pytest.raises(ConfigurationError, match="JWT mode"):
            service.connect().result(10)


def test_a_failing_credential_command_says_why_without_its_output(
    jwt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD",
                       _print_command("tml-half-printed-secret", status=3, stderr="vault locked"))
    with ServiceClient(base_url=jwt_server.url) as service:
        with pytest.raises(ConfigurationError, match=r"status 3.*vault locked") as info:
            service.connect().result(10)
    assert "half-printed" not in str(info.value)
    assert jwt_server.requests == []


def _store(home: Path, data: object) -> Path:
    path = home / ".tinker" / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_key_stored_by_the_cli_is_used(
    server: LocalServer, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _store(tmp_path, {"version": 1, "default": "k1",
                      "keys": {"k1": {"type": "manual", "key": api_key, "name": "laptop"}}})
    with RestClient(base_url=server.url) as rest:
        assert rest.health_check().result(10)
        rest.list_training_runs().result(10)
    # An explicit key or TINKER_API_KEY still wins over the stored one.
    monkeypatch.setenv("TINKER_API_KEY", "tml-wrong-key-0000")
    with RestClient(base_url=server.url) as rest:
        with pytest.raises(tinker.AuthenticationError):
            rest.list_training_runs().result(10)


def test_a_malformed_credentials_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = _store(tmp_path, "{not json")
    with pytest.raises(ConfigurationError, match=str(path)):
        RestClient(base_url="http://127.0.0.1:9")


CHILD = """
import base64, pickle
import tinker_async as tinker
sc = pickle.loads(base64.b64decode({blob!r}))
r = sc.sample(tinker.ModelInput.from_ints([72, 105]), 1, tinker.SamplingParams(max_tokens=2)).result(30)
print("TOKENS", len(r.sequences[0].tokens))
"""


def test_a_pickled_sampling_client_gets_its_own_jwt(
    jwt_server: LocalServer, run_script: Callable[..., str]
) -> None:
    with ServiceClient(base_url=jwt_server.url, api_key=KEY) as service:
        sampler = service.create_sampling_client(base_model=MODEL).result(10)
        blob = pickle.dumps(sampler)
        assert KEY.encode() not in blob and b"eyJ" not in blob
        out = run_script(CHILD.format(blob=base64.b64encode(blob).decode()),
                         env={"TINKER_API_KEY": KEY})
        assert "TOKENS 2" in out
    # The child skipped client/config (the flags came in the pickle) and exchanged its key.
    assert _statuses(jwt_server, "/auth/token") == [200, 200]
    assert _statuses(jwt_server, "/client/config") == [200]
