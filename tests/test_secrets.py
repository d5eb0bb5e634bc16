"""The API key never reaches a log line, an exception, a repr or a pickle."""

from __future__ import annotations

import base64
import logging
import pickle
from collections.abc import Callable

import pytest

import tinker_async as tinker
from tinker_async import APIError, AuthenticationError, RestClient, RetryPolicy, ServiceClient
from tinker_async.local import LocalServer

SECRET = "tml-never-show-me-0000"


def test_key_absent_from_logs_errors_and_pickles(
    fresh_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # the server (wrongly) echoes the key back in its error body
    fresh_server.faults.add(r"/training_runs$", status=503, count=2,
                            body={"detail": f"upstream rejected key {SECRET}"})
    fresh_server.faults.add(r"/training_runs$", status=400,
                            body={"detail": f"bad key {SECRET}"})
    client = RestClient(base_url=fresh_server.url, api_key=SECRET,
                        retry=RetryPolicy(max_retries=3, base_delay=0.01))
    with pytest.raises(APIError) as info:
        client.list_training_runs().result(60)
    err = info.value
    assert "***" in str(err)
    for text in (str(err), repr(err), repr(err.body), caplog.text, repr(client)):
        assert SECRET not in text
    assert SECRET.encode() not in pickle.dumps(err)
    assert SECRET not in repr(pickle.loads(pickle.dumps(err)).body)


def test_rejected_key_is_not_repeated_back(
    fresh_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = ServiceClient(base_url=fresh_server.url, api_key=SECRET)
    with pytest.raises(AuthenticationError) as info:
        client.connect().result(60)
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert SECRET.encode() not in pickle.dumps(info.value)
    client.close().result(60)


def _copies_and_blobs(sc: tinker.SamplingClient, key: str) -> list[bytes]:
    """Every form a SamplingClient takes to reach another process."""
    handle = sc.get_sampler_handle()
    blobs = [pickle.dumps(sc, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    blobs += [handle.encode(), base64.urlsafe_b64decode(handle)]
    # Copies made here (joining through this process's client, or with a key of their
    # own) pickle without it too.
    blobs.append(pickle.dumps(pickle.loads(blobs[-3])))
    blobs.append(pickle.dumps(tinker.SamplingClient.from_sampler_handle(handle, api_key=key)))
    try:  # what Ray (and multiprocessing's reducers in some setups) use
        from ray import cloudpickle
    except ImportError:
        cloudpickle = None
    if cloudpickle is not None:
        blobs.append(cloudpickle.dumps(sc))
    return blobs


@pytest.mark.parametrize("given", ["argument", "configure", "environment"])
def test_a_sampling_client_and_its_handle_never_carry_the_key(
    fresh_server: LocalServer, api_key: str, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    if given == "environment":
        monkeypatch.setenv("TINKER_API_KEY", api_key)
    elif given == "configure":
        tinker.configure(api_key=api_key)
    try:
        with ServiceClient(base_url=fresh_server.url,
                           api_key=api_key if given == "argument" else None,
                           default_headers_overrides={"X-Api-Key-Extra": api_key}) as svc:
            sc = svc.create_sampling_client(base_model="local/byte-lm").result(60)
            sc.sample(tinker.ModelInput.from_ints([72]), 1,
                      tinker.SamplingParams(max_tokens=2)).result(60)
            for blob in _copies_and_blobs(sc, api_key):
                assert api_key.encode() not in blob
    finally:
        tinker.configure(api_key=None)


def test_credential_errors_never_repeat_the_key(
    fresh_server: LocalServer, api_key: str, run_script: Callable[..., str]
) -> None:
    bad = "tml-has a space"
    with pytest.raises(tinker.ConfigurationError) as info:
        tinker.configure(api_key=bad)
    assert bad not in str(info.value) and bad not in repr(info.value)
    # A copy without a key fails at its first call, and says how to give one.
    with ServiceClient(base_url=fresh_server.url, api_key=api_key) as svc:
        sc = svc.create_sampling_client(base_model="local/byte-lm").result(60)
        blob = base64.b64encode(pickle.dumps(sc)).decode()
        out = run_script(
            "import base64, pickle\n"
            "import tinker_async as tinker\n"
            f"sc = pickle.loads(base64.b64decode({blob!r}))\n"
            "print('UNPICKLED', repr(sc))\n"
            "try:\n"
            "    sc.sample(tinker.ModelInput.from_ints([72]), 1,\n"
            "              tinker.SamplingParams(max_tokens=2)).result(60)\n"
            "except tinker.ConfigurationError as exc:\n"
            "    print('ERROR', exc)\n")
    assert "UNPICKLED SamplingClient(" in out
    error = next(line for line in out.splitlines() if line.startswith("ERROR "))
    assert "TINKER_API_KEY" in error and "configure(api_key=...)" in error
    assert api_key not in out
