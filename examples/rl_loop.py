"""Async reinforcement learning: GRPO-style groups, the ``importance_sampling`` loss.

The toy task: continue a short prompt, and be rewarded for the letter "a". The reward of a
completion is the fraction of its ``--max-tokens`` bytes that are the target letter (so
"aaaa..." for the whole budget scores 1.0). A reader can watch the mean reward climb from
what the base model writes by chance (about 0.06) towards 1.0 in a few dozen seconds.

Each step:

1. **Sample** ``--groups`` prompts x ``--group-size`` completions (16 x 8 = 128 by
   default, all in flight at once: one ``sample_async(num_samples=group_size)`` call per
   prompt).
2. **Score** them; the advantage of a completion is its reward minus its group's mean
   (GRPO: no value function, the group is the baseline).
3. **Train**: one ``Datum`` per completion, with the prompt and the sampled tokens as the
   input, the sampler's logprobs and the advantage on the sampled positions, and the
   ``importance_sampling`` loss (which corrects for the sampler's policy being older).

The training calls are *pipelined*: ``optim_step`` and the save of new sampler weights
are submitted before the result of ``forward_backward`` is awaited, so the server runs
them back to back with no round trip in between. By default sampling overlaps training
too: the rollouts of step ``k+1`` start, with the freshest sampler weights there are,
while step ``k`` trains (off-policy by at most one step, which the importance ratio
corrects for); ``--on-policy`` waits for each update before sampling instead.

Runs against the embedded server (no account needed), or any Tinker-compatible server in
``TINKER_BASE_URL`` with ``TINKER_API_KEY`` (and ``TINKER_BASE_MODEL``)::

    python examples/rl_loop.py                    # the README demo (`make demo`)
    python examples/rl_loop.py --steps 10 --groups 8 --group-size 8 --letter e --on-policy
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Stopwatch, bar, server_target

import tinker_async as tinker

PROMPTS = [
    "Once upon a time, ",
    "The cat ",
    "Hello! ",
    "We say ",
    "It was a dark ",
    "My friend ",
    "A Fox ",
    "Then the ",
    "In the morning ",
    "The Lion said ",
    "She ran to ",
    "Four score ",
    "He wrote: ",
    "Why ",
    "The best ",
    "At night ",
]


@dataclass
class Rollouts:
    """One step's samples, scored and turned into training data."""

    data: list[tinker.Datum] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tokens: int = 0
    version: int = 0  # how many optimizer steps the sampler's weights had seen


def reward(text: str, letter: str, budget: int) -> float:
    """Fraction of the completion's characters that are ``letter``, counting unused budget
    as misses (so stopping early does not pay). With byte tokens: target bytes / budget."""
    return text.count(letter) / max(len(text), budget)


async def rollout(
    sampler: tinker.SamplingClient,
    tokenizer: Any,
    prompts: list[str],
    args: argparse.Namespace,
    seed: int,
    version: int,
) -> Rollouts:
    """Sample a group per prompt (all concurrently), score it, build the datums."""

    async def group(i: int, text: str) -> tuple[str, list[int], tinker.SampleResponse]:
        prompt = tokenizer.encode(text)
        params = tinker.SamplingParams(max_tokens=args.max_tokens, temperature=1.0,
                                       seed=seed * 1000 + i)
        response = await sampler.sample_async(
            tinker.ModelInput.from_ints(prompt), num_samples=args.group_size,
            sampling_params=params)
        return text, prompt, response

    out = Rollouts(version=version)
    for prompt_text, prompt, response in await asyncio.gather(
            *(group(i, p) for i, p in enumerate(prompts))):
        texts = [tokenizer.decode(seq.tokens, skip_special_tokens=True)
                 for seq in response.sequences]
        rewards = [reward(text, args.letter, args.max_tokens) for text in texts]
        baseline = statistics.fmean(rewards)
        out.rewards += rewards
        out.texts += [f"{prompt_text!r} -> {text!r}" for text in texts]
        for seq, r in zip(response.sequences, rewards, strict=True):
            out.tokens += len(seq.tokens)
            advantage = r - baseline
            if advantage == 0.0:
                continue  # no signal: the datum would add nothing to the gradient
            # Input: prompt + sample minus the last token; targets: shifted by one. Only
            # the sampled positions carry the sampler's logprobs and the advantage.
            if seq.logprobs is None:
                raise RuntimeError("the server sent no logprobs for the sampled tokens")
            full = prompt + list(seq.tokens)
            n_prompt = len(prompt) - 1
            out.data.append(tinker.Datum(
                model_input=tinker.ModelInput.from_ints(full[:-1]),
                loss_fn_inputs={
                    "target_tokens": full[1:],
                    "logprobs": [0.0] * n_prompt + list(seq.logprobs),
                    "advantages": [0.0] * n_prompt + [advantage] * len(seq.tokens),
                },
            ))
    return out


def show_samples(title: str, batch: Rollouts, count: int = 3) -> None:
    print(title)
    for text in batch.texts[:: max(1, len(batch.texts) // count)][:count]:
        print(f"    {text}")


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    async with server_target() as target, tinker.ServiceClient(
        base_url=target.base_url, api_key=target.api_key, user_metadata={"example": "rl_loop"}
    ) as service:
        training = await service.create_lora_training_client_async(
            target.base_model, rank=args.rank, seed=args.seed)
        tokenizer = training.get_tokenizer()
        adam = tinker.AdamParams(learning_rate=args.lr)
        per_step = args.groups * args.group_size
        print(f"task: continue a prompt; reward = the fraction of the {args.max_tokens}-token "
              f"completion that is the letter {args.letter!r}")
        print(f"{args.steps} steps x {args.groups} prompts x {args.group_size} samples "
              f"= {per_step} samples in flight per step; lr {args.lr}, LoRA rank {args.rank}, "
              f"{'on-policy' if args.on_policy else 'sampling overlaps training'}")

        def start_rollout(sampler: tinker.SamplingClient, step: int, version: int
                          ) -> asyncio.Task[Rollouts]:
            prompts = rng.sample(PROMPTS, k=min(args.groups, len(PROMPTS)))
            prompts += rng.choices(PROMPTS, k=args.groups - len(prompts))
            return asyncio.create_task(rollout(
                sampler, tokenizer, prompts, args, seed=args.seed * 100_000 + step,
                version=version))

        clock = Stopwatch()
        sampler = await training.save_weights_and_get_sampling_client_async()
        version = 0  # optimizer steps applied so far
        pending = start_rollout(sampler, 0, version)
        curve: list[float] = []
        samples = tokens = 0
        for step in range(args.steps):
            batch = await pending
            if step == 0:
                show_samples("samples before training:", batch)
            curve.append(statistics.fmean(batch.rewards))
            samples += len(batch.rewards)
            tokens += batch.tokens
            more = step + 1 < args.steps
            updates_before = version
            if more and not args.on_policy:
                # Off-policy by at most one step: sample the next batch with the weights we
                # have now, while the server trains on this one.
                pending = start_rollout(sampler, step + 1, version)
            if batch.data:
                # Pipelined: both submitted (and ordered) before either result is awaited.
                fb = await training.forward_backward_async(batch.data, "importance_sampling")
                opt = await training.optim_step_async(adam)
                next_sampler = asyncio.create_task(
                    training.save_weights_and_get_sampling_client_async())
                await fb
                await opt
                sampler, version = await next_sampler, version + 1
            if more and args.on_policy:
                pending = start_rollout(sampler, step + 1, version)
            stale = updates_before - batch.version
            print(f"step {step:3d}  reward {curve[-1]:.3f} {bar(curve[-1])}  "
                  f"{clock():5.1f}s" + (f"  (sampled {stale} update behind)" if stale else ""))

        elapsed = clock()
        show_samples("samples after training:", batch)
        head = statistics.fmean(curve[: min(3, len(curve))])
        tail = statistics.fmean(curve[-min(3, len(curve)):])
        print(f"mean reward: first {curve[0]:.3f} -> last {curve[-1]:.3f} "
              f"(first 3 steps {head:.3f}, last 3 steps {tail:.3f})")
        print(f"{samples} samples, {tokens} sampled tokens in {elapsed:.1f}s: "
              f"{samples / elapsed:.0f} samples/s, {tokens / elapsed:.0f} tokens/s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--groups", type=int, default=16, help="prompts per step (default 16)")
    parser.add_argument("--group-size", type=int, default=8,
                        help="samples per prompt (default 8)")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="tokens per sample (default 16)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--letter", default="a", help="the letter to reward (default 'a')")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--on-policy", action="store_true",
                        help="wait for each update before sampling (no overlap)")
    args = parser.parse_args(argv)
    if len(args.letter) != 1:
        parser.error("--letter must be one character")
    if min(args.steps, args.groups, args.group_size, args.max_tokens) < 1:
        parser.error("--steps, --groups, --group-size and --max-tokens must be positive")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
