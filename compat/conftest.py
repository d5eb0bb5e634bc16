"""Fixtures of the cookbook compatibility suite (``make compat``).

Every test gets a fresh embedded server (``LocalServer`` in a thread of the pytest process,
127.0.0.1 only) and runs its scenario in child interpreters (``compat/_child.py``), so
that ``install_as_tinker()`` in one child never shadows the official SDK anywhere else.
The terminal summary ends with a side-by-side table: scenario x (official, tinker_async).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tinker_async.local import LocalServer

from ._harness import child_env, run_child

API_KEY = "tml-compat-0123456789abcdef"
CHILD_TIMEOUT_S = 300.0  # a hang guard only; a scenario takes seconds

RunScenario = Callable[..., dict[str, Any]]


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer(api_key=API_KEY, session_timeout_s=300.0).in_thread() as srv:
        yield srv


@pytest.fixture
def run_scenario(server: LocalServer, tmp_path: Path) -> RunScenario:
    """``run_scenario(flavor, name, workdir=None, **args) -> facts``; fails with the child's
    output (``ChildFailed``) when it exits non-zero. ``facts["output"]`` is its output."""
    env = child_env(server.url, API_KEY, tmp_path)
    runs = [0]

    def run(flavor: str, name: str, workdir: Path | None = None, **args: Any) -> dict[str, Any]:
        runs[0] += 1
        log_file = tmp_path / f"child-{runs[0]}-{name}-{flavor}.log"
        return run_child(flavor, name, workdir or tmp_path / f"{name}-{flavor}", args, env,
                         CHILD_TIMEOUT_S, log_file)

    return run


# ------------------------------------------------------------------- side-by-side table

_OUTCOMES: dict[tuple[str, str], str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    name, _, param = report.nodeid.rpartition("::")[2].partition("[")
    variant, _, flavor = param.rstrip("]").rpartition("-")
    if flavor not in ("official", "tinker_async"):
        return
    name = name.removeprefix("test_") + (f"[{variant}]" if variant else "")
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfail" if hasattr(report, "wasxfail") and report.skipped else report.outcome
        if hasattr(report, "wasxfail") and report.passed:
            outcome = "xpass"
        _OUTCOMES[(name, flavor)] = outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _OUTCOMES:
        return
    flavors = ["official", "tinker_async"]
    names = list(dict.fromkeys(name for name, _ in _OUTCOMES))
    width = max(len(n) for n in names)
    terminalreporter.write_sep("-", "tinker-cookbook 0.6.1 scenarios, side by side")
    terminalreporter.write_line(f"{'scenario':<{width}}  {'official':<10}  tinker_async")
    for name in names:
        cells = [_OUTCOMES.get((name, f), "-") for f in flavors]
        terminalreporter.write_line(f"{name:<{width}}  {cells[0]:<10}  {cells[1]}")
