"""One retry policy: 429 (honouring Retry-After), 408/409/5xx and broken connections."""

from __future__ import annotations

import pytest

from tinker_async import (
    BadRequestError,
    InternalServerError,
    RateLimitError,
    RestClient,
    RetryPolicy,
)
from tinker_async.local import LocalServer


def _client(srv: LocalServer, key: str, retries: int = 4) -> RestClient:
    return RestClient(base_url=srv.url, api_key=key,
                      retry=RetryPolicy(max_retries=retries, max_429_retries=retries,
                                        base_delay=0.01, max_delay=0.05))


def test_429_with_retry_after_is_retried(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/training_runs$", status=429, count=2, retry_after=0.05)
    page = _client(fresh_server, api_key).list_training_runs().result(60)
    assert page.training_runs is not None
    assert fresh_server.count(r"/training_runs$") == 3


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
def test_transient_statuses_are_retried(fresh_server: LocalServer, api_key: str, status: int) -> None:
    fresh_server.faults.add(r"/training_runs$", status=status, count=3)
    _client(fresh_server, api_key).list_training_runs().result(60)
    assert fresh_server.count(r"/training_runs$") == 4


def test_retries_run_out(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/training_runs$", status=503, count=10)
    with pytest.raises(InternalServerError):
        _client(fresh_server, api_key, retries=2).list_training_runs().result(60)
    assert fresh_server.count(r"/training_runs$") == 3


def test_client_errors_are_not_retried(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/training_runs$", status=400, count=5)
    with pytest.raises(BadRequestError):
        _client(fresh_server, api_key).list_training_runs().result(60)
    assert fresh_server.count(r"/training_runs$") == 1


def test_dropped_connection_is_retried(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/training_runs$", drop_connection=True, count=2)
    _client(fresh_server, api_key).list_training_runs().result(60)
    assert fresh_server.count(r"/training_runs$") >= 3


def test_idempotency_key_is_kept_across_retries(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/cleanup_futures$", status=503, count=2)
    _client(fresh_server, api_key).cleanup_futures(1).result(60)
    posts = [r for r in fresh_server.requests if r.path.endswith("/cleanup_futures")]
    assert len(posts) == 3
    keys = {r.headers.get("X-Idempotency-Key") for r in posts}
    assert len(keys) == 1 and None not in keys
    assert [r.headers.get("x-stainless-retry-count") for r in posts] == [None, "1", "2"]


def test_retry_after_beyond_cap_falls_back_to_backoff(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/training_runs$", status=429, count=1, retry_after=3600)
    _client(fresh_server, api_key).list_training_runs().result(60)
    assert fresh_server.count(r"/training_runs$") == 2


def test_rate_limit_error_after_retries(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/training_runs$", status=429, count=5, retry_after=0.01)
    with pytest.raises(RateLimitError):
        _client(fresh_server, api_key, retries=1).list_training_runs().result(60)
    assert fresh_server.count(r"/training_runs$") == 2


def test_submits_carry_unique_keys_and_polls_none(fresh_server: LocalServer, api_key: str) -> None:
    from tinker_async import ModelInput, SamplingParams, ServiceClient

    with ServiceClient(base_url=fresh_server.url, api_key=api_key) as svc:
        sc = svc.create_sampling_client(base_model="local/byte-lm").result(60)
        for _ in range(3):
            sc.sample(ModelInput.from_ints([72, 105]), 1, SamplingParams(max_tokens=2)).result(60)
    submits = [r for r in fresh_server.requests if r.path.endswith("/asample")]
    polls = [r for r in fresh_server.requests if r.path.endswith(("/retrieve_future",
                                                                   "/retrieve_futures"))]
    keys = [r.headers.get("X-Idempotency-Key") for r in submits]
    assert len(submits) == 3 and None not in keys and len(set(keys)) == 3
    assert polls and all("X-Idempotency-Key" not in r.headers for r in polls)


def test_retry_statuses_may_be_any_collection_and_sampling_uses_them(
    fresh_server: LocalServer, api_key: str
) -> None:
    import tinker_async as tinker

    policy = RetryPolicy(retry_statuses={429, 503}, base_delay=0.01, max_delay=0.05)  # type: ignore[arg-type]
    assert policy.retry_statuses == frozenset({429, 503})
    fresh_server.faults.add(r"/asample$", status=503, count=1)
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key, retry=policy) as svc:
        sampler = svc.create_sampling_client(base_model="local/byte-lm").result(60)
        out = sampler.sample(tinker.ModelInput.from_ints([104, 105]), 1,
                             tinker.SamplingParams(max_tokens=2)).result(60)
    assert len(out.sequences[0].tokens) == 2
    assert [r.status for r in fresh_server.requests if r.path.endswith("/asample")] == [503, 200]


def test_a_policy_retries_exactly_its_statuses(fresh_server: LocalServer, api_key: str) -> None:
    from tinker_async import InternalServerError, RestClient

    assert RetryPolicy().should_retry_status(599)  # the default: every 5xx, 408, 409, 429
    only_429 = RetryPolicy(retry_statuses=frozenset({429}), base_delay=0.01, max_delay=0.05)
    fresh_server.faults.add(r"/training_runs$", status=502, count=1)
    client = RestClient(base_url=fresh_server.url, api_key=api_key, retry=only_429)
    with pytest.raises(InternalServerError):
        client.list_training_runs().result(60)  # a 502 is not in the policy: no retry
    assert [r.status for r in fresh_server.requests if r.path.endswith("/training_runs")] == [502]
