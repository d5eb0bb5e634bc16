"""Settings are checked before any request: clear ConfigurationErrors, keys never shown."""

from __future__ import annotations

import pickle

import pytest

import tinker_async as tinker
from tinker_async import ConfigurationError, RestClient, ServiceClient
from tinker_async.service import family_of


def test_missing_key_is_a_clear_error_before_any_request() -> None:
    with pytest.raises(ConfigurationError, match="TINKER_API_KEY"):
        ServiceClient(base_url="http://127.0.0.1:9")


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("", "empty"),
        ("127.0.0.1:8000", "not an http"),
        ("ftp://host", "not an http"),
        ("http://", "not an http"),
        ("http://host:99999", "invalid port"),
        ("http://host/?q=1", "query"),
    ],
)
def test_malformed_base_url(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        RestClient(base_url=url, api_key="tml-x")


@pytest.mark.parametrize("key", ["tml-has space", "tml-newline\n-x", "tml-ünïcode", "   "])
def test_malformed_key(key: str) -> None:
    with pytest.raises(ConfigurationError):
        RestClient(base_url="http://127.0.0.1:9", api_key=key)


def test_official_server_wants_a_tinker_key() -> None:
    with pytest.raises(ConfigurationError, match="tml-"):
        RestClient(base_url="https://tinker.thinkingmachines.dev/services/x", api_key="abc")
    # other servers take any well-formed key
    RestClient(base_url="http://127.0.0.1:9", api_key="slime-dev-key")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:1234/")
    monkeypatch.setenv("TINKER_API_KEY", "tml-from-env")
    monkeypatch.setenv("TINKER_PROJECT_ID", "proj-7")
    client = ServiceClient()
    config = family_of(client).transport.config
    assert config.base_url == "http://127.0.0.1:1234"
    assert config.project_id == "proj-7"
    assert client.dialect == "official"


def test_twinkle_environment_selects_twinkle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINKLE_SERVER_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("TWINKLE_SERVER_TOKEN", "EMPTY_TOKEN")
    client = RestClient()
    assert client._transport.dialect.name == "twinkle"
    assert client._transport.url("training_runs") == "http://127.0.0.1:8000/twinkle/training_runs"


def test_unknown_dialect_and_options() -> None:
    with pytest.raises(ConfigurationError, match="dialect"):
        RestClient(base_url="http://127.0.0.1:9", api_key="k", dialect="nope")
    with pytest.raises(ConfigurationError, match="timeout"):
        RestClient(base_url="http://127.0.0.1:9", api_key="k", timeout=-1)
    with pytest.warns(FutureWarning, match="bogus"):
        ServiceClient(base_url="http://127.0.0.1:9", api_key="k", bogus=1)


def test_key_never_in_repr_or_pickle() -> None:
    secret = "tml-super-secret-value-42"
    client = ServiceClient(base_url="http://127.0.0.1:9", api_key=secret)
    rest = client.create_rest_client()
    family = family_of(client)
    config = family.transport.config
    for obj in (client, rest, family, family.transport, config, config.api_key):
        assert secret not in repr(obj)
        assert secret not in str(obj)
    for obj in (client, rest, family, config.api_key):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    assert secret.encode() not in pickle.dumps(config, protocol=0)


def test_unpickled_config_reads_key_from_its_own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    client = ServiceClient(base_url="http://127.0.0.1:9", api_key="tml-parent-key")
    data = pickle.dumps(family_of(client).transport.config)
    # Without a key here, unpickling works; the first request made with it fails instead
    # (tests/test_multiprocessing.py shows that error).
    assert pickle.loads(data).api_key.get() == ""
    monkeypatch.setenv("TINKER_API_KEY", "tml-child-key")
    assert pickle.loads(data).api_key.get() == "tml-child-key"


def test_public_names() -> None:
    for name in ("ServiceClient", "TrainingClient", "SamplingClient", "RestClient", "AdminClient",
                 "APIFuture", "TinkerError", "APIError", "APIStatusError", "BadRequestError",
                 "RateLimitError", "RequestFailedError", "types", "__version__",
                 "Datum", "ModelInput", "EncodedTextChunk", "TensorData", "SamplingParams",
                 "AdamParams", "ParsedCheckpointTinkerPath"):
        assert hasattr(tinker, name), name
    assert tinker.EncodedTextChunk is tinker.types.EncodedTextChunk
    # __all__, the lazy-load table and the TYPE_CHECKING imports list the names apart:
    # every advertised name must really resolve.
    for name in tinker.__all__:
        assert getattr(tinker, name) is not None, name
