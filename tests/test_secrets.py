"""The API key never reaches a log line, an exception, a repr or a pickle."""

from __future__ import annotations

import logging
import pickle

import pytest

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
        client.list_training_runs().result(10)
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
        client.connect().result(10)
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert SECRET.encode() not in pickle.dumps(info.value)
    client.close().result(10)
