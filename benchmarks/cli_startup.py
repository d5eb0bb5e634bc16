"""Command-line startup: ``tinker-async --help`` beside the official ``tinker --help``.

Each is run in a fresh interpreter several times (after one warm-up run, so both read
their files from the page cache); the table shows the wall time per run (median and
best) and, from ``python -X importtime``, the import time and number of modules loaded.

    .venv/bin/python -m benchmarks.cli_startup            # 7 runs each
    .venv/bin/python -m benchmarks.cli_startup --runs 15
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (label, the code that runs the CLI's --help, as its console script does)
CONTENDERS = {
    "tinker-async --help": "import sys; from tinker_async.cli import main; "
                           "sys.argv = ['tinker-async', '--help']; sys.exit(main())",
    "tinker --help (official 0.38)": "import sys; from tinker.cli.__main__ import main; "
                                     "sys.argv = ['tinker', '--help']; main()",
}


def _run(code: str, *flags: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {proc.stderr[-500:]}")
    return elapsed, proc.stderr


def _imports(code: str) -> tuple[float, int]:
    """(total import time in ms, modules imported) from ``-X importtime``."""
    _, stderr = _run(code, "-X", "importtime")
    rows = [m for m in (re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
                        for line in stderr.splitlines()) if m]
    top = sum(int(m.group(2)) for m in rows if len(m.group(3)) == 1)  # top-level imports
    return top / 1000, len(rows)


def measure(runs: int) -> list[tuple[str, float, float, float, int]]:
    """Per contender: (label, median ms, best ms, import ms, modules)."""
    results = []
    for label, code in CONTENDERS.items():
        if "official" in label and importlib.util.find_spec("tinker") is None:
            continue
        _run(code)  # warm-up: page cache, .pyc files
        times = [_run(code)[0] * 1000 for _ in range(runs)]
        import_ms, modules = _imports(code)
        results.append((label, statistics.median(times), min(times), import_ms, modules))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    args = parser.parse_args(argv)
    results = measure(max(1, args.runs))
    empty = statistics.median(_run("pass")[0] * 1000 for _ in range(max(1, args.runs)))
    print(f"Command-line startup, {args.runs} runs each (bare interpreter: {empty:.0f} ms)\n")
    header = f"{'command':32} {'median':>9} {'best':>9} {'imports':>9} {'modules':>8}"
    print(header)
    print("-" * len(header))
    for label, median, best, import_ms, modules in results:
        print(f"{label:32} {median:7.0f} ms {best:6.0f} ms {import_ms:6.0f} ms {modules:8d}")
    if len(results) == 2:
        print(f"\ntinker-async --help takes {results[0][1] / results[1][1]:.0%} of the "
              "official CLI's time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
