"""The results table and the comparison with the checked-in expectation file.

Results and expectations share one shape::

    {server: {client: {step: outcome}}}

where an outcome is ``"ok"``, ``"skipped"`` or the exception class name of a failed step
(for a step that expects an error and got a typed one, ``"ok"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, list[dict[str, Any]]]]  # server -> client -> step records


def outcome(record: dict[str, Any]) -> str:
    """A step record's outcome as kept in the expectation file."""
    if record["status"] in ("ok", "skipped"):
        return str(record["status"])
    return str(record["error"] or "error")


def outcomes(results: Results) -> dict[str, dict[str, dict[str, str]]]:
    """Results reduced to the expectation file's shape."""
    return {server: {client: {r["step"]: outcome(r) for r in records}
                     for client, records in by_client.items()}
            for server, by_client in results.items()}


def _cell(record: dict[str, Any] | None, notes: list[str]) -> str:
    if record is None:
        return "-"
    if record["status"] == "ok":
        return f"ok ({record['error']})" if record["error"] else "ok"
    if record["status"] == "skipped":
        return "skipped"
    notes.append(f"{record['error']}: {record['message']}")
    return f"{record['error']} [{len(notes)}]"


def table(results: Results, clients: list[str]) -> str:
    """A Markdown table: one row per step, one column per (server, client)."""
    columns = [(server, client) for server in results for client in clients]
    steps: list[str] = []
    for by_client in results.values():
        for records in by_client.values():
            for r in records:
                if r["step"] not in steps:
                    steps.append(r["step"])
    index = {(s, c): {r["step"]: r for r in results[s].get(c, [])} for s, c in columns}
    notes: list[str] = []
    head = ["step"] + [f"{s} / {c}" for s, c in columns]
    rows = [head, ["---"] * len(head)]
    for step in steps:
        rows.append([step] + [_cell(index[col].get(step), notes) for col in columns])
    totals = ["**passed**"]
    for col in columns:
        recs = list(index[col].values())
        totals.append(f"**{sum(r['status'] == 'ok' for r in recs)}/{len(recs)}**")
    rows.append(totals)
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        lines.append("")
        lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)


def compare(current: dict[str, dict[str, dict[str, str]]],
            expected: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(regressions, other differences) of ``current`` against ``expected``.

    A regression: a step expected ``ok`` that is not, or a failure whose exception class
    changed (a typed error that became another one). Better outcomes and steps the file
    does not know yet are differences to record (``--update-expected``), not failures.
    """
    regressions: list[str] = []
    notes: list[str] = []
    for server, by_client in current.items():
        for client, steps in by_client.items():
            exp = expected.get(server, {}).get(client)
            if exp is None:
                notes.append(f"{server}/{client}: no expectation recorded")
                continue
            for step, got in steps.items():
                want = exp.get(step)
                where = f"{server}/{client}: {step}"
                if want is None:
                    notes.append(f"{where}: new step, got {got}")
                elif got == want:
                    continue
                elif want == "ok" or (got not in ("ok", "skipped") and want != "skipped"):
                    regressions.append(f"{where}: expected {want}, got {got}")
                else:
                    notes.append(f"{where}: expected {want}, got {got} (record it)")
            for step in exp:
                if step not in steps:
                    regressions.append(f"{server}/{client}: {step}: step missing from the run")
    return regressions, notes


def load_expected(path: Path) -> dict[str, Any]:
    """The expectation file, or an empty one."""
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def save_expected(path: Path, current: dict[str, dict[str, dict[str, str]]],
                  previous: dict[str, Any]) -> None:
    """Write ``current`` over ``previous`` (servers and clients not run are kept)."""
    merged = {k: dict(v) for k, v in previous.items() if not k.startswith("_")}
    for server, by_client in current.items():
        merged.setdefault(server, {}).update(by_client)
    out = {"_comment": previous.get("_comment", "")} if previous.get("_comment") else {}
    out.update(merged)
    path.write_text(json.dumps(out, indent=2) + "\n")
