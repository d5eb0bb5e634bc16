"""Profile one contender's sampling run: ``python -m benchmarks.profile [options]``.

Starts the benchmark server, runs one ``sample`` worker under py-spy (``pip install
py-spy``; found on PATH or given with ``--py-spy``) or, without it, cProfile, and prints
where the client's CPU went during the measured phase: by package, by tinker_async
function (self), and the top functions by cumulative share.

    python -m benchmarks.profile --contender ours --concurrency 512 --count 6000
    python -m benchmarks.profile --contender ours --no-long-poll

py-spy samples wall-clock stacks of busy threads (idle ones are left out), so its shares
are shares of CPU. cProfile shares are of profiled time and inflate small Python calls.
"""

from __future__ import annotations

import argparse
import collections
import json
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .run import ROOT, Server

_LINE = re.compile(r":\d+\)$")


def _package(frame: str) -> str:
    for marker, name in (("tinker_async/", "tinker_async"), ("aiohttp/", "aiohttp"),
                         ("aiohappyeyeballs", "aiohttp"), ("multidict", "aiohttp"),
                         ("yarl", "aiohttp"), ("asyncio/", "asyncio"), ("selectors", "asyncio"),
                         ("benchmarks/", "harness"), ("/tinker/", "official SDK"),
                         ("httpx", "official SDK"), ("httpcore", "official SDK"),
                         ("pydantic", "official SDK"), ("anyio", "official SDK")):
        if marker in frame:
            return name
    match = re.search(r"\(([^()]*?)(?::\d+)?\)$", frame)
    return "other: " + (match.group(1) if match else frame)


def summarize_pyspy(path: Path, top: int) -> str:
    """Shares of the measured phase (stacks under the harness's drive loops)."""
    cum: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or ("_drive_async" not in stack and "_drive_threads" not in stack
                         and "run_forever" not in stack) or "_find_and_load" in stack:
            continue
        n = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        total += n
        for frame in set(frames):
            cum[frame] += n
        packages[_package(frames[-1])] += n
        if "tinker_async/" in frames[-1]:
            own[frames[-1]] += n
    if not total:
        return "no samples in the measured phase"
    out = [f"{total} samples in the measured phase", "", "by package (leaf frame):"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in packages.most_common(12)]
    out += ["", "tinker_async functions, self:"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in own.most_common(15)]
    out += ["", "cumulative:"]
    skip = ("runpy", "_worker.py", "runners.py", "<module>", "base_events.py", "events.py")
    rows = [(k, v) for k, v in cum.most_common(top + 20) if not any(s in k for s in skip)]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in rows[:top]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contender", default="ours",
                        choices=("floor", "ours", "ours_plain", "ours_sync", "official"))
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--no-long-poll", action="store_true")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="path to py-spy")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--keep", help="also write the raw profile here")
    args = parser.parse_args(argv)

    server_args = ("--no-long-poll",) if args.no_long_poll else ()
    with Server(*server_args) as server, tempfile.TemporaryDirectory() as tmp:
        spec = {"task": "sample", "contender": args.contender, "url": server.url,
                "api_key": server.api_key, "concurrency": args.concurrency,
                "count": args.count, "warmup": 50, "deadline_s": 120}
        worker = [sys.executable, "-m", "benchmarks._worker"]
        if args.py_spy:
            raw = Path(args.keep or Path(tmp) / "profile.txt")
            cmd = [args.py_spy, "record", "-r", "400", "-f", "raw", "-o", str(raw), "--",
                   *worker, json.dumps(spec)]
        else:
            raw = Path(args.keep or Path(tmp) / "profile.pstats")
            cmd = [*worker, json.dumps({**spec, "profile": str(raw)})]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        result = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
        print(result[0] if result else done.stderr[-2000:])
        if not raw.exists():
            return 1
        if args.py_spy:
            print(summarize_pyspy(raw, args.top))
        else:
            stats = pstats.Stats(str(raw))
            stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
