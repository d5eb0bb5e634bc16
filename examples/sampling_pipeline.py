"""A sampling pipeline: thousands of ``sample_async`` calls at high concurrency.

The shape of evaluation and data-generation jobs: 2,000 prompts, one sample each, all
started at once; the SamplingClient's admission control keeps at most its current limit
in flight and queues the rest in the client (the limit adapts to the server's 429s and
latency; ``--concurrency N`` fixes it at N instead). The progress bar shows what is in
flight, what is queued and the limit (``sampler.stats()``); the summary gives samples/s,
tokens/s, the p50/p99 latency of a call (queue wait included) and the admission figures.
All requests share one ServiceClient, hence one connection pool and one poller for their
results; nothing here blocks the event loop.

By default the embedded server really computes (a small byte-level model; short
completions keep the run well under a minute). ``--zero-compute`` starts it in zero-compute
mode instead, where every sample comes back at once, so that what is measured is the
client and the HTTP path alone. ``--server-capacity N`` makes the embedded server serve at
most N samples at once (each taking ``--service-time`` seconds), answering the excess with
429s as a busy real server does: watch the limit settle near N and the queue drain.

Runs against the embedded server (no account needed), or any Tinker-compatible server in
``TINKER_BASE_URL`` with ``TINKER_API_KEY`` (and ``TINKER_BASE_MODEL``)::

    python examples/sampling_pipeline.py
    python examples/sampling_pipeline.py --samples 5000 --zero-compute --server-capacity 64
    python examples/sampling_pipeline.py --samples 5000 --concurrency 512 --zero-compute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Target, bar, server_target

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
    """A one-line progress bar, redrawn in place with ``\\r`` at most every 0.1 s, with the
    sampler's admission numbers: in flight, queued in the client, and the current limit."""

    def __init__(self, total: int, sampler: tinker.SamplingClient) -> None:
        self.total = total
        self.sampler = sampler
        self.done = 0
        self.started = time.perf_counter()
        self._shown = 0.0

    def advance(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self._shown < 0.1 and self.done < self.total:
            return
        self._shown = now
        rate = self.done / max(now - self.started, 1e-9)
        stats = self.sampler.stats()
        sys.stdout.write(f"\r{bar(self.done / self.total, 30)} {self.done:5d}/{self.total} "
                         f"{rate:6.0f} samples/s  in flight {stats.in_flight:4d}  "
                         f"queued {stats.queued:5d}  limit {stats.limit:4d} ")
        sys.stdout.flush()
        if self.done == self.total:
            sys.stdout.write("\n")


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, nearest rank."""
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


@contextlib.asynccontextmanager
async def target_for(args: argparse.Namespace) -> AsyncIterator[Target]:
    """The server: as ``server_target``, or an embedded one with a sampling capacity."""
    if not args.server_capacity or os.environ.get("TINKER_BASE_URL"):
        async with server_target(zero_compute=args.zero_compute) as target:
            yield target
        return
    from tinker_async.local import LocalServer, SampleCapacity

    srv = LocalServer(zero_compute=args.zero_compute,
                      sample_capacity=SampleCapacity(per_model=args.server_capacity,
                                                     service_time_s=args.service_time))
    async with srv:
        mode = " in zero-compute mode" if args.zero_compute else ""
        print(f"started the embedded server at {srv.url}{mode}, serving at most "
              f"{args.server_capacity} samples at once")
        yield Target(srv.url, srv.api_key, "local/byte-lm", embedded=True)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    async with target_for(args) as target, tinker.ServiceClient(
        base_url=target.base_url, api_key=target.api_key,
        user_metadata={"example": "sampling_pipeline"},
    ) as service:
        sampler = await service.create_sampling_client_async(base_model=target.base_model)
        if args.concurrency is not None:
            sampler.set_max_concurrency(args.concurrency)
        tokenizer = sampler.get_tokenizer()
        prompts = make_prompts(args.samples, rng)
        params = tinker.SamplingParams(max_tokens=args.max_tokens, temperature=0.8)
        limit = (f"at most {args.concurrency} in flight" if args.concurrency is not None
                 else "an adaptive limit on what is in flight")
        print(f"{args.samples} samples of up to {args.max_tokens} tokens, {limit}")

        progress = Progress(args.samples, sampler)
        latencies: list[float] = []
        tokens = 0
        examples: list[str] = []

        async def one(text: str) -> None:
            nonlocal tokens
            sent = time.perf_counter()
            response = await sampler.sample_async(
                tinker.ModelInput.from_ints(tokenizer.encode(text)), num_samples=1,
                sampling_params=params)
            latencies.append(time.perf_counter() - sent)
            sampled = response.sequences[0].tokens
            tokens += len(sampled)
            if len(examples) < 3:
                examples.append(f"{text!r} -> "
                                f"{tokenizer.decode(sampled, skip_special_tokens=True)!r}")
            progress.advance()

        started = time.perf_counter()
        await asyncio.gather(*(one(text) for text in prompts))
        elapsed = time.perf_counter() - started

        print("a few samples:")
        for line in examples:
            print(f"    {line}")
        latencies.sort()
        stats = sampler.stats()
        print(f"completed {len(latencies)} samples, {tokens} tokens in {elapsed:.2f}s")
        print(f"throughput: {len(latencies) / elapsed:.0f} samples/s, "
              f"{tokens / elapsed:.0f} tokens/s")
        print(f"latency: p50 {percentile(latencies, 0.5) * 1e3:.0f} ms, "
              f"p99 {percentile(latencies, 0.99) * 1e3:.0f} ms, "
              f"mean {statistics.fmean(latencies) * 1e3:.0f} ms (queue wait included)")
        print(f"admission: final limit {stats.limit} ({stats.limiter}), "
              f"{stats.rate_limited} of {stats.requests} submits answered 429, "
              f"mean queue wait {(stats.queue_wait_mean or 0) * 1e3:.0f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000,
                        help="how many samples (default 2000)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="a fixed limit on requests in flight (default: adaptive)")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="tokens per sample (default 16)")
    parser.add_argument("--zero-compute", action="store_true",
                        help="start the embedded server in zero-compute mode")
    parser.add_argument("--server-capacity", type=int, default=0,
                        help="the embedded server serves at most this many samples at once "
                             "(default: no limit)")
    parser.add_argument("--service-time", type=float, default=0.05,
                        help="with --server-capacity: seconds per sample (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.samples < 1 or (args.concurrency is not None and args.concurrency < 1):
        parser.error("--samples and --concurrency must be positive")
    if args.server_capacity < 0 or args.service_time < 0:
        parser.error("--server-capacity and --service-time must not be negative")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
