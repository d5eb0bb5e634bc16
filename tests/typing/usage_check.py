"""Checked by mypy in CI (never run): both forms of the clients have real signatures.

If the generated sync forms lost their types, or a return convention changed, the
``assert_type`` lines below stop type-checking and ``make typecheck`` fails.
"""

from __future__ import annotations

from typing_extensions import assert_type

import tinker_async as tinker
from tinker_async import types


async def async_usage(service: tinker.ServiceClient, rest: tinker.RestClient) -> None:
    training = await service.create_lora_training_client_async("local/byte-lm", rank=8)
    assert_type(training, tinker.TrainingClient)
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]},
    )
    fb = await training.forward_backward_async([datum], "cross_entropy")
    assert_type(fb, tinker.APIFuture[types.ForwardBackwardOutput])
    out = await fb
    assert_type(out, types.ForwardBackwardOutput)
    sampler = await training.save_weights_and_get_sampling_client_async()
    response = await sampler.sample_async(
        types.ModelInput.from_ints([1]), 2, types.SamplingParams(max_tokens=4)
    )
    assert_type(response, types.SampleResponse)
    runs = await rest.list_training_runs_async(limit=5)
    assert_type(runs, types.TrainingRunsResponse)
    assert_type(await rest.health_check_async(), bool)


def sync_usage(service: tinker.ServiceClient, rest: tinker.RestClient) -> None:
    training = service.create_lora_training_client("local/byte-lm", rank=8).result()
    assert_type(training, tinker.TrainingClient)
    fb = training.forward_backward([], "cross_entropy")
    assert_type(fb, tinker.APIFuture[types.ForwardBackwardOutput])
    assert_type(fb.result(timeout=10), types.ForwardBackwardOutput)
    opt = training.optim_step(types.AdamParams(learning_rate=1e-3))
    assert_type(opt, tinker.APIFuture[types.OptimStepResponse])
    runs = rest.list_training_runs(limit=5)
    assert_type(runs, tinker.APIFuture[types.TrainingRunsResponse])
    assert_type(rest.get_latest_checkpoint_path("run").result(), str | None)
    assert_type(training.get_info(), types.GetInfoResponse)
