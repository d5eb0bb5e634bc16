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
        assert rest.whoami().result(10).email == "local@localhost"
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


OFFICIAL = "https://tinker.thinkingmachines.dev/services/tinker-prod"


def test_key_stored_by_the_cli_is_used_for_the_tinker_service_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _store(tmp_path, {"version": 1, "default": "k1",
                      "keys": {"k1": {"type": "manual", "key": "tml-stored-key", "name": "x"}}})
    RestClient(base_url=OFFICIAL).close()  # found: no "No API key" error
    # Never sent to another server: a self-hosted or Twinkle one needs its own key.
    for url in ("http://127.0.0.1:9", "https://tinker.example.com"):
        with pytest.raises(ConfigurationError, match="Tinker service only"):
            RestClient(base_url=url)
    monkeypatch.setenv("TWINKLE_SERVER_URL", "https://twinkle.thinkingmachines.dev")
    with pytest.raises(ConfigurationError, match="No API key"):
        RestClient()
    monkeypatch.delenv("TWINKLE_SERVER_URL")
    # A file whose default is unset is simply no key.
    _store(tmp_path, {"version": 1, "default": None, "keys": {}})
    with pytest.raises(ConfigurationError, match="No API key"):
        RestClient(base_url=OFFICIAL)


def test_a_malformed_credentials_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = _store(tmp_path, "{not json")
    with pytest.raises(ConfigurationError, match=str(path)):
        RestClient(base_url=OFFICIAL)


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


def test_renewal_runs_in_the_background_while_the_token_is_valid() -> None:
    # Tokens live 8 s: renewal is due after about 4 s, and requests wait for it only in
    # the last 2 s. With auth/token failing from then on, requests go on with the token
    # they have, and each failed renewal is retried later rather than on every request.
    with LocalServer(api_key=KEY, client_config={"pjwt_auth_enabled": True},
                     require_jwt=True, jwt_ttl_s=8).in_thread() as server:
        with RestClient(base_url=server.url, api_key=KEY) as rest:
            rest.list_training_runs().result(10)  # 401, exchange, replay
            server.faults.add(r"/auth/token$", status=503, count=None)
            time.sleep(4.6)
            for _ in range(5):
                assert rest.list_training_runs().result(10).training_runs == []
        runs = _statuses(server, "/training_runs")
        assert runs[0] == 401 and runs[1:] == [200] * 6
        assert 1 <= _statuses(server, "/auth/token").count(503) <= 2  # retried, not per request


def test_a_failed_exchange_at_the_handshake_is_reported_as_such(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with LocalServer(api_key=KEY, client_config={"pjwt_auth_enabled": True},
                     require_jwt=True).in_thread() as server:
        server.faults.add(r"/auth/token$", status=403, count=None)
        monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(KEY))
        with ServiceClient(base_url=server.url) as service:
            with pytest.raises(tinker.PermissionDeniedError, match="auth/token"):
                service.connect().result(10)


def test_credential_command_output_is_scrubbed_and_checked(
    jwt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tml-printed-by-command-42"
    jwt_server.faults.add(r"/client/config$", status=400,
                          body={"detail": f"the key {secret} is not allowed"})
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(secret))
    with ServiceClient(base_url=jwt_server.url) as service:
        with pytest.raises(tinker.BadRequestError) as info:
            service.connect().result(10)
    assert secret not in str(info.value) and "***" in str(info.value)
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(f"note: key follows\n{KEY}"))
    with ServiceClient(base_url=jwt_server.url) as service:
        with pytest.raises(ConfigurationError, match="credential alone") as bad:
            service.connect().result(10)
    assert KEY not in str(bad.value)


def test_a_cancelled_credential_command_leaves_no_process(
    jwt_server: LocalServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import asyncio
    import os

    pid_file = tmp_path / "pid"
    # The command's own child holds the pipes, as a slow helper program would.
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD",
                       f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait")

    async def main() -> None:
        async with ServiceClient(base_url=jwt_server.url) as service:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(service.connect_async(), 0.5)

    asyncio.run(main())
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the credential command's child was left running")


def test_copies_of_a_sampler_share_one_joining_client(jwt_server: LocalServer) -> None:
    with ServiceClient(base_url=jwt_server.url, api_key=KEY,
                       default_headers_overrides={"X-Team": "a",
                                                  "CF-Access-Client-Secret": "s3cr3t"}) as service:
        sampler = service.create_sampling_client(base_model=MODEL).result(10)
        handle = sampler.get_sampler_handle()
        assert b"s3cr3t" not in pickle.dumps(sampler)
        assert "s3cr3t" not in base64.urlsafe_b64decode(handle).decode()
        copies = [tinker.SamplingClient.from_sampler_handle(handle, api_key=KEY)
                  for _ in range(3)]
        for copy in copies:
            copy.sample(tinker.ModelInput.from_ints([72]), 1,
                        tinker.SamplingParams(max_tokens=1)).result(30)
    # The original's exchange, then one for all three copies (one client joined for them).
    assert _statuses(jwt_server, "/auth/token") == [200, 200]
    asamples = [r for r in jwt_server.requests if r.path.endswith("/asample")]
    assert [r.headers.get("X-Team") for r in asamples] == ["a"] * 3
    assert all("CF-Access-Client-Secret" not in r.headers for r in asamples)


COMMAND_CHILD = """
import base64, pickle
import tinker_async as tinker
sc = pickle.loads(base64.b64decode({blob!r}))
try:
    sc.sample(tinker.ModelInput.from_ints([72]), 1, tinker.SamplingParams(max_tokens=1)).result(30)
except tinker.ConfigurationError as exc:
    print("REFUSED", exc)
"""


def test_a_copy_refuses_a_credential_command_on_a_server_without_jwt_mode(
    server: LocalServer, api_key: str, run_script: Callable[..., str]
) -> None:
    with ServiceClient(base_url=server.url, api_key=api_key) as service:
        blob = pickle.dumps(service.create_sampling_client(base_model=MODEL).result(10))
    out = run_script(COMMAND_CHILD.format(blob=base64.b64encode(blob).decode()),
                     env={"TINKER_CREDENTIAL_CMD": _print_command(api_key)})
    assert "REFUSED" in out and "JWT mode" in out, out
