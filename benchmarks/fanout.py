"""Fan-out far above a server's capacity: wall time against the capacity-bound ideal.

``python -m benchmarks.fanout`` fires ``--count`` samples (10,000) at once at the embedded
server with a sampling capacity (``--capacity`` samples in flight, 64) and a fixed service
time per sample (``--service-time`` s, zero compute otherwise), and prints, for each
contender, the wall time of the fan-out (from firing the first call to the last result;
client set-up excluded) against the ideal ``count / capacity * service_time``, the 429s
the server gave, failures, client CPU and how busy the server was kept.

Contenders (each client in a fresh process, each against a fresh server process):

- ``ours``: tinker_async with its default adaptive admission control.
- ``ours_fixed``: tinker_async with ``max_concurrency`` set to the capacity (a user who
  knows the quota).
- ``official``: the official ``tinker`` 0.38 SDK (429 -> a 1 s backoff of the whole
  client, then at most 10 submits at a time for 10 s).
- ``raw_retry``: raw aiohttp sending every submit at once with the backpressure header,
  and on a 429 waiting ``Retry-After`` before resubmitting (no client-side limit).
- ``raw_queue``: raw aiohttp without the backpressure header: the server accepts all of
  them and queues them itself (its polls answer ``paused_rate_limit``); the server is
  never idle, at the cost of holding the whole fan-out.

``--quick`` is a smoke run (1,000 samples, 0.05 s). ``--only a,b`` picks contenders;
``--markdown PATH`` writes the table. Numbers from a shared machine are noisy: compare
the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE_MODEL = "local/byte-lm"
PROMPT_TOKENS = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 32]
MAX_TOKENS = 8
CONTENDERS = ("ours", "ours_fixed", "official", "raw_retry", "raw_queue")
LABELS = {
    "ours": "tinker_async (adaptive)",
    "ours_fixed": "tinker_async max_concurrency=capacity",
    "official": "official tinker 0.38",
    "raw_retry": "raw aiohttp, retry on 429",
    "raw_queue": "raw aiohttp, server-side queue",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- server


def serve(capacity: int, service_time: float) -> int:
    """The server process: one JSON line with the URL, then ``counts`` / ``quit`` on stdin."""
    from tinker_async.local import LocalServer, SampleCapacity
    from tinker_async.local._capacity import sample_slots

    srv = LocalServer(zero_compute=True, record_requests=False, session_timeout_s=900.0,
                      sample_capacity=SampleCapacity(per_model=capacity,
                                                     service_time_s=service_time))
    srv.start_in_thread()
    print(json.dumps({"url": srv.url, "api_key": srv.api_key, "pid": os.getpid()}), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "counts":
                counts = srv._on_loop(lambda: sample_slots(srv.context).counts())
                print(json.dumps(counts), flush=True)
            elif command == "quit":
                break
    finally:
        srv.stop(timeout=10)
    return 0


class Server:
    def __init__(self, capacity: int, service_time: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fanout", "--serve", "--capacity", str(capacity),
             "--service-time", str(service_time)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.url: str = info["url"]
        self.api_key: str = info["api_key"]
        self.pid: int = info["pid"]

    def counts(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("counts\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- clients

#: (wall, CPU) at the start and the end of the fan-out itself (set-up excluded)
_marks: dict[str, tuple[float, float]] = {}


def _mark(name: str) -> None:
    _marks[name] = (time.perf_counter(), time.process_time())



async def _ours(url: str, key: str, count: int, max_concurrency: int | None,
                ) -> tuple[list[Any], dict[str, Any]]:
    import tinker_async as tinker

    async with tinker.ServiceClient(base_url=url, api_key=key) as svc:
        sc = await svc.create_sampling_client_async(base_model=BASE_MODEL)
        if max_concurrency is not None:
            sc.set_max_concurrency(max_concurrency)
        prompt = tinker.ModelInput.from_ints(PROMPT_TOKENS)
        params = tinker.SamplingParams(max_tokens=MAX_TOKENS)
        _mark("start")
        results = await asyncio.gather(*(sc.sample_async(prompt, 1, params)
                                         for _ in range(count)), return_exceptions=True)
        _mark("end")
        stats = sc.stats()
    return results, {"rate_limited": stats.rate_limited, "requests": stats.requests,
                     "final_limit": stats.limit, "stats": repr(stats)}


async def _official(url: str, key: str, count: int) -> tuple[list[Any], dict[str, Any]]:
    import tinker

    service = tinker.ServiceClient(base_url=url, api_key=key)
    sc = await service.create_sampling_client(base_model=BASE_MODEL)
    prompt = tinker.ModelInput.from_ints(PROMPT_TOKENS)
    params = tinker.SamplingParams(max_tokens=MAX_TOKENS)
    _mark("start")
    results = await asyncio.gather(*(sc.sample(prompt=prompt, num_samples=1,
                                               sampling_params=params) for _ in range(count)),
                                   return_exceptions=True)
    _mark("end")
    try:
        await asyncio.wait_for(asyncio.wrap_future(service.close("success").future()), 10)
    except Exception:
        pass
    return results, {}


async def _raw(url: str, key: str, count: int, backpressure: bool,
               ) -> tuple[list[Any], dict[str, Any]]:
    import aiohttp

    base = url.rstrip("/") + "/api/v1/"
    refused = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
        headers={"X-API-Key": key}, timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
    ) as http:
        async def post(path: str, body: dict[str, Any], **headers: str) -> Any:
            async with http.post(base + path, json=body, headers=headers) as resp:
                resp.raise_for_status()
                return await resp.json()

        session = await post("create_session", {"tags": [], "user_metadata": {},
                                                "sdk_version": "0.38.0",
                                                "type": "create_session"})
        sampler = (await post("create_sampling_session", {
            "session_id": session["session_id"], "sampling_session_seq_id": 0,
            "base_model": BASE_MODEL, "type": "create_sampling_session"}))["sampling_session_id"]
        headers = {"X-Tinker-Sampling-Backpressure": "1"} if backpressure else {}

        async def one(seq: int) -> bytes:
            nonlocal refused
            body = {"num_samples": 1, "type": "sample", "sampling_session_id": sampler,
                    "seq_id": seq,
                    "prompt": {"chunks": [{"tokens": PROMPT_TOKENS, "type": "encoded_text"}]},
                    "sampling_params": {"temperature": 1.0, "top_k": -1, "top_p": 1.0,
                                        "max_tokens": MAX_TOKENS}}
            while True:
                async with http.post(base + "asample", json=body, headers=headers) as resp:
                    if resp.status == 429:
                        refused += 1
                        wait = float(resp.headers.get("retry-after-ms", "1000")) / 1000
                        await resp.read()
                        await asyncio.sleep(wait)
                        continue
                    resp.raise_for_status()
                    request_id = (await resp.json())["request_id"]
                    break
            poll = {"request_id": request_id, "allow_metadata_only": False}
            while True:
                async with http.post(base + "retrieve_future", json=poll,
                                     headers={"Accept": "application/x-protobuf"}) as resp:
                    payload = await resp.read()
                    if resp.content_type == "application/x-protobuf":
                        return payload
                    if resp.status >= 400 and resp.status != 408:
                        raise RuntimeError(f"retrieve_future: HTTP {resp.status}")

        _mark("start")
        results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
        _mark("end")
    return results, {"rate_limited": refused}


def client(name: str, url: str, key: str, count: int, capacity: int) -> int:
    """The client process: runs one contender, prints one RESULT line."""
    async def run() -> tuple[list[Any], dict[str, Any]]:
        if name == "ours":
            return await _ours(url, key, count, None)
        if name == "ours_fixed":
            return await _ours(url, key, count, capacity)
        if name == "official":
            return await _official(url, key, count)
        if name in ("raw_retry", "raw_queue"):
            return await _raw(url, key, count, backpressure=name == "raw_retry")
        raise ValueError(f"unknown contender {name!r}")

    results, extra = asyncio.run(run())
    (wall0, cpu0), (wall1, cpu1) = _marks["start"], _marks["end"]
    wall, cpu = wall1 - wall0, cpu1 - cpu0
    errors = [r for r in results if isinstance(r, BaseException)]
    out = {"wall_s": wall, "cpu_s": cpu, "completed": len(results) - len(errors),
           "errors": len(errors), "first_error": repr(errors[0])[:300] if errors else None,
           **extra}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ------------------------------------------------------------------------------- driver


def run_one(name: str, count: int, capacity: int, service_time: float,
            timeout: float) -> dict[str, Any]:
    server = Server(capacity, service_time)
    try:
        cpu0 = server.cpu_s()
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fanout", "--client", name, "--url",
                 server.url, "--key", server.api_key, "--count", str(count),
                 "--capacity", str(capacity)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"})
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                out, _ = proc.communicate()
            finally:
                timer.cancel()
            result: dict[str, Any] = {}
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    result = json.loads(line[7:])
            if not result:
                err.seek(0)
                what = "timed out" if proc.returncode and proc.returncode < 0 else "failed"
                return {"error": f"client {what} after {timeout:.0f} s: {err.read()[-400:]}"}
        result["server"] = server.counts()
        result["server_cpu_s"] = server.cpu_s() - cpu0
        return result
    finally:
        server.stop()


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--service-time", type=float, default=0.25)
    parser.add_argument("--quick", action="store_true", help="1,000 samples, 0.05 s")
    parser.add_argument("--only", help="comma-separated contenders: " + ",".join(CONTENDERS))
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="per contender, seconds (default 600)")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.capacity, args.service_time)
    if args.client:
        return client(args.client, args.url, args.key, args.count, args.capacity)
    if args.quick:
        args.count, args.service_time = 1000, 0.05
    names = args.only.split(",") if args.only else list(CONTENDERS)
    ideal = args.count / args.capacity * args.service_time
    log(f"{args.count} samples, capacity {args.capacity}, service time "
        f"{args.service_time:g} s: ideal {ideal:.1f} s")
    rows = []
    for name in names:
        log(f"  {name} ...")
        r = run_one(name, args.count, args.capacity, args.service_time, args.timeout)
        if "error" in r:
            log(f"  {name}: {r['error']}")
            rows.append([LABELS.get(name, name), "-", "-", "-", "-", "-", "-", "-",
                         r["error"][:60]])
            continue
        srv = r["server"]
        sent = srv["admitted"] + srv["refused"]
        busy = srv["finished"] * args.service_time / (r["wall_s"] * args.capacity)
        log(f"  {name}: {r['wall_s']:.1f} s ({r['wall_s'] / ideal:.2f}x ideal), "
            f"{srv['refused']} 429s, {r['errors']} errors, {r['cpu_s']:.1f} s client CPU")
        rows.append([
            LABELS.get(name, name), f"{r['completed']}/{args.count}", f"{r['wall_s']:.1f}",
            f"{r['wall_s'] / ideal:.2f}x", f"{srv['refused']} ({srv['refused'] / max(sent, 1):.1%})",
            f"{busy:.0%}", f"{1000 * r['cpu_s'] / max(r['completed'], 1):.2f}",
            f"{srv['queued_peak']}", r["first_error"] or "",
        ])
    header = ["client", "completed", "wall s", "vs ideal", "429s (share of submits)",
              "server busy", "client CPU ms/sample", "server queue peak", "first error"]
    text = (f"{args.count} samples fired at once; capacity {args.capacity} in flight, "
            f"service time {args.service_time:g} s; ideal {ideal:.1f} s\n\n"
            + table(rows, header) + "\n")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
