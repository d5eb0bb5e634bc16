"""Where the credential comes from, and JWT mode (``pjwt_auth_enabled``).

The JWT-mode servers here are strict (``require_jwt=True``): the API key itself opens only
``client/config`` and ``auth/token``, so every other request succeeding proves it carried
the JWT.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _waiting import wait_until, wait_until_async

import tinker_async as tinker
import tinker_async._auth
from tinker_async import ConfigurationError, RestClient, ServiceClient
from tinker_async.local import LocalServer
from tinker_async.service import family_of

KEY = "tml-auth-test-0123456789"
MODEL = "local/byte-lm"


@pytest.fixture
def jwt_server() -> Iterator[LocalServer]:
    with LocalServer(api_key=KEY, client_config={"pjwt_auth_enabled": True},
                     require_jwt=True, jwt_ttl_s=3600).in_thread() as srv:
        yield srv


class _Clock:
    """The wall clock the library times JWT renewal by, moved by hand.

    ``tinker_async._auth`` reads ``time.time()``; the tests give it this clock instead, so
    that renewal points are reached by ``advance``, not by sleeping. The server keeps the
    real clock, so its tokens (valid an hour) never expire under these tests.
    """

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(tinker_async._auth, "time", fake)
    return fake


def _statuses(server: LocalServer, pattern: str) -> list[int | None]:
    return [r.status for r in server.requests if r.path.endswith(pattern)]


def _print_command(text: str, status: int = 0, stderr: str = "") -> str:
    code = f"import sys; print({text!r}); print({stderr!r}, file=sys.stderr); sys.exit({status})"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def test_jwt_mode_exchanges_the_key_once_and_sends_the_jwt(jwt_server: LocalServer) -> None:
    with ServiceClient(base_url=jwt_server.url, api_key=KEY) as service:
        sampler = service.create_sampling_client(base_model=MODEL).result(60)
        result = sampler.sample(tinker.ModelInput.from_ints([104, 105]), 1,
                                tinker.SamplingParams(max_tokens=2)).result(60)
        assert len(result.sequences[0].tokens) == 2
        rest = service.create_rest_client()
        assert rest.list_training_runs().result(60).training_runs == []
        # whoami reads the JWT the server gave (the key itself is not a JWT).
        assert rest.whoami().result(60).email == "local@localhost"
    assert _statuses(jwt_server, "/auth/token") == [200]
    assert all(r.status is None or r.status < 400 for r in jwt_server.requests), [
        (r.path, r.status) for r in jwt_server.requests]


def test_a_client_without_the_handshake_learns_jwt_mode_from_a_401(
    jwt_server: LocalServer,
) -> None:
    # A bare RestClient sends no client/config: the server's 401 invalid_token makes it
    # exchange the key and replay the request, once; later requests carry the JWT.
    with RestClient(base_url=jwt_server.url, api_key=KEY) as rest:
        assert rest.list_training_runs().result(60).training_runs == []
        assert rest.list_training_runs().result(60).training_runs == []
    assert _statuses(jwt_server, "/training_runs") == [401, 200, 200]
    assert _statuses(jwt_server, "/auth/token") == [200]


def test_a_401_without_jwt_mode_is_an_authentication_error(server: LocalServer) -> None:
    with RestClient(base_url=server.url, api_key="tml-wrong-key-0000") as rest:
        with pytest.raises(tinker.AuthenticationError, match="API key"):
            rest.list_training_runs().result(60)


def test_jwt_is_renewed_before_it_expires(
    jwt_server: LocalServer, clock: _Clock
) -> None:
    # Tokens live 3600 s: renewal is due at 45-55% of that (in the background), and
    # requests wait for it only in the last minute. The client's clock is moved by hand.
    with ServiceClient(base_url=jwt_server.url, api_key=KEY) as service:
        rest = service.create_rest_client()
        service.connect().result(60)  # token 1
        # To see when the client holds token 2 (tokens minted in the same second are
        # equal, so the token text cannot tell).
        credentials = family_of(service).transport.credentials
        clock.advance(1000)  # 28%: nothing to do
        rest.list_training_runs().result(60)
        assert len(_statuses(jwt_server, "/auth/token")) == 1
        clock.advance(1000)  # 56%: renewal starts in the background; this request goes on
        rest.list_training_runs().result(60)
        # The renewal is done once the client holds token 2 (the server's count alone is
        # not enough: the client may not have read the answer yet, and token 2's
        # lifetime is timed from when it does).
        wait_until(lambda: credentials._background is not None
                   and credentials._background.done(), "the background renewal")
        assert len(_statuses(jwt_server, "/auth/token")) == 2
        clock.advance(3590)  # past token 2's last minute: the request waits for token 3
        rest.list_training_runs().result(60)
        assert len(_statuses(jwt_server, "/auth/token")) == 3
    assert _statuses(jwt_server, "/auth/token") == [200, 200, 200]
    assert 401 not in [r.status for r in jwt_server.requests]


def test_a_revoked_jwt_is_replaced_and_the_request_replayed(jwt_server: LocalServer) -> None:
    with ServiceClient(base_url=jwt_server.url, api_key=KEY) as service:
        service.connect().result(60)  # the handshake: JWT mode from the start
        rest = service.create_rest_client()
        rest.list_training_runs().result(60)
        jwt_server.context.auth.revoke_tokens()
        assert rest.list_training_runs().result(60).training_runs == []
    runs = _statuses(jwt_server, "/training_runs")
    assert runs == [200, 401, 200]
    assert _statuses(jwt_server, "/auth/token") == [200, 200]


def test_credential_command_supplies_the_key(
    jwt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(KEY))
    with ServiceClient(base_url=jwt_server.url) as service:
        assert service.create_rest_client().list_training_runs().result(60).training_runs == []
    assert _statuses(jwt_server, "/auth/token") == [200]


def test_credential_command_needs_a_jwt_server(
    server: LocalServer, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(api_key))
    with ServiceClient(base_url=server.url) as service:
        with pytest.raises(ConfigurationError, match="JWT mode"):
            service.connect().result(60)


def test_a_failing_credential_command_says_why_without_its_output(
    jwt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD",
                       _print_command("tml-half-printed-secret", status=3, stderr="vault locked"))
    with ServiceClient(base_url=jwt_server.url) as service:
        with pytest.raises(ConfigurationError, match=r"status 3.*vault locked") as info:
            service.connect().result(60)
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
r = sc.sample(tinker.ModelInput.from_ints([72, 105]), 1, tinker.SamplingParams(max_tokens=2)).result(60)
print("TOKENS", len(r.sequences[0].tokens))
"""


def test_a_pickled_sampling_client_gets_its_own_jwt(
    jwt_server: LocalServer, run_script: Callable[..., str]
) -> None:
    with ServiceClient(base_url=jwt_server.url, api_key=KEY) as service:
        sampler = service.create_sampling_client(base_model=MODEL).result(60)
        blob = pickle.dumps(sampler)
        assert KEY.encode() not in blob and b"eyJ" not in blob
        out = run_script(CHILD.format(blob=base64.b64encode(blob).decode()),
                         env={"TINKER_API_KEY": KEY})
        assert "TOKENS 2" in out
    # The child skipped client/config (the flags came in the pickle) and exchanged its key.
    assert _statuses(jwt_server, "/auth/token") == [200, 200]
    assert _statuses(jwt_server, "/client/config") == [200]


def test_renewal_runs_in_the_background_while_the_token_is_valid(
    jwt_server: LocalServer, clock: _Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # Tokens live 3600 s. With auth/token failing once renewal is due, requests go on with
    # the token they have; a failed renewal is retried a minute later (not per request);
    # requests wait for it in the token's last minute, and fail once it has expired.
    def failed_renewals() -> int:
        return _statuses(jwt_server, "/auth/token").count(503)

    def renewal_failed(n: int) -> None:
        wait_until(lambda: sum("renewing the JWT failed" in r.getMessage()
                               for r in caplog.records) == n, f"failed renewal {n}")
        # One round trip through the client's loop: the failed renewal has finished there
        # (it set its retry time from the clock before this request could start).
        assert rest.list_training_runs().result(60).training_runs == []

    with caplog.at_level(logging.WARNING, logger="tinker_async"), \
            RestClient(base_url=jwt_server.url, api_key=KEY, max_retries=0) as rest:
        rest.list_training_runs().result(60)  # 401, exchange, replay: token 1
        jwt_server.faults.add(r"/auth/token$", status=503, count=None)
        clock.advance(2000)  # renewal due (45-55%)
        for _ in range(5):
            assert rest.list_training_runs().result(60).training_runs == []
        renewal_failed(1)
        assert failed_renewals() == 1  # one background attempt, not one per request
        clock.advance(30)
        assert rest.list_training_runs().result(60).training_runs == []
        assert failed_renewals() == 1  # within the minute: not tried again
        clock.advance(31)  # a minute after the failure: tried again, in the background
        assert rest.list_training_runs().result(60).training_runs == []
        renewal_failed(2)
        assert failed_renewals() == 2
        clock.advance(1500)  # the token's last minute: the request waits for a renewal,
        assert rest.list_training_runs().result(60).training_runs == []  # which fails
        assert failed_renewals() == 3  # and it goes on with the still-valid token
        clock.advance(60)  # expired: the failed renewal is the request's error
        with pytest.raises(tinker.InternalServerError):
            rest.list_training_runs().result(60)
        assert failed_renewals() == 4
    runs = _statuses(jwt_server, "/training_runs")
    assert runs[0] == 401 and runs[1:] == [200] * 11  # none sent once expired


def test_a_failed_exchange_at_the_handshake_is_reported_as_such(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with LocalServer(api_key=KEY, client_config={"pjwt_auth_enabled": True},
                     require_jwt=True).in_thread() as server:
        server.faults.add(r"/auth/token$", status=403, count=None)
        monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(KEY))
        with ServiceClient(base_url=server.url) as service:
            with pytest.raises(tinker.PermissionDeniedError, match="auth/token"):
                service.connect().result(60)


def test_credential_command_output_is_scrubbed_and_checked(
    jwt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tml-printed-by-command-42"
    jwt_server.faults.add(r"/client/config$", status=400,
                          body={"detail": f"the key {secret} is not allowed"})
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(secret))
    with ServiceClient(base_url=jwt_server.url) as service:
        with pytest.raises(tinker.BadRequestError) as info:
            service.connect().result(60)
    assert secret not in str(info.value) and "***" in str(info.value)
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", _print_command(f"note: key follows\n{KEY}"))
    with ServiceClient(base_url=jwt_server.url) as service:
        with pytest.raises(ConfigurationError, match="credential alone") as bad:
            service.connect().result(60)
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

    def started() -> bool:
        return pid_file.exists() and pid_file.read_text().endswith("\n")

    async def main() -> None:
        async with ServiceClient(base_url=jwt_server.url) as service:
            connecting = asyncio.ensure_future(service.connect_async())
            # Cancelled once the command runs (its child is up), however slow that is.
            await wait_until_async(lambda: started() or connecting.done(), "the command")
            assert not connecting.done()
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting

    asyncio.run(main())
    pid = int(pid_file.read_text())

    def ended() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_until(ended, "the credential command's child to end (it was left running)")
    except AssertionError:
        os.kill(pid, 9)
        raise


def test_copies_of_a_sampler_share_one_joining_client(jwt_server: LocalServer) -> None:
    with ServiceClient(base_url=jwt_server.url, api_key=KEY,
                       default_headers_overrides={"X-Team": "a",
                                                  "CF-Access-Client-Secret": "s3cr3t"}) as service:
        sampler = service.create_sampling_client(base_model=MODEL).result(60)
        handle = sampler.get_sampler_handle()
        assert b"s3cr3t" not in pickle.dumps(sampler)
        assert "s3cr3t" not in base64.urlsafe_b64decode(handle).decode()
        copies = [tinker.SamplingClient.from_sampler_handle(handle, api_key=KEY)
                  for _ in range(3)]
        for copy in copies:
            copy.sample(tinker.ModelInput.from_ints([72]), 1,
                        tinker.SamplingParams(max_tokens=1)).result(60)
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
    sc.sample(tinker.ModelInput.from_ints([72]), 1, tinker.SamplingParams(max_tokens=1)).result(60)
except tinker.ConfigurationError as exc:
    print("REFUSED", exc)
"""


def test_a_copy_refuses_a_credential_command_on_a_server_without_jwt_mode(
    server: LocalServer, api_key: str, run_script: Callable[..., str]
) -> None:
    with ServiceClient(base_url=server.url, api_key=api_key) as service:
        blob = pickle.dumps(service.create_sampling_client(base_model=MODEL).result(60))
    out = run_script(COMMAND_CHILD.format(blob=base64.b64encode(blob).decode()),
                     env={"TINKER_CREDENTIAL_CMD": _print_command(api_key)})
    assert "REFUSED" in out and "JWT mode" in out, out
