"""Scaling across processes: aggregate samples/s and client CPU per sample for 1, 2 and 4
worker processes (``multiprocessing`` and Ray), with the single-process figure beside them.

``python -m benchmarks.scaling [--seconds S] [--concurrency C] [--workers 1,2,4] [--no-ray]``

Against the zero-compute server in a process of its own (``benchmarks/_server.py``), the
driver makes one SamplingClient and hands it to the workers as an ordinary argument (a
pickle without the key; the workers read ``TINKER_API_KEY`` from their environment, on Ray
through ``runtime_env``). Each worker keeps ``--concurrency`` samples in flight with
``await sc.sample_async(...)`` on its own event loop. Workers first warm up (join the
session, open connections), then all start at the same instant and sample for
``--seconds``. Reported: samples/s summed over the workers, client CPU per sample (the
workers' ``time.process_time()`` over the window, summed, divided by the samples; on Ray
that includes Ray's own threads in the actor process), and the server's CPU per sample.
"single process" is the same loop in a fresh interpreter of its own, with no pool.

Bounded: every row runs ``--seconds`` (default 2) after its warm-up, ``--rounds`` times
(default 3, the order reversed each round; the median round is kept), about a minute and
a half in all with Ray's start. On a 2-core machine the server shares the cores with the
workers, so aggregate throughput is capped by the server; CPU per sample is the figure
that says what the client costs per process. "server busy" is the server process's CPU
time over the window (100% is one core): near it, the server is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ._contenders import BASE_MODEL, MAX_TOKENS, PROMPT_TOKENS
from .run import Server, log

ROOT = Path(__file__).resolve().parent.parent
_JOIN_TIMEOUT_S = 120.0


# ------------------------------------------------------------------- one worker's loop


async def _warm_up(sc: Any, concurrency: int) -> None:
    """Join the session and open the connections the measured window will use."""
    import tinker_async as tinker

    prompt = tinker.ModelInput.from_ints(PROMPT_TOKENS)
    params = tinker.SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0)
    await asyncio.gather(*(sc.sample_async(prompt, 1, params) for _ in range(concurrency)))


async def _measure(sc: Any, concurrency: int, start_at: float, seconds: float
                   ) -> dict[str, float]:
    """From ``start_at`` (``time.time()``), keep ``concurrency`` samples in flight for
    ``seconds``; the samples finished, the wall time and this process's CPU time."""
    import tinker_async as tinker

    prompt = tinker.ModelInput.from_ints(PROMPT_TOKENS)
    params = tinker.SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + seconds
    done = 0

    async def lane() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await sc.sample_async(prompt, 1, params)
            done += 1

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return {"samples": done, "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - cpu0, "pid": os.getpid()}


def _mp_worker(sc: Any, concurrency: int, seconds: float, conn: Connection) -> None:
    """A multiprocessing worker: warm up, say so, wait for the start time, measure."""

    async def main() -> None:
        await _warm_up(sc, concurrency)
        conn.send("ready")
        start_at = conn.recv()
        conn.send(await _measure(sc, concurrency, start_at, seconds))

    asyncio.run(main())


class RayWorker:
    """A Ray actor doing what ``_mp_worker`` does (its async methods share one loop)."""

    def __init__(self, sc: Any, concurrency: int) -> None:
        self.sc = sc
        self.concurrency = concurrency

    async def warm_up(self) -> int:
        await _warm_up(self.sc, self.concurrency)
        return os.getpid()

    async def measure(self, start_at: float, seconds: float) -> dict[str, float]:
        return await _measure(self.sc, self.concurrency, start_at, seconds)


# ----------------------------------------------------------------- the configurations


def _summary(kind: str, workers: int, parts: list[dict[str, float]], server_cpu_s: float
             ) -> dict[str, Any]:
    samples = sum(p["samples"] for p in parts)
    wall = max(p["wall_s"] for p in parts)
    cpu = sum(p["cpu_s"] for p in parts)
    return {"kind": kind, "workers": workers, "samples": samples, "wall_s": wall,
            "samples_per_s": samples / wall if wall else 0.0,
            "client_cpu_ms_per_sample": 1000 * cpu / samples if samples else float("nan"),
            "server_cpu_ms_per_sample": 1000 * server_cpu_s / samples if samples else float("nan"),
            "server_busy": server_cpu_s / wall if wall else 0.0,
            "pids": len({p["pid"] for p in parts})}


def run_single(server: Server, blob: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    """The same loop in one fresh interpreter, no pool: the baseline."""
    code = (
        "import asyncio, json, pickle, sys, time\n"
        "from benchmarks.scaling import _measure, _warm_up\n"
        "sc = pickle.loads(sys.stdin.buffer.read())\n"
        "async def main():\n"
        f"    await _warm_up(sc, {concurrency})\n"
        f"    return await _measure(sc, {concurrency}, time.time() + 0.2, {seconds})\n"
        "print('RESULT', json.dumps(asyncio.run(main())))\n")
    env = {**os.environ, "TINKER_API_KEY": server.api_key, "PYTHONPATH": str(ROOT)}
    cpu0 = server.cpu_s()
    proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                          cwd=ROOT, env=env, timeout=_JOIN_TIMEOUT_S)
    server_cpu = server.cpu_s() - cpu0  # includes the warm-up: a small overstatement
    out = proc.stdout.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"single-process run failed:\n{out}\n{proc.stderr.decode()}")
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return _summary("single process", 1, [json.loads(line[7:])], server_cpu)


def run_multiprocessing(server: Server, sc: Any, workers: int, concurrency: int,
                        seconds: float, method: str) -> dict[str, Any]:
    ctx: Any = multiprocessing.get_context(method)
    os.environ["TINKER_API_KEY"] = server.api_key  # the workers' credential
    pipes, procs = [], []
    for _ in range(workers):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_mp_worker, args=(sc, concurrency, seconds, theirs),
                           daemon=True)
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(_JOIN_TIMEOUT_S) or pipe.recv() != "ready":
                raise RuntimeError("a multiprocessing worker did not warm up")
        cpu0 = server.cpu_s()
        start_at = time.time() + 0.2
        for pipe in pipes:
            pipe.send(start_at)
        parts = []
        for pipe in pipes:
            if not pipe.poll(seconds + _JOIN_TIMEOUT_S):
                raise RuntimeError("a multiprocessing worker did not report")
            parts.append(pipe.recv())
        server_cpu = server.cpu_s() - cpu0
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return _summary(f"multiprocessing ({method})", workers, parts, server_cpu)


def run_ray(ray: Any, server: Server, sc: Any, workers: int, concurrency: int,
            seconds: float) -> dict[str, Any]:
    actor_class = ray.remote(num_cpus=0)(RayWorker)
    actors = [actor_class.remote(sc, concurrency) for _ in range(workers)]
    try:
        ray.get([a.warm_up.remote() for a in actors], timeout=_JOIN_TIMEOUT_S)
        cpu0 = server.cpu_s()
        start_at = time.time() + 0.2
        parts = ray.get([a.measure.remote(start_at, seconds) for a in actors],
                        timeout=seconds + _JOIN_TIMEOUT_S)
        server_cpu = server.cpu_s() - cpu0
    finally:
        for actor in actors:
            ray.kill(actor)
    return _summary("Ray actors", workers, parts, server_cpu)


def measure_all(args: argparse.Namespace, server: Server, sc: Any, blob: bytes,
                counts: list[int], ray: Any) -> list[dict[str, Any]]:
    """Every row ``args.rounds`` times, the order reversed each round (a shared machine's
    load drifts); per row, the round with the median samples/s."""
    c, secs = args.concurrency, args.seconds
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("single process", functools.partial(run_single, server, blob, c, secs))]
    for n in counts:
        jobs.append((f"multiprocessing ({args.method}) x{n}", functools.partial(
            run_multiprocessing, server, sc, n, c, secs, args.method)))
    if ray is not None:
        for n in counts:
            jobs.append((f"Ray x{n}", functools.partial(run_ray, ray, server, sc, n, c, secs)))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in jobs}
    for round_ in range(args.rounds):
        for name, job in (jobs if round_ % 2 == 0 else jobs[::-1]):
            log(f"round {round_ + 1}/{args.rounds}: {name}")
            results[name].append(job())
    rows = []
    for name, _ in jobs:
        runs = sorted(results[name], key=lambda r: r["samples_per_s"])
        rows.append(runs[(len(runs) - 1) // 2])
    return rows


# ------------------------------------------------------------------------------ report


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["samples_per_s"] if rows and rows[0]["kind"] == "single process" else None
    head = ["setup", "processes", "samples/s", "vs single", "client CPU ms/sample",
            "server CPU ms/sample", "server busy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r['kind']} | {r['workers']} | {r['samples_per_s']:.0f} | {ratio} | "
            f"{r['client_cpu_ms_per_sample']:.3f} | {r['server_cpu_ms_per_sample']:.3f} | "
            f"{r['server_busy']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="measured window per row and round (default 2)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="samples in flight per worker process (default 64)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    parser.add_argument("--method", default="spawn", choices=["spawn", "forkserver", "fork"],
                        help="multiprocessing start method (default spawn)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeats of every row, in reversed order each time; the median "
                             "is kept (default 3)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    parser.add_argument("--json", type=Path, help="write the raw rows here")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    if args.seconds <= 0 or min(args.concurrency, args.rounds, *counts) < 1:
        parser.error("--seconds, --concurrency, --rounds and --workers must be positive")

    import tinker_async as tinker

    ray: Any
    try:
        import ray
    except ImportError:
        ray = None
        if not args.no_ray:
            log("Ray is not installed (pip install 'tinker-async[ray]'): no Ray rows")
    use_ray = ray is not None and not args.no_ray
    with Server() as server, tinker.ServiceClient(
            base_url=server.url, api_key=server.api_key) as service:
        sc = service.create_sampling_client(base_model=BASE_MODEL).result(60)
        blob = pickle.dumps(sc)
        assert server.api_key.encode() not in blob
        # Every row runs with the same processes around it: Ray's (idle) ones too.
        if use_ray:
            log("starting a local Ray cluster (2 CPUs)")
            ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"TINKER_API_KEY": server.api_key}})
        try:
            rows = measure_all(args, server, sc, blob, counts, ray if use_ray else None)
        finally:
            if use_ray:
                ray.shutdown()
    print(f"\nScaling: zero-compute server, {args.concurrency} samples in flight per "
          f"process, {args.seconds:g} s per row, median of {args.rounds} round(s), "
          f"{os.cpu_count()} CPUs shared with the server\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
