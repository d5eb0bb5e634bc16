"""The read-mostly commands: runs, sessions, models, billing, health, version.

Each is ``async def name(ctx) -> int`` (run by :mod:`._main` with ``asyncio.run``) or a
plain function; JSON output keeps the official CLI's shapes (``{"runs": [...]}``,
``{"models": [...]}``, ...).
"""

from __future__ import annotations

import asyncio
import csv
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._output import CliError, Context, ago, emit_json, print_pairs, print_table, to_data, yes_no
from ._parser import RUN_COLUMNS

if TYPE_CHECKING:
    from .. import types as t

__all__ = [
    "billing_storage",
    "billing_usage",
    "health",
    "model_list",
    "run_info",
    "run_list",
    "session_info",
    "session_list",
    "version",
]

_PAGE = 100


def version(ctx: Context) -> int:
    from .._config import PROTOCOL_SDK_VERSION
    from .._version import __version__

    ctx.say({"version": __version__, "api_version": PROTOCOL_SDK_VERSION}, f"tinker-async {__version__} (Tinker API of SDK {PROTOCOL_SDK_VERSION})")
    return 0


async def health(ctx: Context) -> int:
    rest = ctx.rest()
    ok = await rest.health_check_async()
    from ..rest import transport_of  # here: the CLI imports the library only when used

    url = transport_of(rest).config.base_url
    ctx.say({"base_url": url, "healthy": ok}, "healthy" if ok else f"not answering: {url}")
    return 0 if ok else 1


def _more(shown: int, total: int | None, noun: str) -> str:
    title = f"{shown} {noun}{'' if shown == 1 else 's'}"
    if total is not None and total > shown:
        title += f" ({total - shown} more not shown; --limit 0 shows all)"
    return title


# ------------------------------------------------------------------------------ runs


def _lora(run: t.TrainingRun) -> str:
    if not run.is_lora:
        return "no"
    return f"rank {run.lora_rank}" if run.lora_rank else "yes"


_RUN_CELLS: dict[str, tuple[str, Callable[[t.TrainingRun], Any]]] = {
    "id": ("run id", lambda r: r.training_run_id),
    "model": ("base model", lambda r: r.base_model),
    "owner": ("owner", lambda r: r.model_owner),
    "lora": ("lora", _lora),
    "updated": ("last update", lambda r: ago(r.last_request_time)),
    "status": ("status", lambda r: "failed" if r.corrupted else "ok"),
    "checkpoint": ("last checkpoint",
                   lambda r: r.last_checkpoint.checkpoint_id if r.last_checkpoint else None),
    "checkpoint_time": ("checkpoint time",
                        lambda r: ago(r.last_checkpoint.time) if r.last_checkpoint else None),
}
assert set(_RUN_CELLS) == set(RUN_COLUMNS)


async def run_list(ctx: Context) -> int:
    columns = ["id", "model", "lora", "updated", "status"]
    if ctx.args.columns:
        columns = [c.strip() for c in ctx.args.columns.split(",") if c.strip()]
        unknown = [c for c in columns if c not in _RUN_CELLS]
        if unknown or not columns:
            raise CliError(f"unknown column(s) {', '.join(unknown) or '(none)'} for -c; "
                           f"choose from {', '.join(RUN_COLUMNS)}", 2)
    rest, limit = ctx.rest(), ctx.args.limit
    runs: list[t.TrainingRun] = []
    total: int | None = None
    while limit == 0 or len(runs) < limit:
        want = _PAGE if limit == 0 else min(_PAGE, limit - len(runs))
        page = await rest.list_training_runs_async(limit=want, offset=len(runs))
        runs.extend(page.training_runs)
        total = page.cursor.total_count if page.cursor is not None else None
        if len(page.training_runs) < want or (total is not None and len(runs) >= total):
            break
    if ctx.json:
        emit_json({"runs": runs})
        return 0
    print_table([_RUN_CELLS[c][0] for c in columns],
                ([_RUN_CELLS[c][1](r) for c in columns] for r in runs),
                title=_more(len(runs), total, "training run"))
    return 0


async def run_info(ctx: Context) -> int:
    run = await ctx.rest().get_training_run_async(ctx.args.run_id)
    if ctx.json:
        emit_json(run)
        return 0
    pairs: list[tuple[str, Any]] = [
        ("Run ID", run.training_run_id), ("Base model", run.base_model),
        ("Owner", run.model_owner), ("LoRA", _lora(run)),
        ("Last update", ago(run.last_request_time)),
        ("Status", "failed" if run.corrupted else "ok"),
    ]
    for label, ckpt in (("Last checkpoint", run.last_checkpoint),
                        ("Last sampler checkpoint", run.last_sampler_checkpoint)):
        if ckpt is not None:
            pairs.append((label, f"{ckpt.tinker_path} ({ago(ckpt.time)})"))
    for key, value in (run.user_metadata or {}).items():
        pairs.append((f"Metadata {key}", value))
    print_pairs(pairs)
    return 0


# --------------------------------------------------------------------------- sessions


async def session_list(ctx: Context) -> int:
    rest, limit = ctx.rest(), ctx.args.limit
    ids: list[str] = []
    while limit == 0 or len(ids) < limit:
        want = _PAGE if limit == 0 else min(_PAGE, limit - len(ids))
        page = await rest.list_sessions_async(limit=want, offset=len(ids))
        ids.extend(page.sessions)
        if len(page.sessions) < want:
            break
    # The list holds ids only: fetch each session's details, a few at a time.
    gate = asyncio.Semaphore(8)

    async def details(session_id: str) -> t.GetSessionResponse | None:
        from ..errors import APIStatusError

        async with gate:
            try:
                return await rest.get_session_async(session_id)
            except APIStatusError:
                return None

    found = await asyncio.gather(*(details(s) for s in ids))
    if ctx.json:
        emit_json({"sessions": [{"session_id": s, **(to_data(d) if d else {})}
                                for s, d in zip(ids, found, strict=True)]})
        return 0
    print_table(["session id", "runs", "samplers", "name"],
                ([s, len(d.training_run_ids) if d else None,
                  len(d.sampler_ids) if d else None, d.display_name if d else None]
                 for s, d in zip(ids, found, strict=True)),
                title=_more(len(ids), None, "session"))
    return 0


async def session_info(ctx: Context) -> int:
    session = await ctx.rest().get_session_async(ctx.args.session_id)
    if ctx.json:
        emit_json({"session_id": ctx.args.session_id, **to_data(session)})
        return 0
    pairs: list[tuple[str, Any]] = [("Session ID", ctx.args.session_id)]
    if session.display_name:
        pairs.append(("Name", session.display_name))
    pairs.append(("Training runs", ", ".join(session.training_run_ids) or "(none)"))
    pairs.append(("Samplers", ", ".join(session.sampler_ids) or "(none)"))
    for key, value in (session.user_metadata or {}).items():
        pairs.append((f"Metadata {key}", value))
    print_pairs(pairs)
    return 0


# ----------------------------------------------------------------------------- models


async def model_list(ctx: Context) -> int:
    caps = await ctx.rest().get_server_capabilities_async()
    models = list(caps.supported_models)
    needle = ctx.args.substring
    if needle is not None:
        models = [m for m in models if m.model_name and needle.lower() in m.model_name.lower()]
        if not models:
            names = ", ".join(m.model_name or "?" for m in caps.supported_models) or "none"
            raise CliError(f"no model name contains {needle!r} (the server offers: {names})")
    if ctx.json:
        data: dict[str, Any] = {"models": models}
        if caps.max_batch_size is not None or caps.features is not None:
            data.update(max_batch_size=caps.max_batch_size, features=caps.features)
        emit_json(data)
        return 0
    print_table(["model", "max context", "trainable", "sampleable"],
                ([m.model_name, m.max_context_length, yes_no(m.trainable), yes_no(m.sampleable)]
                 for m in models))
    if caps.features:
        print(f"features: {', '.join(caps.features)}")
    return 0


# ---------------------------------------------------------------------------- billing


def _flat(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a nested ``event_info`` merged in (for tables and CSV)."""
    out = []
    for row in rows:
        info = row.get("event_info")
        flat = {k: v for k, v in row.items() if k != "event_info"}
        if isinstance(info, Mapping):
            flat.update(info)
        out.append(flat)
    return out


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def _write_csv(rows: list[dict[str, Any]], path: str) -> None:
    def write(out: Any) -> None:
        writer = csv.DictWriter(out, fieldnames=_columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)

    if path == "-":
        write(sys.stdout)
        return
    with open(path, "w", newline="", encoding="utf-8") as handle:
        write(handle)
    print(f"wrote {len(rows)} row(s) to {path}", file=sys.stderr)


async def billing_usage(ctx: Context) -> int:
    a = ctx.args
    usage = await ctx.admin().get_billing_usage_async(a.starting_on, a.ending_before)
    data = to_data(usage)
    rows = _flat(data.get("data", []))
    if a.sessions_csv:
        _write_csv([{"session_id": sid, "user_metadata": s.get("user_metadata")}
                    for sid, s in data.get("sessions", {}).items()], a.sessions_csv)
    if a.csv:
        _write_csv(rows, a.csv)
    if a.csv or a.sessions_csv:
        return 0
    if ctx.json:
        emit_json(data)
        return 0
    columns = _columns(rows)
    print_table(columns, ([r.get(c) for c in columns] for r in rows),
                title=f"{len(rows)} hourly usage row(s)", empty="(no usage in this window)")
    return 0


async def billing_storage(ctx: Context) -> int:
    a = ctx.args
    usage = await ctx.admin().get_current_checkpoint_storage_usage_async(a.project_id)
    data = to_data(usage)
    rows = [{"effective_rate_usd_per_gigabyte_month":
             data.get("effective_rate_usd_per_gigabyte_month"), **r}
            for r in data.get("data", [])]
    if a.csv:
        _write_csv(rows, a.csv)
        return 0
    if ctx.json:
        emit_json(data)
        return 0
    columns = _columns(rows)
    print_table(columns, ([r.get(c) for c in columns] for r in rows),
                title="Current checkpoint storage", empty="(no checkpoint storage)")
    return 0
