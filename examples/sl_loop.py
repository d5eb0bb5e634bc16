"""Supervised fine-tuning with the async API: ``cross_entropy`` on a small built-in text.

The text is the opening of "Alice's Adventures in Wonderland" (public domain), which the
embedded server's base model never saw. Each step trains a LoRA on a batch of random
windows of the text (next-token prediction, every position weighted 1) and takes an Adam
step; the loss per token is printed as it goes and must fall by at least half. At the end
the weights are saved (a resumable training checkpoint, and sampler weights) and a
continuation of the first words is sampled from the saved sampler weights, next to one
from the base model, to show what was learned.

The loop is pipelined like real training code: step ``k+1``'s ``forward_backward`` and
``optim_step`` are submitted before step ``k``'s results are awaited, so the server
always has the next piece of work queued.

Runs against the embedded server (no account needed), or any Tinker-compatible server in
``TINKER_BASE_URL`` with ``TINKER_API_KEY`` (and ``TINKER_BASE_MODEL``)::

    python examples/sl_loop.py
    python examples/sl_loop.py --steps 30 --batch-size 8 --window 48 --lr 1e-2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SFT_TEXT, Stopwatch, checked_sft_arguments, server_target, sft_arguments

import tinker_async as tinker

PROMPT = "Alice was beginning to get"


def make_batch(tokens: list[int], rng: random.Random, batch_size: int, window: int
               ) -> list[tinker.Datum]:
    """``batch_size`` random windows of ``window + 1`` tokens, as next-token datums."""
    batch = []
    for _ in range(batch_size):
        start = rng.randrange(0, len(tokens) - window)
        chunk = tokens[start : start + window + 1]
        batch.append(tinker.Datum(
            model_input=tinker.ModelInput.from_ints(chunk[:-1]),
            loss_fn_inputs={"target_tokens": chunk[1:], "weights": [1.0] * window},
        ))
    return batch


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    async with server_target() as target, tinker.ServiceClient(
        base_url=target.base_url, api_key=target.api_key, user_metadata={"example": "sl_loop"}
    ) as service:
        training = await service.create_lora_training_client_async(
            target.base_model, rank=args.rank, seed=args.seed)
        tokenizer = training.get_tokenizer()
        tokens = tokenizer.encode(SFT_TEXT)
        window = min(args.window, len(tokens) - 1)
        adam = tinker.AdamParams(learning_rate=args.lr)
        per_step = args.batch_size * window
        print(f"text: {len(tokens)} tokens; {args.steps} steps x {args.batch_size} windows x "
              f"{window} tokens; lr {args.lr}, LoRA rank {args.rank}")

        clock = Stopwatch()
        losses: list[float] = []

        async def submit() -> tuple[tinker.APIFuture[tinker.ForwardBackwardOutput],
                                    tinker.APIFuture[tinker.OptimStepResponse]]:
            batch = make_batch(tokens, rng, args.batch_size, window)
            fb = await training.forward_backward_async(batch, "cross_entropy")
            opt = await training.optim_step_async(adam)
            return fb, opt

        pending = await submit()
        for step in range(args.steps):
            fb, opt = pending
            if step + 1 < args.steps:
                pending = await submit()  # queued behind this step before we wait for it
            result = await fb
            await opt
            losses.append(result.metrics["loss:sum"] / per_step)
            print(f"step {step:3d}  loss {losses[-1]:.3f} nats/token  {clock():5.1f}s")
        elapsed = clock()

        saved = await (await training.save_state_async("final"))
        print(f"saved the training state: {saved.path}")
        weights = await (await training.save_weights_for_sampler_async("final"))
        print(f"saved sampler weights: {weights.path}")
        tuned = await service.create_sampling_client_async(model_path=weights.path)
        base = await service.create_sampling_client_async(base_model=target.base_model)
        prompt = tinker.ModelInput.from_ints(tokenizer.encode(PROMPT))
        params = tinker.SamplingParams(max_tokens=args.sample_tokens, temperature=0.3,
                                       seed=args.seed)
        for name, sampler in (("base model", base), ("fine-tuned", tuned)):
            response = await sampler.sample_async(prompt, num_samples=1, sampling_params=params)
            text = tokenizer.decode(response.sequences[0].tokens, skip_special_tokens=True)
            print(f"{name:>10}: {PROMPT!r} -> {text!r}")

        start, end = losses[0], statistics.fmean(losses[-3:])
        print(f"loss: start {start:.3f} -> end {end:.3f} (mean of the last 3 steps), "
              f"ratio {end / start:.2f}")
        print(f"{args.steps} steps, {args.steps * per_step} tokens trained in {elapsed:.1f}s: "
              f"{args.steps * per_step / elapsed:.0f} tokens/s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = sft_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--sample-tokens", type=int, default=60,
                        help="tokens to sample at the end (default 60)")
    return checked_sft_arguments(parser, argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
