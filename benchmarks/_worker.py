"""One measurement in a fresh interpreter: ``python -m benchmarks._worker '<json spec>'``.

Prints ``RESULT <json>`` at the end (and ``PROBE <json>`` lines when it wants the parent
to look at the server at that moment). Imports stay minimal until the task has started,
so that import time, RSS and threads belong to the contender alone.

Tasks (``spec["task"]``):

- ``import``: wall time and RSS of importing the contender's library.
- ``sample``: ``count`` samples at ``concurrency`` in flight: throughput, client CPU per
  request, latency percentiles, peak OS / Python threads, peak RSS.
- ``inflight``: RSS per in-flight sample, with ``count`` samples held by the server.
- ``idle``: client CPU while a session is open and nothing else happens.
- ``encode``: forward_backward protobuf encoding of ``datums`` x ``tokens`` (no server).
- ``fb``: forward_backward of ``datums`` x ``tokens`` against the server, end to end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _status() -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads from /proc/self/status."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def _cpu() -> float:
    """CPU seconds (user + system) of every thread of this process so far."""
    return time.process_time()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _emit(kind: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(f"{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def _ask(payload: dict[str, Any]) -> str:
    """A PROBE the parent must answer (one line on our stdin) before we go on."""
    _emit("PROBE", payload)
    return sys.stdin.readline().strip()


class _Peaks:
    """Peak OS threads and Python threads, sampled by whoever calls ``sample()``."""

    def __init__(self) -> None:
        self.os_threads = 0
        self.py_threads = 0

    def sample(self) -> None:
        import threading

        self.os_threads = max(self.os_threads, len(os.listdir("/proc/self/task")))
        self.py_threads = max(self.py_threads, threading.active_count())


# ----------------------------------------------------------------------------- import


def task_import(spec: dict[str, Any]) -> dict[str, Any]:
    module = {"ours": "tinker_async", "official": "tinker", "floor": "aiohttp"}[spec["contender"]]
    before = _status()["VmRSS"]
    started = time.perf_counter()
    __import__(module)
    wall = time.perf_counter() - started
    after = _status()
    return {"wall_s": wall, "rss_kib": after["VmRSS"], "rss_delta_kib": after["VmRSS"] - before,
            "threads": after["Threads"], "modules": len(sys.modules)}


# ----------------------------------------------------------------------------- sampling


async def _drive_async(sample: Any, concurrency: int, count: int, deadline_s: float,
                       peaks: _Peaks | None) -> tuple[list[float], int, str | None]:
    import asyncio

    latencies: list[float] = []
    issued = 0
    errors = 0
    first_error: str | None = None
    stop_at = time.perf_counter() + deadline_s
    perf = time.perf_counter

    async def worker() -> None:
        nonlocal issued, errors, first_error
        while issued < count and perf() < stop_at:
            issued += 1
            started = perf()
            try:
                await sample()
            except Exception as exc:
                errors += 1
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            latencies.append(perf() - started)

    async def watch() -> None:
        while True:
            if peaks is not None:
                peaks.sample()
            await asyncio.sleep(0.05)

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        watcher.cancel()
    return latencies, errors, first_error


def _drive_threads(submit: Any, concurrency: int, count: int, deadline_s: float,
                   peaks: _Peaks | None, max_threads: int) -> tuple[list[float], int, str | None]:
    """``concurrency`` samples in flight from ``min(concurrency, max_threads)`` threads,
    each keeping a window of APIFutures and blocking on the oldest's ``.result()``."""
    import collections
    import threading

    threads = min(concurrency, max_threads)
    window = -(-concurrency // threads)
    latencies: list[float] = []
    lock = threading.Lock()
    state = {"issued": 0, "errors": 0}
    first_error: list[str] = []
    stop_at = time.perf_counter() + deadline_s
    perf = time.perf_counter

    def take() -> bool:
        with lock:
            if state["issued"] >= count or perf() >= stop_at:
                return False
            state["issued"] += 1
            return True

    def run() -> None:
        pending: collections.deque[tuple[float, Any]] = collections.deque()
        while True:
            while len(pending) < window and take():
                pending.append((perf(), submit()))
            if not pending:
                return
            started, fut = pending.popleft()
            try:
                fut.result()
            except Exception as exc:
                with lock:
                    state["errors"] += 1
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            latencies.append(perf() - started)

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        while thread.is_alive():
            if peaks is not None:
                peaks.sample()
            thread.join(0.05)
    return latencies, state["errors"], (first_error[0] if first_error else None)


def _summary(latencies: list[float], errors: int, first_error: str | None, wall: float,
             cpu: float, peaks: _Peaks) -> dict[str, Any]:
    status = _status()
    n = len(latencies)
    return {
        "n": n, "errors": errors, "first_error": first_error, "wall_s": wall, "cpu_s": cpu,
        "throughput": n / wall if wall > 0 else 0.0,
        "cpu_per_req_ms": 1000 * cpu / n if n else float("nan"),
        "p50_ms": 1000 * _percentile(latencies, 50), "p99_ms": 1000 * _percentile(latencies, 99),
        "mean_ms": 1000 * sum(latencies) / n if n else float("nan"),
        "os_threads_peak": peaks.os_threads, "py_threads_peak": peaks.py_threads,
        "rss_peak_kib": status["VmHWM"], "rss_end_kib": status["VmRSS"],
    }


def task_sample(spec: dict[str, Any]) -> dict[str, Any]:
    from . import _contenders as c

    name = spec["contender"]
    concurrency, count = int(spec["concurrency"]), int(spec["count"])
    warmup, deadline = int(spec.get("warmup", 20)), float(spec.get("deadline_s", 60))
    if name in c.SYNC_CONTENDERS:
        sync = c.OursSyncSampler(spec["url"], spec["api_key"], **spec.get("client_kwargs", {}))
        _drive_threads(sync.submit, min(concurrency, warmup), warmup, 30, None,
                       int(spec.get("max_threads", 64)))
        peaks = _Peaks()
        peaks.sample()
        _emit("PROBE", {"phase": "start"})
        t_start = time.time()
        cpu0, wall0 = _cpu(), time.perf_counter()
        lat, errors, first = _drive_threads(sync.submit, concurrency, count, deadline, peaks,
                                            int(spec.get("max_threads", 64)))
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        t_end = time.time()
        _emit("PROBE", {"phase": "end"})
        out = _summary(lat, errors, first, wall, cpu, peaks)
        out["t_start"], out["t_end"] = t_start, t_end
        out["driver_threads"] = min(concurrency, int(spec.get("max_threads", 64)))
        _close_quietly(sync.close)
        return out

    import asyncio

    async def main() -> dict[str, Any]:
        sampler = await c.make_async_sampler(name, spec["url"], spec["api_key"],
                                             connections=max(100, concurrency),
                                             client_kwargs=spec.get("client_kwargs"))
        await _drive_async(sampler.sample, min(concurrency, warmup), warmup, 30, None)
        peaks = _Peaks()
        peaks.sample()
        _emit("PROBE", {"phase": "start"})
        t_start = time.time()
        cpu0, wall0 = _cpu(), time.perf_counter()
        lat, errors, first = await _drive_async(sampler.sample, concurrency, count, deadline,
                                                peaks)
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        t_end = time.time()
        _emit("PROBE", {"phase": "end"})
        out = _summary(lat, errors, first, wall, cpu, peaks)
        out["t_start"], out["t_end"] = t_start, t_end
        out["driver_threads"] = 0
        try:
            await asyncio.wait_for(sampler.close(), 10)
        except Exception:
            pass
        return out

    return asyncio.run(main())


def _close_quietly(fn: Any) -> None:
    try:
        fn()
    except Exception:
        pass


# ----------------------------------------------------------------------------- in flight


def task_inflight(spec: dict[str, Any]) -> dict[str, Any]:
    """RSS growth while ``count`` samples wait on the server.

    After a warm-up, the worker asks the parent to make the server hold samples
    (``PROBE arm``), launches ``count`` samples at once, samples its RSS for ``window_s``,
    asks the parent to count what the server holds (``PROBE held``), then reports and
    exits at once: the samples still in flight are not waited for (nor cancelled).
    """
    import gc

    from . import _contenders as c

    name, count = spec["contender"], int(spec["count"])
    window = float(spec.get("window_s", 4.0))
    warmup = int(spec.get("warmup", 10))
    peaks = _Peaks()

    def finish(base: int, peak: int, calls_return_s: float) -> None:
        held = _ask({"phase": "held"})
        _emit("RESULT", {"n": count, "rss_base_kib": base, "rss_peak_kib": peak,
                         "per_future_kib": (peak - base) / count,
                         "calls_return_s": calls_return_s, "os_threads_peak": peaks.os_threads,
                         "server_pending": int(held or 0)})
        os._exit(0)

    if name in c.SYNC_CONTENDERS:
        sync = c.OursSyncSampler(spec["url"], spec["api_key"], **spec.get("client_kwargs", {}))
        _drive_threads(sync.submit, 1, warmup, 30, None, 1)
        gc.collect()
        _ask({"phase": "arm"})
        base = _status()["VmRSS"]
        started = time.perf_counter()
        futures = [sync.submit() for _ in range(count)]  # plain calls: no thread each
        calls_return_s = time.perf_counter() - started
        peak = base
        while time.perf_counter() - started < window:
            time.sleep(0.1)
            peak = max(peak, _status()["VmRSS"])
            peaks.sample()
        assert len(futures) == count
        finish(base, peak, calls_return_s)

    import asyncio

    async def main() -> None:
        sampler = await c.make_async_sampler(name, spec["url"], spec["api_key"],
                                             connections=max(100, count),
                                             client_kwargs=spec.get("client_kwargs"))
        await _drive_async(sampler.sample, 1, warmup, 30, None)
        gc.collect()
        _ask({"phase": "arm"})
        base = _status()["VmRSS"]
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(sampler.sample()) for _ in range(count)]
        calls_return_s = time.perf_counter() - started
        peak = base
        while time.perf_counter() - started < window:
            await asyncio.sleep(0.1)
            peak = max(peak, _status()["VmRSS"])
            peaks.sample()
        assert len(tasks) == count
        finish(base, peak, calls_return_s)

    asyncio.run(main())
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- idle


def task_idle(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU of a client with a live session (and a sampling client) doing nothing."""
    from . import _contenders as c

    name, seconds = spec["contender"], float(spec.get("seconds", 8.0))
    if name in c.SYNC_CONTENDERS:
        sync = c.OursSyncSampler(spec["url"], spec["api_key"])
        for _ in range(5):
            sync.submit().result()
        time.sleep(0.5)
        cpu0 = _cpu()
        time.sleep(seconds)
        cpu = _cpu() - cpu0
        threads = _status()["Threads"]
        _close_quietly(sync.close)
        return {"seconds": seconds, "cpu_s": cpu, "cpu_ms_per_s": 1000 * cpu / seconds,
                "threads": threads}

    import asyncio

    async def main() -> dict[str, Any]:
        sampler = await c.make_async_sampler(name, spec["url"], spec["api_key"], connections=100)
        for _ in range(5):
            await sampler.sample()
        beat = None
        if isinstance(sampler, c.FloorSampler):  # a bare client heartbeats by hand
            beat = asyncio.get_running_loop().create_task(sampler.heartbeat_forever())
        await asyncio.sleep(0.5)
        cpu0 = _cpu()
        await asyncio.sleep(seconds)
        cpu = _cpu() - cpu0
        threads = _status()["Threads"]
        if beat is not None:
            beat.cancel()
        try:
            await asyncio.wait_for(sampler.close(), 10)
        except Exception:
            pass
        return {"seconds": seconds, "cpu_s": cpu, "cpu_ms_per_s": 1000 * cpu / seconds,
                "threads": threads}

    return asyncio.run(main())


# ----------------------------------------------------------------------------- training


def task_encode(spec: dict[str, Any]) -> dict[str, Any]:
    """Build ``datums`` x ``tokens`` datums from prepared token lists and arrays, then
    encode them; each repeat on fresh objects (so nothing an encoder may cache on the
    objects carries over). Both steps timed."""
    import gc

    from . import _contenders as c

    lib, encode = c.encoder(spec["contender"])
    numpy_tokens = spec["contender"] == "ours_np"
    encode(c.make_datums(lib, 8, 16, numpy_tokens))  # first-call costs (imports) untimed
    walls, builds, cpus = [], [], []
    size = 0
    for _ in range(int(spec.get("repeat", 3))):
        inputs = c.datum_inputs(int(spec["datums"]), int(spec["tokens"]), numpy_tokens)
        gc.collect()
        wall0 = time.perf_counter()
        data = c.build_datums(lib, inputs)
        builds.append(time.perf_counter() - wall0)
        gc.collect()
        cpu0, wall0 = _cpu(), time.perf_counter()
        body = encode(data)
        walls.append(time.perf_counter() - wall0)
        cpus.append(_cpu() - cpu0)
        size = len(body)
        del body, data, inputs
    mid = len(walls) // 2
    return {"wall_s": sorted(walls)[mid], "cpu_s": sorted(cpus)[mid],
            "build_s": sorted(builds)[mid], "bytes": size, "walls": walls}


def task_fb(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from . import _contenders as c

    name = spec["contender"]

    async def main() -> dict[str, Any]:
        service, tc, lib = await c.training_client(name, spec["url"], spec["api_key"])
        data = c.make_datums(lib, int(spec["datums"]), int(spec["tokens"]))
        await c.forward_backward(name, tc, data[:4])  # warm up the path
        accepted, walls, cpus = [], [], []
        for _ in range(int(spec.get("repeat", 3))):
            cpu0, wall0 = _cpu(), time.perf_counter()
            took, result = await c.forward_backward(name, tc, data)
            walls.append(time.perf_counter() - wall0)
            cpus.append(_cpu() - cpu0)
            accepted.append(took)
            assert len(result.loss_fn_outputs) == len(data)
        mid = len(walls) // 2
        try:
            if name == "ours":
                await asyncio.wait_for(service.close_async(), 10)
            else:
                await asyncio.wait_for(
                    asyncio.wrap_future(service.close("success").future()), 10)
        except Exception:
            pass
        return {"wall_s": sorted(walls)[mid], "cpu_s": sorted(cpus)[mid],
                "accepted_s": sorted(accepted)[mid], "walls": walls,
                "rss_peak_kib": _status()["VmHWM"]}

    return asyncio.run(main())


TASKS = {"import": task_import, "sample": task_sample, "inflight": task_inflight,
         "idle": task_idle, "encode": task_encode, "fb": task_fb}


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("profile"):  # a cProfile dump of the whole task, for digging in
        import cProfile

        prof = cProfile.Profile()
        result = prof.runcall(TASKS[spec["task"]], spec)
        prof.dump_stats(spec["profile"])
    else:
        result = TASKS[spec["task"]](spec)
    _emit("RESULT", result)
    sys.stdout.flush()
    sys.stderr.flush()
    # Clients may leave daemon threads or pools behind; they are not measured any more.
    os._exit(0)


if __name__ == "__main__":
    main()
