"""Batching of sampling requests: many ``asample`` calls, one ``sample_many`` per step.

The numpy model decodes every live sequence of a batch in one matrix product per token, so
serving 256 requests together costs little more than serving one. A :class:`SampleBatcher`
(one per base model) queues requests; a single drain task takes everything queued (up to
``max_rows`` sequences), runs it in a worker thread, hands out the results, and repeats
while requests keep coming. Requests that arrive while a batch computes form the next
batch, so under load the batches grow by themselves; the short ``window_s`` pause when
the batcher wakes from idle lets a burst that is still arriving join the first batch.

A bad request must not fail its batch-mates: when a batch raises, its requests are run
again one by one and each gets its own outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Sequence

from ._model import BaseModel, SampleRequest, SampleResult, sample_many

__all__ = ["SampleBatcher", "run_batch"]


def run_batch(base: BaseModel, requests: Sequence[SampleRequest]) -> list[SampleResult | Exception]:
    """Blocking: sample every request, each result or exception in request order."""
    try:
        return list(sample_many(base, requests))
    except Exception as exc:
        if len(requests) == 1:
            return [exc]
    outcomes: list[SampleResult | Exception] = []
    for request in requests:
        try:
            outcomes.append(sample_many(base, [request])[0])
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


class SampleBatcher:
    """Queues the sampling requests of one base model and serves them in batches."""

    def __init__(
        self,
        base: BaseModel,
        executor: concurrent.futures.Executor,
        *,
        max_rows: int = 256,
        window_s: float = 0.002,
    ) -> None:
        self.base = base
        self.max_rows = max_rows
        """Sequences per batch (a request's ``num_samples`` rows are never split)."""
        self.window_s = window_s
        self.batches = 0
        """How many model calls were made (for tests and benchmarks)."""
        self._executor = executor
        self._queue: deque[tuple[SampleRequest, asyncio.Future[SampleResult]]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    async def sample(self, request: SampleRequest) -> SampleResult:
        """Queue one request and wait for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SampleResult] = loop.create_future()
        self._queue.append((request, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain(), name="tinker-local-sampler")
        return await future

    def _take(self) -> list[tuple[SampleRequest, asyncio.Future[SampleResult]]]:
        batch: list[tuple[SampleRequest, asyncio.Future[SampleResult]]] = []
        rows = 0
        while self._queue and (not batch or rows + self._queue[0][0].num_samples <= self.max_rows):
            request, future = self._queue.popleft()
            if future.done():  # its caller went away (cancelled)
                continue
            batch.append((request, future))
            rows += request.num_samples
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(self.window_s)
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                requests = [request for request, _ in batch]
                self.batches += 1
                try:
                    outcomes = await loop.run_in_executor(
                        self._executor, run_batch, self.base, requests
                    )
                except Exception as exc:  # the pool itself failed (shutdown, ...)
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._drainer = None
