"""A smoke run of the soak (``benchmarks/soak.py``) at its ``--quick`` size.

It checks the soak end to end (server process, faults, the table, the exit code) with
the fault kinds every call survives today; the kinds that still hit library bugs run
in their own case, expected to fail until those are fixed. The full soak is
``python -m benchmarks.soak`` (``make soak``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNTS = ("sent", "retried", "ok", "typed errors", "untyped errors", "hangs", "duplicates",
          "lost", "reordered")


def soak(*args: str) -> tuple[int, dict[str, int], str]:
    """Run the quick soak; its exit code, its table and its whole output."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--quick", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    table = {name: int(value) for name, value in
             re.findall(r"^\| ([a-z ]+) \| (\d+) \|$", proc.stdout, re.MULTILINE)}
    return proc.returncode, table, proc.stdout + proc.stderr


def test_quick_soak_with_the_faults_every_call_survives() -> None:
    code, table, output = soak("--faults", "safe", "--rate", "0.1")
    assert set(table) == set(COUNTS), output
    assert code == 0, output
    assert table["sent"] == 1000 + 2 * 20  # samples, and forward_backward + optim_step
    assert table["ok"] + table["typed errors"] == table["sent"]
    assert table["retried"] > 0  # faults were met, and retried through
    for name in ("untyped errors", "hangs", "duplicates", "lost", "reordered"):
        assert table[name] == 0, output
    assert "PASS" in output


def test_quick_soak_with_truncated_and_garbage_bodies() -> None:
    code, table, output = soak("--faults", "truncate,garbage", "--rate", "0.1")
    assert set(table) == set(COUNTS), output
    assert code == 0, output
