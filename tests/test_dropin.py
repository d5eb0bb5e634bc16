"""Official-SDK behaviours beyond names: return kinds, the archive URL calls, queue-state
notices, SamplingClient.create and local telemetry."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import logging
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import tinker_async as tinker
from tinker_async.local import LocalServer
from tinker_async.local._dialects import DIALECTS

MODEL = "local/byte-lm"


def _trained_checkpoint(url: str, api_key: str) -> tuple[tinker.ServiceClient, str, str]:
    service = tinker.ServiceClient(base_url=url, api_key=api_key)
    training = service.create_lora_training_client(MODEL, rank=2).result(60)
    path = training.save_state("ckpt").result(60).path
    return service, training.model_id, path


def test_get_server_capabilities_returns_the_value(server: LocalServer, api_key: str) -> None:
    service = tinker.ServiceClient(base_url=server.url, api_key=api_key)
    caps = service.get_server_capabilities()  # blocks and returns, as the official SDK
    assert MODEL in [m.model_name for m in caps.supported_models]
    service.close().result(60)


def test_whoami_returns_a_future(server: LocalServer, api_key: str) -> None:
    rest = tinker.RestClient(base_url=server.url, api_key=api_key)
    fut = rest.whoami()
    assert isinstance(fut, tinker.APIFuture)
    with pytest.raises(RuntimeError, match="JWT"):  # a plain key is not a JWT
        fut.result(60)


def test_archive_url_points_at_a_tar_of_the_checkpoint(fresh_server: LocalServer,
                                                       api_key: str) -> None:
    service, run_id, path = _trained_checkpoint(fresh_server.url, api_key)
    rest = service.create_rest_client()
    by_path = rest.get_checkpoint_archive_url_from_tinker_path(path).result(60)
    by_ids = rest.get_checkpoint_archive_url(run_id, "weights/ckpt").result(60)
    now = dt.datetime.now(dt.timezone.utc)
    for answer in (by_path, by_ids):
        assert answer.expires > now and answer.expires_at == answer.expires
        with urllib.request.urlopen(answer.url, timeout=30) as resp:  # no credential needed
            data = resp.read()
        names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
        assert names and all(not n.startswith("/") and ".." not in n for n in names)
    with pytest.raises(tinker.NotFoundError) as missing:
        rest.get_checkpoint_archive_url(run_id, "weights/nope").result(60)
    assert not isinstance(missing.value, tinker.UnsupportedByServerError)
    service.close().result(60)


def test_archive_url_on_a_server_without_it_names_the_way_that_works(api_key: str) -> None:
    no_archive = dataclasses.replace(DIALECTS["official"], checkpoint_archive=False)
    with LocalServer(api_key=api_key, dialect=no_archive).in_thread() as srv:
        service, _, path = _trained_checkpoint(srv.url, api_key)
        rest = service.create_rest_client()
        with pytest.raises(tinker.UnsupportedByServerError,
                           match="get_external_weights_urls") as err:
            rest.get_checkpoint_archive_url_from_tinker_path(path).result(60)
        assert isinstance(err.value, tinker.NotFoundError) and err.value.status_code == 404
        service.close().result(60)


def test_queue_state_reaches_on_queue_state_change(
    fresh_server: LocalServer, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    sampler = service.create_sampling_client(base_model=MODEL).result(60)
    seen: list[tuple[tinker.QueueState, str | None]] = []
    original = sampler.on_queue_state_change

    def observe(state: tinker.QueueState, reason: str | None) -> None:
        seen.append((state, reason))
        original(state, reason)

    sampler.on_queue_state_change = observe  # type: ignore[method-assign]
    paused = {"type": "try_again", "request_id": "x", "queue_state": "paused_rate_limit",
              "queue_state_reason": "concurrent LoRA rate limit"}
    fresh_server.faults.add(r"/retrieve_future$", status=200, body=paused, count=2)
    params = tinker.SamplingParams(max_tokens=2)
    prompt = tinker.ModelInput.from_ints([65, 66])
    with caplog.at_level(logging.WARNING, logger="tinker_async"):
        result = sampler.sample(prompt, 1, params).result(60)
    assert len(result.sequences) == 1  # the pause delayed the sample, it did not fail it
    assert seen[:2] == [(tinker.QueueState.PAUSED_RATE_LIMIT, "concurrent LoRA rate limit")] * 2
    assert sampler.queue_state is tinker.QueueState.PAUSED_RATE_LIMIT
    paused_logs = [r for r in caplog.records if "Sampling is paused" in r.getMessage()]
    assert len(paused_logs) == 1  # logged once, not once per answer
    assert "concurrent LoRA rate limit" in paused_logs[0].getMessage()
    service.close().result(60)


def test_sampling_client_create(fresh_server: LocalServer, api_key: str) -> None:
    service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    fut = tinker.SamplingClient.create(service, base_model=MODEL)
    assert isinstance(fut, tinker.APIFuture)
    first = fut.result(60)
    again = tinker.SamplingClient.create(
        service, sampling_session_id=first.sampling_session_id).result(60)
    assert again.sampling_session_id == first.sampling_session_id
    assert again.get_base_model() == MODEL
    prompt = tinker.ModelInput.from_ints([72, 105])
    out = again.sample(prompt, 1, tinker.SamplingParams(max_tokens=2)).result(60)
    assert len(out.sequences) == 1
    service.close().result(60)


def test_get_telemetry_records_locally_and_sends_nothing(fresh_server: LocalServer,
                                                         api_key: str) -> None:
    service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    training = service.create_lora_training_client(MODEL, rank=2).result(60)
    telemetry = service.get_telemetry()
    assert training.get_telemetry() is telemetry
    assert service.create_rest_client().get_telemetry() is telemetry
    telemetry.log("my_event", {"step": 3})
    with pytest.raises(ValueError), telemetry.capture_exceptions():
        raise ValueError("boom")
    asyncio.run(telemetry.log_exception(KeyError("k"), "WARNING"))
    names = [(e.event_name, e.severity) for e in telemetry.events]
    assert names == [("my_event", "INFO"), ("exception", "ERROR"), ("exception", "WARNING")]
    assert telemetry.events[0].session_id == service.session_id
    assert telemetry.events[1].event_data["error_message"] == "boom"
    assert tinker.RestClient(base_url=fresh_server.url, api_key=api_key).get_telemetry().events == []
    assert tinker.AdminClient(base_url=fresh_server.url, api_key=api_key).get_telemetry() is not None
    service.close().result(60)
    assert not [r for r in fresh_server.requests if "telemetry" in r.path]


def test_create_from_state_falls_back_when_the_server_refuses_the_one_call_form(
    api_key: str,
) -> None:
    # Like tuft and skyrl-tx: client/config answers, but load_weights needs a model_id.
    tuft_like = dataclasses.replace(DIALECTS["official"], create_via_load=False)
    with LocalServer(api_key=api_key, dialect=tuft_like).in_thread() as srv:
        service, _, path = _trained_checkpoint(srv.url, api_key)
        restored = [service.create_training_client_from_state(path).result(60),
                    service.create_training_client_from_state_with_optimizer(path).result(60)]
        # No gap in the session's model sequence: a later create still works.
        later = service.create_lora_training_client(MODEL, rank=2).result(60)
        tokens = [72, 101, 108, 108, 111]
        datum = tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]),
                             loss_fn_inputs={"target_tokens": tokens[1:],
                                             "weights": [1.0] * 4})
        for client in [*restored, later]:
            assert client.forward_backward([datum], "cross_entropy").result(60).metrics
        loads = [r for r in srv.requests if r.path.endswith("/load_weights")]
        refused = [r for r in loads if r.status == 400]
        assert len(refused) == 1  # learned once, then the two-step form only
        assert b"session_id" in refused[0].body and b"model_id" not in refused[0].body
        service.close().result(60)


def test_client_futures_are_clients_and_forward(fresh_server: LocalServer, api_key: str) -> None:
    import warnings

    service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    fut = service.create_sampling_client(base_model=MODEL)
    assert isinstance(fut, tinker.SamplingClient) and isinstance(fut, tinker.APIFuture)
    assert isinstance(fut, tinker.BackcompatSamplingClientFuture)
    training_fut = service.create_lora_training_client(MODEL, rank=2)
    assert isinstance(training_fut, tinker.TrainingClient)
    from tinker_async import _api_future

    _api_future._warned_client_future = False  # it warns once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Old code used the future as the client: it waits, forwards and warns.
        out = fut.sample(tinker.ModelInput.from_ints([65]), 1,
                         tinker.SamplingParams(max_tokens=1)).result(60)
        assert training_fut.model_id == training_fut.result(60).model_id
    assert len(out.sequences) == 1
    assert any(issubclass(w.category, FutureWarning) for w in caught)
    service.close().result(60)


def test_auth_helpers(fresh_server: LocalServer, api_key: str,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert tinker.auth.get_tinker_token() is None and not tinker.auth.tinker_has_credentials()
    with pytest.raises(tinker.TinkerError, match="credential"):
        tinker.auth.raise_if_tinker_not_accessible()
    monkeypatch.setenv("TINKER_BASE_URL", fresh_server.url)
    monkeypatch.setenv("TINKER_API_KEY", api_key)
    assert tinker.auth.get_tinker_token() == api_key and tinker.auth.tinker_has_credentials()
    tinker.auth.raise_if_tinker_not_accessible()  # the server accepts it
    monkeypatch.setenv("TINKER_API_KEY", "tml-wrong-key-0000")
    with pytest.raises(tinker.AuthenticationError):
        tinker.auth.raise_if_tinker_not_accessible()


def test_wrong_argument_types_fail_at_the_call(fresh_server: LocalServer, api_key: str) -> None:
    service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    fresh_server.clear_requests()
    with pytest.raises(tinker.InvalidRequestError, match=r"create_lora_training_client\(\): "
                       r"base_model must be str, got int 123"):
        service.create_lora_training_client(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank must be int"):
        service.create_lora_training_client(MODEL, rank="8")  # type: ignore[arg-type]
    rest = service.create_rest_client()
    with pytest.raises(ValueError, match="limit must be int"):
        rest.list_training_runs(limit="ten")  # type: ignore[arg-type]
    assert fresh_server.requests == []  # nothing was sent
    training = service.create_lora_training_client(MODEL, rank=2).result(60)
    sampler = service.create_sampling_client(base_model=MODEL).result(60)
    with pytest.raises(ValueError, match="prompt must be ModelInput, got str"):
        sampler.sample("hello", 1, tinker.SamplingParams())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data must be a list of Datum, got str"):
        training.forward_backward("not data", "cross_entropy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn must be one of 'cross_entropy', "):
        training.forward_backward([], "no_such_loss")  # type: ignore[arg-type]

    async def async_forms() -> None:
        with pytest.raises(ValueError, match="num_samples must be int"):
            await sampler.sample_async(tinker.ModelInput.from_ints([1]), "2",  # type: ignore[arg-type]
                                       tinker.SamplingParams())

    asyncio.run(async_forms())
    # Numpy integers and lists-or-tuples are fine, as with the official types.
    import numpy as np

    out = sampler.sample(tinker.ModelInput.from_ints([1, 2]), np.int64(1),
                         tinker.SamplingParams(max_tokens=1)).result(60)
    assert len(out.sequences) == 1
    service.close().result(60)


def test_external_export_encrypted_to_age_recipients(fresh_server: LocalServer,
                                                     api_key: str, tmp_path: Any) -> None:
    pyrage = pytest.importorskip("pyrage")
    identity = pyrage.x25519.Identity.generate()
    service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    training = service.create_lora_training_client(MODEL, rank=2).result(60)
    plain = training.save_weights_external("plain").result(60).path
    secret = training.save_weights_external(
        "secret", age_encryption_recipients=[str(identity.to_public())]).result(60).path
    rest = service.create_rest_client()
    plain_dir = rest.download_checkpoint(plain, tmp_path / "plain").result(60).destination
    secret_dir = rest.download_checkpoint(secret, tmp_path / "secret").result(60).destination
    names = sorted(p.name for p in Path(secret_dir).iterdir())
    assert names and all(n.endswith(".age") for n in names)
    for name in names:
        data = pyrage.decrypt((Path(secret_dir) / name).read_bytes(), [identity])
        assert data == (Path(plain_dir) / name.removesuffix(".age")).read_bytes()
    with pytest.raises(tinker.RequestFailedError, match="not an age or SSH recipient"):
        training.save_weights_external("bad", age_encryption_recipients=["nope"]).result(60)
    service.close().result(60)


def test_tokenizer_ids_follow_the_official_rules(tmp_path: Any) -> None:
    from tinker_async._tokenizers import (
        TokenizerLoadError,
        tokenizer_for_model,
        tokenizer_id_for,
    )

    assert tokenizer_id_for("Qwen/Qwen3-8B:peft", None) == "Qwen/Qwen3-8B"
    assert tokenizer_id_for("org/model/variant", None) == "org/model"
    assert tokenizer_id_for("meta-llama/Llama-3.1-8B", None).endswith("llama-3-instruct-tokenizer")
    # An explicit id is used as given: self-hosted servers report a local directory.
    local = "/srv/models/tiny-qwen3"
    assert tokenizer_id_for(local, local) == local
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    directory = tmp_path / "models" / "tiny" / "tokenizer"
    transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(
        directory)
    tok = tokenizer_for_model(tokenizer_id_for(str(directory), str(directory)))
    assert tok.encode("hello world", add_special_tokens=False) == [1, 2]
    with pytest.raises(TokenizerLoadError, match="Could not load the tokenizer"):
        tokenizer_for_model(str(tmp_path / "no-such-dir" / "x" / "y"))
