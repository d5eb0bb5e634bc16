"""The table and the regression check, on made-up step records (no servers needed).

    .venv/bin/python -m pytest -q interop/test_report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report


def _rec(step: str, status: str, error: str = "", message: str = "") -> dict[str, object]:
    return {"step": step, "status": status, "error": error, "message": message, "seconds": 0.0}


RESULTS: report.Results = {
    "srv": {
        "tinker_async": [_rec("a", "ok"), _rec("b", "error", "NotFoundError", "404 (GET x)"),
                         _rec("c", "ok", "NotFoundError", "expected")],
        "tinker": [_rec("a", "ok"), _rec("b", "skipped", message="needs a"),
                   _rec("c", "error", "ValueError", "bad")],
    }
}


def test_outcomes_keep_the_error_class_only() -> None:
    assert report.outcomes(RESULTS) == {"srv": {
        "tinker_async": {"a": "ok", "b": "NotFoundError", "c": "ok"},
        "tinker": {"a": "ok", "b": "skipped", "c": "ValueError"},
    }}


def test_table_has_a_column_per_client_and_numbered_notes() -> None:
    text = report.table(RESULTS, ["tinker_async", "tinker"])
    assert "| step | srv / tinker_async | srv / tinker |" in text
    assert "| b | NotFoundError [1] | skipped |" in text
    assert "| c | ok (NotFoundError) | ValueError [2] |" in text
    assert "| **passed** | **2/3** | **1/3** |" in text
    assert "[1] NotFoundError: 404 (GET x)" in text


def test_compare_flags_worse_outcomes_and_changed_error_classes() -> None:
    expected = {"srv": {"tinker_async": {"a": "ok", "b": "NotFoundError", "c": "ok"},
                        "tinker": {"a": "ok", "b": "skipped", "c": "ValueError"}}}
    assert report.compare(report.outcomes(RESULTS), expected) == ([], [])

    worse = {"srv": {"tinker_async": {"a": "APIError", "b": "APIStatusError", "c": "ok"},
                     "tinker": {"a": "ok", "b": "skipped", "c": "ok"}}}
    regressions, notes = report.compare(worse, expected)
    assert regressions == ["srv/tinker_async: a: expected ok, got APIError",
                           "srv/tinker_async: b: expected NotFoundError, got APIStatusError"]
    assert notes == ["srv/tinker: c: expected ValueError, got ok (record it)"]


def test_compare_reports_steps_missing_from_the_run() -> None:
    expected = {"srv": {"tinker_async": {"a": "ok", "gone": "ok"}}}
    regressions, _ = report.compare({"srv": {"tinker_async": {"a": "ok"}}}, expected)
    assert regressions == ["srv/tinker_async: gone: step missing from the run"]


def test_save_expected_keeps_other_servers_and_the_comment(tmp_path: Path) -> None:
    path = tmp_path / "expected.json"
    previous = {"_comment": "why", "other": {"tinker": {"a": "ok"}}}
    report.save_expected(path, report.outcomes(RESULTS), previous)
    saved = json.loads(path.read_text())
    assert saved["_comment"] == "why"
    assert saved["other"] == {"tinker": {"a": "ok"}}
    assert saved["srv"]["tinker"]["c"] == "ValueError"
