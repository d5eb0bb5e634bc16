"""Run one scenario in a fresh interpreter (``compat/_child.py``) and read its facts.

Used by the compat tests (``compat/conftest.py``) and by the cookbook benchmark
(``benchmarks/cookbook_rl.py``), so both run the cookbook the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class ChildFailed(AssertionError):
    """A scenario's interpreter exited non-zero; ``output`` is what it printed."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def child_env(url: str, api_key: str, scratch: Path) -> dict[str, str]:
    """The environment of a scenario's interpreter: this one's, minus any Tinker or Hugging
    Face settings, plus the server, offline Hugging Face libraries and a scratch HOME (so
    no ``~/.tinker`` or cache of the developer's leaks in)."""
    home = scratch / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TINKER_", "TWINKLE_", "HF_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "TINKER_BASE_URL": url,
        "TINKER_API_KEY": api_key,
        "TINKER_TELEMETRY": "0",
        # No network but 127.0.0.1: the Hugging Face libraries must not try the hub.
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(scratch / "hf"),
        "HOME": str(home),
        "PYTHONWARNINGS": "ignore::FutureWarning",
        "COLUMNS": "120",
    })
    return env


def run_child(flavor: str, name: str, workdir: Path, args: dict[str, Any],
              env: dict[str, str], timeout: float, log_file: Path | None = None
              ) -> dict[str, Any]:
    """``python -m compat._child FLAVOR NAME WORKDIR ARGS``; its facts, with ``output``.

    Raises ``ChildFailed`` (with the output) when it exits non-zero or prints no result,
    ``subprocess.TimeoutExpired`` when it runs past ``timeout`` (a hang guard).
    """
    command = [sys.executable, "-m", "compat._child", flavor, name, str(workdir),
               json.dumps(args)]
    before: Path | None = None
    if flavor == "official":  # what the run starts from, for a second run (below)
        before = Path(tempfile.mkdtemp(prefix="compat-workdir-"))
        if workdir.exists():
            shutil.copytree(workdir, before, dirs_exist_ok=True)
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode < 0 and before is not None:
        # The reference column only: the official SDK's process has, rarely, died by a
        # signal (SIGABRT with no message, once in many CI runs, in the scenario whose
        # training loop raises a simulated crash; not reproduced in a loop). One more run,
        # from the same starting files, tells a crash of that process from a failing
        # scenario. Our own flavor gets no second chance.
        first = proc.returncode
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.copytree(before, workdir, dirs_exist_ok=True)
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        proc.stderr += f"\n(compat harness: the first run died by signal {-first}; run again)\n"
    if before is not None:
        shutil.rmtree(before, ignore_errors=True)
    output = proc.stdout + proc.stderr
    if log_file is not None:
        log_file.write_text(output)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("COMPAT_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise ChildFailed(
            f"{name} under {flavor} exited {proc.returncode}:\n{output[-6000:]}", output)
    facts: dict[str, Any] = json.loads(lines[-1].removeprefix("COMPAT_RESULT "))
    facts["output"] = output
    return facts
