"""A bounded soak under faults: ``python -m benchmarks.soak [--quick] [--faults KINDS]``.

20,000 samples with 512 in flight and 200 pipelined training steps (``forward_backward`` +
``optim_step``) run at once against the embedded server (zero-compute, in a process of its
own) while it injects a mix of faults into about 5% of the requests on the hot routes
(``asample``, ``retrieve_future(s)``, ``forward_backward``, ``optim_step``, heartbeats).
Faults are picked by count (one request in so many per kind, ``every``), not by time.

Every call is watched until it ends, and the run prints one table of counts:

- ``sent``: calls made; ``retried``: requests the server received marked as retries
  (``x-stainless-retry-count``); ``ok``: calls that returned a result;
- ``typed errors``: calls that raised a ``tinker_async`` error; ``untyped errors``: calls
  that raised anything else; ``hangs``: calls with no end within ``--hang-after`` s (or
  still running at ``--time-limit``);
- ``duplicates``: training steps the server applied more than once or that nobody called
  (its applied-seq ledger), and sample sequences delivered to two calls;
- ``lost``: training steps that returned a result but that the server never applied,
  and samples that returned no sequence; ``reordered``: steps applied out of call order.

It exits 1 unless untyped errors, hangs, duplicates, lost and reordered are all zero.
``--quick`` is a smoke size (1,000 samples, 64 in flight, 20 steps; a few seconds).
Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

HOT_ROUTES = r"^/api/v1/(asample|retrieve_futures?|forward_backward|optim_step|session_heartbeat)$"
#: One entry per fault kind: ``FaultInjector.add`` arguments (the route is added).
KINDS: dict[str, dict[str, Any]] = {
    "429": {"status": 429, "retry_after": 0.1},
    "429-bare": {"status": 429},
    "5xx": {"status": 503},
    "drop-before": {"drop_connection": True},
    "drop-after": {"drop_connection": "after"},
    "cut": {"mangle": "cut"},
    "cut-zstd": {"mangle": "cut", "zstd": True},
    "stall": {"stall": True, "delay_s": 2.0},
    "truncate": {"mangle": "truncate"},
    "garbage": {"mangle": "garbage"},
}
#: The kinds every call is expected to survive today; ``truncate`` and ``garbage`` hit
#: library bugs listed in the fault suite (``tests/test_faults.py``, xfail markers).
SAFE = ("429", "429-bare", "5xx", "drop-before", "drop-after", "cut", "cut-zstd", "stall")
MODEL = "local/byte-lm"


@dataclass
class Size:
    samples: int
    concurrency: int
    steps: int
    depth: int  # training steps in flight (submitted, results not yet read)


FULL = Size(samples=20_000, concurrency=512, steps=200, depth=8)
QUICK = Size(samples=1_000, concurrency=64, steps=20, depth=4)


# ------------------------------------------------------------------------- server process


class ServerProcess:
    """The embedded server in a child process, driven by one JSON line per command."""

    def __init__(self) -> None:
        # The package root, so that ``-m benchmarks.soak`` resolves from any directory.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.soak", "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        hello = self._reply()
        self.url: str = hello["url"]
        self.api_key: str = hello["api_key"]

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)

    def _reply(self) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = json.loads(self._lines.get(timeout=120))
        except queue.Empty:
            raise RuntimeError("the soak server did not answer within 120 s") from None
        if "error" in reply:
            raise RuntimeError(f"soak server: {reply['error']}")
        return reply

    def call(self, **command: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.call(cmd="quit")
            except (RuntimeError, OSError):
                pass
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()


def _serve() -> int:
    """The child: a zero-compute server answering commands on stdin."""
    from tinker_async.local import LocalServer

    srv = LocalServer(zero_compute=True, session_timeout_s=900.0,
                      max_recorded_requests=2_000_000).start_in_thread()
    rules: dict[str, Any] = {}

    def say(reply: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    say({"url": srv.url, "api_key": srv.api_key})
    for line in sys.stdin:
        command = json.loads(line)
        name = command.get("cmd")
        try:
            if name == "faults":
                for kind, spec in command["kinds"].items():
                    rules[kind] = srv.faults.add(**spec)
                say({"ok": True})
            elif name == "clear":
                srv.faults.clear()
                say({"ok": True})
            elif name == "report":
                requests = srv.requests
                say({
                    "hits": {kind: rule.hits for kind, rule in rules.items()},
                    "requests": len(requests),
                    "retried": sum(1 for r in requests if "x-stainless-retry-count" in r.headers),
                    "ledger": {m: [list(e) for e in entries]
                               for m, entries in srv.ledgers().items()},
                })
            elif name == "quit":
                say({"ok": True})
                break
            else:
                say({"error": f"unknown command {name!r}"})
        except Exception as exc:
            say({"error": f"{type(exc).__name__}: {exc}"})
    srv.stop(timeout=10)
    return 0


def fault_rules(kinds: Sequence[str], rate: float) -> dict[str, dict[str, Any]]:
    """``faults.add`` arguments for each kind: together they hit about ``rate`` of the
    requests on the hot routes, each kind one request in ``every`` (staggered by ``skip``)."""
    every = max(1, round(len(kinds) / rate))
    return {kind: {"path_pattern": HOT_ROUTES, "count": None, "every": every, "skip": i,
                   **KINDS[kind]} for i, kind in enumerate(kinds)}


# --------------------------------------------------------------------------------- client


@dataclass
class Tally:
    """How the calls ended."""

    sent: int = 0
    ok: int = 0
    typed: int = 0
    untyped: int = 0
    hangs: int = 0
    typed_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    untyped_kinds: collections.Counter[str] = field(default_factory=collections.Counter)


class Watch:
    """Runs calls with a hang guard and tallies their ends."""

    def __init__(self, tally: Tally, hang_after: float) -> None:
        self.tally = tally
        self.hang_after = hang_after

    async def call(self, work: Awaitable[T], *, new: bool = True,
                   final: bool = True) -> tuple[bool, T | None]:
        """``(True, value)``, or ``(False, None)`` after a typed/untyped error or a hang.

        A call in two parts (a training submit, then its result) is one call: ``new`` for
        the first part counts it as sent, ``final`` for the last counts it as ok.
        """
        from tinker_async.errors import TinkerError

        if new:
            self.tally.sent += 1
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=self.hang_after)
        if not done:
            task.cancel()
            self.tally.hangs += 1
            return False, None
        if task.cancelled():
            self.tally.untyped += 1
            self.tally.untyped_kinds["CancelledError"] += 1
            return False, None
        exc = task.exception()
        if exc is None:
            if final:
                self.tally.ok += 1
            return True, task.result()
        name = f"{type(exc).__module__}.{type(exc).__name__}"
        if isinstance(exc, TinkerError):
            self.tally.typed += 1
            self.tally.typed_kinds[name] += 1
        else:
            self.tally.untyped += 1
            self.tally.untyped_kinds[f"{name}: {str(exc)[:80]}"] += 1
        return False, None


@dataclass
class Step:
    tag: str
    ok: bool = False
    ended: bool = False


async def sampling(svc: Any, size: Size, watch: Watch, sequence_ids: list[str],
                   empty: list[int], adaptive: bool) -> float:
    """Run the samples; return how long they took."""
    import tinker_async as tinker

    started = time.monotonic()
    sc = await svc.create_sampling_client_async(base_model=MODEL)
    if not adaptive:
        # Injected 429s and stalls read as congestion to the adaptive admission control,
        # which would then hold most samples back in the client: keep them in flight.
        sc.set_max_concurrency(size.concurrency)
    prompt = tinker.ModelInput.from_ints([1, 2, 3, 4])
    params = tinker.SamplingParams(max_tokens=4, temperature=1.0)
    left = iter(range(size.samples))

    async def worker() -> None:
        for _ in left:
            ok, result = await watch.call(sc.sample_async(prompt, 1, params))
            if ok:
                assert result is not None
                if not result.sequences:
                    empty[0] += 1
                sequence_ids.extend(s.sequence_id for s in result.sequences if s.sequence_id)

    await asyncio.gather(*(worker() for _ in range(size.concurrency)))
    return time.monotonic() - started


async def training(svc: Any, size: Size, watch: Watch) -> tuple[str, list[Step], float]:
    """Run the training steps; return the model, its steps and how long they took."""
    import tinker_async as tinker
    from tinker_async.local._ledger import lr_tag, tokens_tag

    started = time.monotonic()
    tc = await svc.create_lora_training_client_async(MODEL, rank=4)
    steps: list[Step] = []
    pending: collections.deque[tuple[Step, Any]] = collections.deque()

    async def read_oldest() -> None:
        step, future = pending.popleft()
        step.ok, _ = await watch.call(future, new=False)
        step.ended = True

    for i in range(size.steps):
        tokens = [1 + i % 250, 1 + (i // 250) % 250, 3, 4, 5, 6]
        data = [tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]),
                             loss_fn_inputs={"target_tokens": tokens[1:],
                                             "weights": [1.0] * 5})]
        lr = 1e-4 * (1 + i / 10_000)
        fb = Step(tokens_tag(d.model_input.to_ints() for d in data))
        opt = Step(lr_tag(lr))
        submits: list[tuple[Step, Callable[[], Awaitable[Any]]]] = [
            (fb, functools.partial(tc.forward_backward_async, data, "cross_entropy")),
            (opt, functools.partial(tc.optim_step_async,
                                    tinker.AdamParams(learning_rate=lr))),
        ]
        for step, submit in submits:
            steps.append(step)
            # Submitted now, its result read later: one call, watched in two parts.
            accepted, future = await watch.call(submit(), final=False)
            if accepted:
                pending.append((step, future))
            else:
                step.ended = True
        while len(pending) > 2 * size.depth:
            await read_oldest()
    while pending:
        await read_oldest()
    return tc.model_id, steps, time.monotonic() - started


def compare(ledger: list[list[Any]], steps: list[Step]) -> tuple[int, int, int]:
    """(duplicates, lost, reordered) of the training steps against the server's ledger."""
    tags = [entry[2] for entry in ledger]
    seqs = [entry[0] for entry in ledger]
    counts = collections.Counter(tags)
    known = {s.tag for s in steps}
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    duplicates += sum(1 for tag in tags if tag not in known)
    duplicates += len(seqs) - len(set(seqs))
    lost = sum(1 for s in steps if s.ok and counts[s.tag] == 0)
    applied_order = list(dict.fromkeys(tags))
    called_order = [s.tag for s in steps if s.tag in counts]
    # (Foreign tags, already counted as duplicates, may make the two lists differ in length.)
    reordered = sum(1 for a, b in zip(applied_order, called_order, strict=False) if a != b)
    reordered += sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    return duplicates, lost, reordered


async def drive(server: ServerProcess, size: Size, hang_after: float,
                time_limit: float, adaptive: bool) -> dict[str, Any]:
    import tinker_async as tinker

    tally = Tally()
    watch = Watch(tally, hang_after)
    sequence_ids: list[str] = []
    empty = [0]
    started = time.monotonic()
    async with tinker.ServiceClient(base_url=server.url, api_key=server.api_key) as svc:
        await svc.connect_async()
        work = asyncio.gather(sampling(svc, size, watch, sequence_ids, empty, adaptive),
                              training(svc, size, watch))
        done, _ = await asyncio.wait({work}, timeout=time_limit)
        if not done:
            work.cancel()
            tally.hangs += 1  # the run itself did not end in time
            model_id: str | None = None
            steps: list[Step] = []
            sampling_s = training_s = float("nan")
        else:
            sampling_s, (model_id, steps, training_s) = work.result()
    elapsed = time.monotonic() - started
    report = server.call(cmd="report")
    ledger = report["ledger"].get(model_id, []) if model_id else []
    duplicates, lost, reordered = compare(ledger, steps)
    duplicates += len(sequence_ids) - len(set(sequence_ids))
    lost += empty[0]
    return {"tally": tally, "elapsed": elapsed, "report": report, "duplicates": duplicates,
            "lost": lost, "reordered": reordered, "applied": len(ledger), "steps": len(steps),
            "sampling_s": sampling_s, "training_s": training_s}


def render(result: dict[str, Any], size: Size, kinds: Sequence[str], rate: float) -> str:
    tally: Tally = result["tally"]
    report = result["report"]
    rows = [
        ("sent", tally.sent), ("retried", report["retried"]), ("ok", tally.ok),
        ("typed errors", tally.typed), ("untyped errors", tally.untyped),
        ("hangs", tally.hangs), ("duplicates", result["duplicates"]),
        ("lost", result["lost"]), ("reordered", result["reordered"]),
    ]
    lines = [
        f"soak: {size.samples} samples ({size.concurrency} in flight), {size.steps} training "
        f"steps ({size.depth} in flight), faults {','.join(kinds) or 'none'} at "
        f"{rate:.1%} of hot-route requests; {result['elapsed']:.1f} s, "
        f"{report['requests']} requests served",
        "",
        "| count | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "faults injected: " + ", ".join(f"{k} {n}" for k, n in report["hits"].items()),
        f"training: {result['steps']} calls, {result['applied']} applied by the server, "
        f"{result['training_s']:.1f} s; sampling {result['sampling_s']:.1f} s",
    ]
    for title, kinds_seen in (("typed", tally.typed_kinds), ("untyped", tally.untyped_kinds)):
        for name, n in kinds_seen.most_common(8):
            lines.append(f"  {title}: {n} x {name}")
    return "\n".join(lines)


def failed(result: dict[str, Any]) -> bool:
    tally: Tally = result["tally"]
    return bool(tally.untyped or tally.hangs or result["duplicates"] or result["lost"]
                or result["reordered"])


@contextmanager
def server_process() -> Iterator[ServerProcess]:
    server = ServerProcess()
    try:
        yield server
    finally:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke size (a few seconds)")
    parser.add_argument("--faults", default="all",
                        help=f"comma-separated kinds of {sorted(KINDS)}, 'safe' "
                             f"({','.join(SAFE)}), 'all' (default) or 'none'")
    parser.add_argument("--rate", type=float, default=0.05,
                        help="share of hot-route requests that get a fault (default 0.05)")
    parser.add_argument("--samples", type=int, help="override the number of samples")
    parser.add_argument("--concurrency", type=int, help="override the samples in flight")
    parser.add_argument("--steps", type=int, help="override the training steps")
    parser.add_argument("--hang-after", type=float, default=300.0, metavar="S",
                        help="a call with no end after this long is a hang (default 300)")
    parser.add_argument("--time-limit", type=float, default=900.0, metavar="S",
                        help="the whole run must end within this (default 900)")
    parser.add_argument("--adaptive", action="store_true",
                        help="keep the sampler's adaptive admission control (default: a "
                             "fixed limit of --concurrency, so that many are in flight)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve()
    names = {"all": tuple(KINDS), "safe": SAFE, "none": ()}
    kinds = names[args.faults] if args.faults in names else tuple(
        k.strip() for k in args.faults.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; known: {sorted(KINDS)}")
    if not 0 < args.rate <= 1:
        parser.error("--rate must be in (0, 1]")
    base = QUICK if args.quick else FULL
    size = Size(samples=args.samples or base.samples,
                concurrency=args.concurrency or base.concurrency,
                steps=args.steps if args.steps is not None else base.steps, depth=base.depth)
    with server_process() as server:
        if kinds:
            server.call(cmd="faults", kinds=fault_rules(kinds, args.rate))
        result = asyncio.run(drive(server, size, args.hang_after, args.time_limit,
                                   args.adaptive))
    print(render(result, size, kinds, args.rate if kinds else 0.0), flush=True)
    if failed(result):
        print("FAIL: untyped errors, hangs, duplicates, lost and reordered must all be 0")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
