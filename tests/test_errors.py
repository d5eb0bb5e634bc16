"""Every error status becomes its typed error, with status, message and request id."""

from __future__ import annotations

import pickle

import pytest

from tinker_async import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BillingError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RestClient,
    UnprocessableEntityError,
)
from tinker_async.local import LocalServer


def _client(srv: LocalServer, key: str, **kw: object) -> RestClient:
    return RestClient(base_url=srv.url, api_key=key, max_retries=0, **kw)


@pytest.mark.parametrize(
    "status, error_type",
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, BillingError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (410, APIStatusError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (503, InternalServerError),
    ],
)
def test_status_maps_to_type(fresh_server: LocalServer, api_key: str, status: int,
                             error_type: type[APIStatusError]) -> None:
    fresh_server.faults.add(r"/training_runs$", status=status, body={"detail": f"injected {status}"})
    with pytest.raises(error_type) as info:
        _client(fresh_server, api_key).list_training_runs().result(60)
    err = info.value
    assert type(err) is error_type
    assert err.status_code == status
    assert f"injected {status}" in str(err)
    assert "/training_runs" in str(err)
    assert err.request_id  # the server's x-request-id
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is error_type and again.status_code == status and str(again) == str(err)


def test_real_not_found_from_server(fresh_server: LocalServer, api_key: str) -> None:
    with pytest.raises(NotFoundError, match="no-such-run"):
        _client(fresh_server, api_key).get_training_run("no-such-run").result(60)


def test_wrong_key_is_authentication_error(fresh_server: LocalServer) -> None:
    with pytest.raises(AuthenticationError, match="API key"):
        _client(fresh_server, "tml-wrong-key").list_training_runs().result(60)


def test_validation_list_becomes_readable(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(
        r"/training_runs$",
        status=422,
        body={"detail": [{"loc": ["body", "limit"], "msg": "must be >= 1", "type": "value_error"},
                         {"loc": ["query", "offset"], "msg": "not an int", "type": "type_error"}]},
    )
    with pytest.raises(UnprocessableEntityError) as info:
        _client(fresh_server, api_key).list_training_runs().result(60)
    assert "limit: must be >= 1" in str(info.value)
    assert "query.offset: not an int" in str(info.value)


def test_server_down_is_connection_error_quickly() -> None:
    client = RestClient(base_url="http://127.0.0.1:9", api_key="tml-x", max_retries=1)
    with pytest.raises(APIConnectionError, match="Cannot connect"):
        client.list_training_runs().result(60)


def test_bad_input_is_rejected_before_sending(fresh_server: LocalServer, api_key: str) -> None:
    client = _client(fresh_server, api_key)
    with pytest.raises(InvalidRequestError, match="limit"):
        client.list_training_runs(limit=0).result(60)
    with pytest.raises(InvalidRequestError, match="training_run_id"):
        client.get_training_run("").result(60)
    with pytest.raises(ValueError, match="tinker://"):
        client.publish_checkpoint_from_tinker_path("not-a-path").result(60)
    with pytest.raises(InvalidRequestError, match="ttl_seconds"):
        client.set_checkpoint_ttl_from_tinker_path("tinker://r:train:0/weights/a", -5).result(60)
    assert fresh_server.count(r"/api/v1/") == 0
