"""RL with rollouts on Ray: rollout actors sample, the learner here trains on what they return.

The task and the loss are those of ``rl_loop.py`` (reward the letter "a"; GRPO-style
groups, the ``importance_sampling`` loss). What changes is where the rollouts run: each
step's prompt groups are split over ``--workers`` Ray actors, each in its own process.
Every step the learner hands them its newest ``SamplingClient`` as a plain argument: Ray
pickles it (never with the API key), and in the actor it joins the same server session
and samples through that process's own client, all of its groups at once.

The actors get the key the way a cluster gives secrets to workers: here through Ray's
``runtime_env`` (``env_vars``), which the embedded server's key needs; on a real cluster
the nodes' environment, ``TINKER_CREDENTIAL_CMD`` or ``tinker_async.configure(api_key=...)``
in the worker do as well (see the README, "Rollouts on Ray").

Runs on this machine (``ray.init()`` with ``--num-cpus``, the embedded server)::

    pip install 'tinker-async[ray]'
    python examples/ray_rollouts.py
    python examples/ray_rollouts.py --workers 4 --steps 20 --address auto   # a running cluster

The workers share one sampling limit held by a small Ray actor
(``tinker_async.ray.SharedLimit``), so that together they stay under the server's
capacity instead of each probing for it alone (``--shared-limit``).

With ``--address`` the code goes to the cluster's workers in ``runtime_env``'s
``working_dir``; a remote cluster needs ``TINKER_BASE_URL`` (and ``TINKER_API_KEY``) set to
a server its nodes can reach, since the embedded server listens on this machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Stopwatch, bar, server_target
from rl_loop import PROMPTS, Rollouts, rollout, show_samples

import tinker_async as tinker

ray: Any
try:
    import ray
except ImportError:  # the optional extra
    ray = None

EXAMPLES = Path(__file__).resolve().parent


class RolloutWorker:
    """One rollout process. Ray runs its async methods on the actor's own event loop, so
    all the groups it is given are in flight at once."""

    def __init__(self, args: argparse.Namespace, limit: Any, limit_key: str) -> None:
        self.args = args
        self.limit = limit  # a tinker_async.ray.SharedLimit, or None
        self.limit_key = limit_key
        self.samples = 0

    async def rollout(self, sampler: tinker.SamplingClient, prompts: list[str], seed: int,
                      version: int) -> tuple[int, Rollouts]:
        """Sample and score a group per prompt with ``sampler`` (unpickled here, no key
        inside: this process's own key authenticates it)."""
        if self.limit is not None:
            # Every step's sampler, in every worker, under one limit for the base model.
            self.limit.attach(sampler, key=self.limit_key)
        batch = await rollout(sampler, sampler.get_tokenizer(), prompts, self.args, seed,
                              version)
        self.samples += len(batch.rewards)
        return os.getpid(), batch


def merge(parts: list[tuple[int, Rollouts]], by_pid: Counter[int]) -> Rollouts:
    """The workers' batches as one, counting each worker process's samples."""
    out = Rollouts(version=parts[0][1].version)
    for pid, part in parts:
        by_pid[pid] += len(part.rewards)
        out.data += part.data
        out.rewards += part.rewards
        out.texts += part.texts
        out.tokens += part.tokens
    return out


async def main(args: argparse.Namespace) -> None:
    assert ray is not None
    rng = random.Random(args.seed)
    async with server_target() as target:
        # The key reaches the workers in their environment, never inside a pickle.
        runtime_env: dict[str, Any] = {"env_vars": {"TINKER_API_KEY": target.api_key}}
        if args.address:
            runtime_env["working_dir"] = str(EXAMPLES)  # this code, for the cluster's nodes
        ray.init(address=args.address, num_cpus=None if args.address else args.num_cpus,
                 runtime_env=runtime_env, include_dashboard=False, logging_level=logging.WARNING)
        try:
            await learn(args, target, rng)
        finally:
            ray.shutdown()


async def learn(args: argparse.Namespace, target: Any, rng: random.Random) -> None:
    assert ray is not None
    limit = None
    if args.shared_limit != "off":
        from tinker_async.ray import SharedLimit

        limit = SharedLimit.create(max_concurrency=None if args.shared_limit == "adaptive"
                                   else int(args.shared_limit))
    worker_class: Any = ray.remote(num_cpus=0)(RolloutWorker)  # they wait on the network
    workers = [worker_class.remote(args, limit, target.base_model)
               for _ in range(args.workers)]
    async with tinker.ServiceClient(
        base_url=target.base_url, api_key=target.api_key,
        user_metadata={"example": "ray_rollouts"},
    ) as service:
        training = await service.create_lora_training_client_async(
            target.base_model, rank=args.rank, seed=args.seed)
        adam = tinker.AdamParams(learning_rate=args.lr)
        per_step = args.groups * args.group_size
        print(f"{args.steps} steps x {args.groups} prompts x {args.group_size} samples "
              f"= {per_step} samples per step, over {args.workers} Ray rollout actors")
        by_pid: Counter[int] = Counter()

        def start_rollout(sampler: tinker.SamplingClient, step: int, version: int
                          ) -> asyncio.Future[Rollouts]:
            prompts = rng.sample(PROMPTS, k=min(args.groups, len(PROMPTS)))
            prompts += rng.choices(PROMPTS, k=args.groups - len(prompts))
            seed = args.seed * 100_000 + step
            # Worker i takes every args.workers-th group; the SamplingClient is pickled
            # into each call as an ordinary argument.
            refs = [worker.rollout.remote(sampler, prompts[i::args.workers], seed * 100 + i,
                                          version)
                    for i, worker in enumerate(workers) if prompts[i::args.workers]]

            async def gather() -> Rollouts:
                return merge(list(await asyncio.gather(*refs)), by_pid)

            return asyncio.ensure_future(gather())

        clock = Stopwatch()
        sampler = await training.save_weights_and_get_sampling_client_async()
        version = 0
        pending = start_rollout(sampler, 0, version)
        curve: list[float] = []
        samples = 0
        for step in range(args.steps):
            batch = await pending
            if step == 0:
                show_samples("samples before training:", batch)
            curve.append(statistics.fmean(batch.rewards))
            samples += len(batch.rewards)
            more = step + 1 < args.steps
            if more:  # off-policy by at most one step, as rl_loop.py by default
                pending = start_rollout(sampler, step + 1, version)
            if batch.data:
                fb = await training.forward_backward_async(batch.data, "importance_sampling")
                opt = await training.optim_step_async(adam)
                next_sampler = asyncio.create_task(
                    training.save_weights_and_get_sampling_client_async())
                await fb
                await opt
                sampler, version = await next_sampler, version + 1
            print(f"step {step:3d}  reward {curve[-1]:.3f} {bar(curve[-1])}  {clock():5.1f}s")

        elapsed = clock()
        show_samples("samples after training:", batch)
        head = statistics.fmean(curve[: min(3, len(curve))])
        tail = statistics.fmean(curve[-min(3, len(curve)):])
        print(f"mean reward: first {curve[0]:.3f} -> last {curve[-1]:.3f} "
              f"(first 3 steps {head:.3f}, last 3 steps {tail:.3f})")
        print(f"{samples} samples in {elapsed:.1f}s: {samples / elapsed:.0f} samples/s")
        counts = sorted(by_pid.values(), reverse=True)
        print(f"samples by rollout process: {counts} ({len(counts)} processes, "
              f"none of them this one: {os.getpid() not in by_pid})")
        if limit is not None:
            view = limit.snapshot().get(target.base_model, {})
            print(f"shared limit ({args.shared_limit}): at most {view.get('limit')} sample "
                  f"calls in flight across the workers now; {view.get('throttled')} 429s "
                  "reported to it")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps (default 12)")
    parser.add_argument("--workers", type=int, default=2,
                        help="Ray rollout actors (default 2)")
    parser.add_argument("--groups", type=int, default=16, help="prompts per step (default 16)")
    parser.add_argument("--group-size", type=int, default=8,
                        help="samples per prompt (default 8)")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="tokens per sample (default 16)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--letter", default="a", help="the letter to reward (default 'a')")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-cpus", type=int, default=2,
                        help="CPUs of the local Ray cluster (default 2)")
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster to join instead (e.g. 'auto')")
    parser.add_argument("--shared-limit", default="adaptive",
                        help="one sampling limit for all workers, held by a Ray actor: "
                             "'adaptive' (default), a number (a quota you know), or 'off' "
                             "(each worker adapts alone)")
    args = parser.parse_args(argv)
    if len(args.letter) != 1:
        parser.error("--letter must be one character")
    if args.shared_limit not in ("adaptive", "off") and not (
            args.shared_limit.isdigit() and int(args.shared_limit) >= 1):
        parser.error("--shared-limit must be 'adaptive', 'off' or a positive number")
    if min(args.steps, args.workers, args.groups, args.group_size, args.max_tokens) < 1:
        parser.error("--steps, --workers, --groups, --group-size and --max-tokens must be "
                     "positive")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if ray is None:
        sys.exit("this example needs Ray: pip install 'tinker-async[ray]' (or pip install ray)")
    asyncio.run(main(arguments))
