"""The examples run end to end (each in a fresh interpreter) and do what they claim.

Each runs against its own embedded server with small settings, except one that is pointed
at the session's server through ``TINKER_BASE_URL`` / ``TINKER_API_KEY``. The assertions
read the summary lines the examples print: the SFT loss falls by at least half, the RL
reward clearly rises, the pipeline completes every sample.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinker_async.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *flags: str, env: dict[str, str] | None = None,
                timeout: float = 60.0) -> str:
    """Run ``examples/<name>`` with ``flags``; fail on a non-zero exit or a hang."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *flags],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def grab(pattern: str, output: str) -> tuple[float, ...]:
    match = re.search(pattern, output)
    assert match, f"no line matching {pattern!r} in:\n{output}"
    return tuple(float(g) for g in match.groups())


LOSS_LINE = r"loss: start ([\d.]+) -> end ([\d.]+) .*ratio ([\d.]+)"


@pytest.mark.parametrize("script", ["sl_loop.py", "sync_script.py"])
def test_sft_loss_falls_by_half(script: str) -> None:
    out = run_example(script, "--steps", "30", "--batch-size", "8", "--window", "64")
    assert "started the embedded server" in out
    assert len(re.findall(r"^step +\d+ +loss", out, re.M)) == 30
    start, end, ratio = grab(LOSS_LINE, out)
    assert end <= 0.5 * start, out
    assert ratio <= 0.5
    assert "fine-tuned: 'Alice was beginning to get' -> " in out


def test_rl_reward_rises_with_the_default_settings() -> None:
    out = run_example("rl_loop.py")
    steps = re.findall(r"^step +\d+ +reward ([\d.]+) \[[#.]+\] +[\d.]+s", out, re.M)
    assert len(steps) == 20, out
    first, last, head, tail = grab(
        r"mean reward: first ([\d.]+) -> last ([\d.]+) "
        r"\(first 3 steps ([\d.]+), last 3 steps ([\d.]+)\)", out)
    assert head < 0.2, out  # what the base model writes by chance
    assert tail > 0.6 and tail > head + 0.4, out
    assert float(steps[0]) == first and float(steps[-1]) == last
    assert "samples before training:" in out and "samples after training:" in out
    assert grab(r"([\d.]+) samples/s", out)[0] > 0


def test_rl_on_policy_with_bigger_groups_learns_too() -> None:
    out = run_example("rl_loop.py", "--steps", "10", "--groups", "16", "--group-size", "4",
                      "--on-policy", "--letter", "e")
    assert "16 prompts x 4 samples = 64 samples in flight" in out
    assert "update behind" not in out  # on-policy: never samples with stale weights
    _, _, head, tail = grab(
        r"mean reward: first ([\d.]+) -> last ([\d.]+) "
        r"\(first 3 steps ([\d.]+), last 3 steps ([\d.]+)\)", out)
    assert tail > head + 0.1, out


@pytest.mark.parametrize("zero_compute", [False, True])
def test_sampling_pipeline_completes_every_sample(zero_compute: bool) -> None:
    flags = ["--samples", "300", "--concurrency", "128", "--max-tokens", "8"]
    out = run_example("sampling_pipeline.py", *flags, *(["--zero-compute"] if zero_compute else []))
    assert ("zero-compute mode" in out) == zero_compute
    assert "300/300" in out  # the last redraw of the progress bar
    samples, tokens = grab(r"completed (\d+) samples, (\d+) tokens", out)
    assert samples == 300
    assert (tokens == 300 * 8) if zero_compute else (0 < tokens <= 300 * 8)
    samples_per_s, tokens_per_s = grab(r"throughput: (\d+) samples/s, (\d+) tokens/s", out)
    assert samples_per_s > 0 and tokens_per_s > 0
    p50, p99 = grab(r"latency: p50 (\d+) ms, p99 (\d+) ms", out)
    assert p50 <= p99


def test_an_example_uses_the_server_in_tinker_base_url(
    server: LocalServer, api_key: str
) -> None:
    env = {"TINKER_BASE_URL": server.url, "TINKER_API_KEY": api_key}
    out = run_example("sampling_pipeline.py", "--samples", "50", "--concurrency", "16",
                      "--max-tokens", "4", env=env)
    assert f"using the server at {server.url}" in out
    assert "started the embedded server" not in out
    assert grab(r"completed (\d+) samples", out) == (50,)


def test_a_wrong_key_fails_with_a_typed_error(server: LocalServer) -> None:
    env = {"TINKER_BASE_URL": server.url, "TINKER_API_KEY": "tml-wrong-key-0000"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "sl_loop.py"), "--steps", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert proc.returncode != 0
    assert "AuthenticationError" in proc.stderr
    assert "tml-wrong-key-0000" not in proc.stdout + proc.stderr
