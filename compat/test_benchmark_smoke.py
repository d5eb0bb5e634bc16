"""A smoke run of the cookbook RL benchmark (``python -m benchmarks.cookbook_rl``) at
minimal sizes: both servers, both libraries, a report. It asserts that every run finished
and was measured, nothing about speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cookbook_rl

pytestmark = pytest.mark.timeout(900)


def test_cookbook_rl_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    argv = ["--steps", "2", "--groups", "1", "--group-size", "2", "--max-tokens", "4",
            "--rounds", "1", "--json", str(out)]
    assert cookbook_rl.main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"zero-compute", "numpy model"}
    for per in results.values():
        for flavor in cookbook_rl.FLAVORS:
            assert per[flavor]["errors"] == 0, per[flavor]["first_error"]
            assert per[flavor]["steps_per_s"] > 0
            assert per[flavor]["client_cpu_per_step_s"] > 0
    assert "steps/s vs official" in capsys.readouterr().out
