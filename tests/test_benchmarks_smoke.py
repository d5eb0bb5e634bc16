"""A smoke run of the benchmark harness (``benchmarks/``) at minimal sizes.

It checks that the harness works end to end (server process, one fresh worker per
contender, probes, report); it asserts nothing about speed. The real suite is
``python -m benchmarks.run`` and is not part of the test suite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402

HAVE_OFFICIAL = importlib.util.find_spec("tinker") is not None


def tiny_config() -> run.Config:
    return run.Config(
        import_repeat=1, levels={2: (6, 5.0)}, rounds=1, warmup=2,
        fb_datums=4, fb_tokens=16, fb_repeat=1,
        count_concurrency=2, count_samples=4, count_delay_s=0.0,
        inflight_n=4, inflight_delay_s=1.0, inflight_window_s=0.3,
        idle_s=0.2, worker_timeout_s=60.0,
    )


@pytest.mark.skipif(not HAVE_OFFICIAL, reason="the official tinker SDK is not installed")
def test_sampling_figure_and_report() -> None:
    cfg = tiny_config()
    with run.Server() as server:
        sampling = run.fig_sampling(cfg, server)
    per = sampling[2]
    for name in run.ALL_CONTENDERS:
        assert "error" not in per[name], (name, per[name])
        assert per[name]["n"] == 6 and per[name]["errors"] == 0
        assert per[name]["cpu_per_req_ms"] > 0
    text = run.render(run.build_report({"sampling": sampling, "config": {}}))
    assert "tinker_async async" in text and "official tinker 0.38" in text
    assert "PASS" in text or "MISS" in text


def test_worker_reports_errors_instead_of_hanging() -> None:
    result = run.run_worker({"task": "sample", "contender": "floor",
                             "url": "http://127.0.0.1:9", "api_key": "tml-x",
                             "concurrency": 1, "count": 1}, 30)
    assert "error" in result
