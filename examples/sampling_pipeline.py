"""A sampling pipeline: thousands of ``sample_async`` calls at high concurrency.

The shape of evaluation and data-generation jobs: 2,000 prompts, up to ``--concurrency``
requests in flight at once (an ``asyncio.Semaphore`` bounds them), one sample each, a
plain-text progress bar, and a throughput summary at the end: samples/s, tokens/s and the
p50/p99 latency of a request. All requests share one ServiceClient, hence one connection
pool and one poller for their results; nothing here blocks the event loop.

By default the embedded server really computes (a small byte-level model; short
completions keep the run well under a minute). ``--zero-compute`` starts it in zero-compute
mode instead, where every sample comes back at once, so that what is measured is the
client and the HTTP path alone.

Runs against the embedded server (no account needed), or any Tinker-compatible server in
``TINKER_BASE_URL`` with ``TINKER_API_KEY`` (and ``TINKER_BASE_MODEL``)::

    python examples/sampling_pipeline.py
    python examples/sampling_pipeline.py --samples 5000 --concurrency 512 --zero-compute
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bar, server_target

import tinker_async as tinker

SUBJECTS = ["The Fox", "A Lion", "The Tortoise", "An old man", "The Crow", "A Wolf", "The Ant",
            "A Mouse", "The Hare", "The Dog"]
VERBS = ["saw", "said to", "ran after", "laughed at", "met", "thanked"]
OBJECTS = ["the Grapes", "a Lamb", "the Shepherd", "his friend", "the River", "the Stag"]


def make_prompts(count: int, rng: random.Random) -> list[str]:
    """Distinct-looking prompts in the style of the fables the base model knows."""
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
            for _ in range(count)]


class Progress:
    """A one-line progress bar, redrawn in place with ``\\r`` at most every 0.1 s."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self._shown = 0.0

    def advance(self, in_flight: int) -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self._shown < 0.1 and self.done < self.total:
            return
        self._shown = now
        rate = self.done / max(now - self.started, 1e-9)
        sys.stdout.write(f"\r{bar(self.done / self.total, 30)} {self.done:5d}/{self.total} "
                         f"{rate:6.0f} samples/s  {in_flight:4d} in flight ")
        sys.stdout.flush()
        if self.done == self.total:
            sys.stdout.write("\n")


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, nearest rank."""
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    async with server_target(zero_compute=args.zero_compute) as target, tinker.ServiceClient(
        base_url=target.base_url, api_key=target.api_key,
        user_metadata={"example": "sampling_pipeline"},
    ) as service:
        sampler = await service.create_sampling_client_async(base_model=target.base_model)
        tokenizer = sampler.get_tokenizer()
        prompts = make_prompts(args.samples, rng)
        params = tinker.SamplingParams(max_tokens=args.max_tokens, temperature=0.8)
        print(f"{args.samples} samples of up to {args.max_tokens} tokens, "
              f"at most {args.concurrency} in flight")

        limit = asyncio.Semaphore(args.concurrency)
        progress = Progress(args.samples)
        latencies: list[float] = []
        tokens = 0
        in_flight = 0
        examples: list[str] = []

        async def one(text: str) -> None:
            nonlocal tokens, in_flight
            async with limit:
                in_flight += 1
                sent = time.perf_counter()
                try:
                    response = await sampler.sample_async(
                        tinker.ModelInput.from_ints(tokenizer.encode(text)), num_samples=1,
                        sampling_params=params)
                finally:
                    in_flight -= 1
                latencies.append(time.perf_counter() - sent)
            sampled = response.sequences[0].tokens
            tokens += len(sampled)
            if len(examples) < 3:
                examples.append(f"{text!r} -> "
                                f"{tokenizer.decode(sampled, skip_special_tokens=True)!r}")
            progress.advance(in_flight)

        started = time.perf_counter()
        await asyncio.gather(*(one(text) for text in prompts))
        elapsed = time.perf_counter() - started

        print("a few samples:")
        for line in examples:
            print(f"    {line}")
        latencies.sort()
        print(f"completed {len(latencies)} samples, {tokens} tokens in {elapsed:.2f}s")
        print(f"throughput: {len(latencies) / elapsed:.0f} samples/s, "
              f"{tokens / elapsed:.0f} tokens/s")
        print(f"latency: p50 {percentile(latencies, 0.5) * 1e3:.0f} ms, "
              f"p99 {percentile(latencies, 0.99) * 1e3:.0f} ms, "
              f"mean {statistics.fmean(latencies) * 1e3:.0f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000,
                        help="how many samples (default 2000)")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="requests in flight at most (default 256)")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="tokens per sample (default 16)")
    parser.add_argument("--zero-compute", action="store_true",
                        help="start the embedded server in zero-compute mode")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.concurrency < 1:
        parser.error("--samples and --concurrency must be positive")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
