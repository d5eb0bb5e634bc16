"""A walk through the REST surface: runs, checkpoints, sessions, weights info, capacity.

Runs against the embedded server by default (or the server in TINKER_BASE_URL with
TINKER_API_KEY). On the embedded server it first trains a few steps so that there is a
training run with checkpoints to look at.

    python examples/rest_walkthrough.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import server_target

import tinker_async as tinker


async def make_some_history(service: tinker.ServiceClient, base_model: str) -> str:
    """A short training run with two checkpoints, so the REST calls have data."""
    training = await service.create_lora_training_client_async(base_model, rank=4)
    tokenizer = training.get_tokenizer()
    tokens = tokenizer.encode("hello tinker, hello world")
    datum = tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )
    for step in range(2):
        fb = await training.forward_backward_async([datum], "cross_entropy")
        await training.optim_step_async(tinker.AdamParams(learning_rate=1e-2))
        print(f"  step {step}: loss {(await fb).metrics['loss:sum']:.2f}")
        await (await training.save_state_async(f"step-{step}"))
    await (await training.save_weights_for_sampler_async("final"))
    return training.model_id


async def main() -> None:
    async with server_target() as target:
        async with tinker.ServiceClient(base_url=target.base_url, api_key=target.api_key,
                                        user_metadata={"example": "rest"}) as service:
            rest = service.create_rest_client()
            print("healthy:", await rest.health_check_async())
            caps = await rest.get_server_capabilities_async()
            print("models:", [m.model_name for m in caps.supported_models])
            if target.embedded:
                print("training a little so there is something to list:")
                await make_some_history(service, target.base_model)

            runs, cursor = await rest.list_training_runs_with_cursor_async(limit=5)
            print(f"training runs: {len(runs)} shown of {cursor.total_count if cursor else '?'}")
            async for run in rest.aiter_training_runs(page_size=2):
                print(f"  {run.training_run_id}  {run.base_model}  rank={run.lora_rank}")
            if not runs:
                return
            run_id = runs[0].training_run_id
            checkpoints = (await rest.list_checkpoints_async(run_id)).checkpoints
            for ckpt in checkpoints:
                print(f"  checkpoint {ckpt.checkpoint_id} ({ckpt.checkpoint_type}) {ckpt.tinker_path}")
            latest = await rest.get_latest_checkpoint_path_async(run_id)
            print("latest training checkpoint:", latest)
            if latest:
                info = await rest.get_weights_info_by_tinker_path_async(latest)
                print(f"weights info: base={info.base_model} lora={info.is_lora} rank={info.lora_rank}")
                await rest.publish_checkpoint_from_tinker_path_async(latest)
                await rest.set_checkpoint_ttl_from_tinker_path_async(latest, 7 * 24 * 3600)
                print("published it and set a 7-day TTL")
            try:
                cap = await rest.get_capacity_info_async()
                print(f"LoRA capacity: {cap.used_loras}/{cap.max_loras} used, {cap.free_loras} free")
            except tinker.NotFoundError:
                print("this server does not report LoRA capacity")
            session = await rest.get_session_async(service.session_id or "")
            print(f"this session: {len(session.training_run_ids)} runs, {len(session.sampler_ids)} samplers")
            try:
                await rest.get_training_run_async("no-such-run")
            except tinker.NotFoundError as exc:
                print("a typed error for an unknown run:", exc)


if __name__ == "__main__":
    asyncio.run(main())
