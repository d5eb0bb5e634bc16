"""One error per condition (issue 11): a missing thing is a NotFoundError from every
method; a checkpoint of the wrong kind is refused before anything is sent."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator

import pytest

import tinker_async as tinker
from tinker_async.local import LocalServer

pytestmark = pytest.mark.anyio
MODEL = "local/byte-lm"


@pytest.fixture
async def trained(service: tinker.ServiceClient) -> AsyncIterator[tinker.TrainingClient]:
    yield await service.create_lora_training_client_async(base_model=MODEL, rank=4)


async def test_loading_a_missing_checkpoint_is_not_found_from_every_method(
    service: tinker.ServiceClient, trained: tinker.TrainingClient,
) -> None:
    missing = f"tinker://{trained.model_id}/weights/never-saved"
    rest = service.create_rest_client()
    calls = {
        "load_state": lambda: trained.load_state_async(missing),
        "load_state_with_optimizer": lambda: trained.load_state_with_optimizer_async(missing),
    }
    for name, call in calls.items():
        with pytest.raises(tinker.NotFoundError) as caught:
            await asyncio.wait_for(await call(), 60)
        # Still what the official SDK raises for a failed future, for code that catches it.
        assert isinstance(caught.value, tinker.RequestFailedError), name
        assert "never-saved" in str(caught.value), name
    for direct in (service.create_training_client_from_state_async(missing),
                   rest.get_weights_info_by_tinker_path_async(missing),
                   rest.delete_checkpoint_from_tinker_path_async(missing)):
        with pytest.raises(tinker.NotFoundError):
            await asyncio.wait_for(direct, 60)


@pytest.mark.parametrize("method", ["load_state", "load_state_with_optimizer"])
async def test_sampler_weights_are_refused_by_load_state_before_sending(
    trained: tinker.TrainingClient, fresh_server: LocalServer, method: str,
) -> None:
    saved = await asyncio.wait_for(await trained.save_weights_for_sampler_async("s"), 60)
    fresh_server.clear_requests()
    with pytest.raises(tinker.InvalidRequestError) as caught:
        await getattr(trained, f"{method}_async")(saved.path)
    message = str(caught.value)
    assert f"{method} takes a training checkpoint" in message
    assert "is a sampler checkpoint" in message
    assert fresh_server.count(r"load_weights") == 0  # nothing was sent


def test_the_not_found_failure_pickles_with_its_fields() -> None:
    error = tinker.RequestNotFoundError("gone", request_id="r1", category="user")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.request_id, copy.category, copy.status_code) == (
        tinker.RequestNotFoundError, "gone", "r1", "user", 404)
