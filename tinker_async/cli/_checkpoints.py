"""``checkpoint list|info|publish|unpublish|set-ttl|delete|download`` (and ``checkpoints``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._output import CliError, Context, ago, emit_json, human_size, print_pairs, print_table
from ._progress import ProgressBar

if TYPE_CHECKING:
    from .. import types as t
    from ..paths import ParsedCheckpointTinkerPath
    from ..rest import RestClient

__all__ = [
    "checkpoint_delete",
    "checkpoint_download",
    "checkpoint_info",
    "checkpoint_list",
    "checkpoint_publish",
    "checkpoint_set_ttl",
    "checkpoint_unpublish",
]

_BATCH = 1000  # the official CLI's page size for all-runs listings (those queries are slow)
_DELETE_CONCURRENCY = 16
_TYPES = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external",
          "training": "training", "sampler": "sampler", "external": "external"}


def _parse(path: str) -> ParsedCheckpointTinkerPath:
    from ..paths import parse_checkpoint_path

    return parse_checkpoint_path(path)  # InvalidPathError: exit status 2, one line


def _rows(checkpoints: list[t.Checkpoint]) -> list[list[Any]]:
    return [[c.checkpoint_id, c.checkpoint_type, human_size(c.size_bytes),
             "yes" if c.public else "no", ago(c.time),
             ago(c.expires_at) if c.expires_at else "never", c.tinker_path]
            for c in checkpoints]


_HEADERS = ["checkpoint id", "type", "size", "public", "created", "expires", "path"]


async def checkpoint_list(ctx: Context) -> int:
    a, rest = ctx.args, ctx.rest()
    if a.run_id:
        # One run's list is not paginated (as in the official CLI, --limit is ignored).
        found = list((await rest.list_checkpoints_async(a.run_id)).checkpoints)
        total: int | None = len(found)
    else:
        found, total = [], None
        while a.limit == 0 or len(found) < a.limit:
            want = _BATCH if a.limit == 0 else min(_BATCH, a.limit - len(found))
            page = await rest.list_user_checkpoints_async(limit=want, offset=len(found))
            found.extend(page.checkpoints)
            total = page.cursor.total_count if page.cursor is not None else None
            if len(page.checkpoints) < want or (total is not None and len(found) >= total):
                break
    if ctx.json:
        data: dict[str, Any] = {"run_id": a.run_id} if a.run_id else {}
        emit_json({**data, "checkpoints": found})
        return 0
    noun = f"checkpoint{'' if len(found) == 1 else 's'}"
    title = f"{len(found)} {noun}" + (f" of run {a.run_id}" if a.run_id else "")
    if total is not None and total > len(found):
        title += f" ({total - len(found)} more not shown; --limit 0 shows all)"
    print_table(_HEADERS, _rows(found), title=title)
    return 0


async def _find(rest: RestClient, path: str) -> t.Checkpoint:
    parsed = _parse(path)
    for ckpt in (await rest.list_checkpoints_async(parsed.training_run_id)).checkpoints:
        if ckpt.tinker_path == path or ckpt.checkpoint_id == parsed.checkpoint_id:
            return ckpt
    raise CliError(f"checkpoint not found: {path} (run {parsed.training_run_id} has no "
                   f"{parsed.checkpoint_id}; 'checkpoint list --run-id "
                   f"{parsed.training_run_id}' lists what it has)")


async def checkpoint_info(ctx: Context) -> int:
    rest = ctx.rest()
    ckpt = await _find(rest, ctx.args.path)
    run = await rest.get_training_run_async(_parse(ctx.args.path).training_run_id)
    if ctx.json:
        from ._output import to_data

        emit_json({**to_data(ckpt), "is_lora": run.is_lora, "lora_rank": run.lora_rank})
        return 0
    lora = (f"yes (rank {run.lora_rank})" if run.lora_rank else "yes") if run.is_lora else "no"
    print_pairs([
        ("Checkpoint ID", ckpt.checkpoint_id), ("Type", ckpt.checkpoint_type),
        ("Path", ckpt.tinker_path), ("Size", human_size(ckpt.size_bytes)),
        ("Public", "yes" if ckpt.public else "no"), ("Created", ago(ckpt.time)),
        ("Expires", ago(ckpt.expires_at) if ckpt.expires_at else "never"),
        ("Training run", run.training_run_id), ("Base model", run.base_model), ("LoRA", lora),
    ])
    return 0


async def _publish(ctx: Context, public: bool) -> int:
    path = ctx.args.path
    _parse(path)
    rest = ctx.rest()
    if public:
        await rest.publish_checkpoint_from_tinker_path_async(path)
    else:
        await rest.unpublish_checkpoint_from_tinker_path_async(path)
    ctx.say({"tinker_path": path, "public": public}, f"{'published' if public else 'unpublished'}: {path}")
    return 0


async def checkpoint_publish(ctx: Context) -> int:
    return await _publish(ctx, True)


async def checkpoint_unpublish(ctx: Context) -> int:
    return await _publish(ctx, False)


async def checkpoint_set_ttl(ctx: Context) -> int:
    a = ctx.args
    _parse(a.path)
    ttl: int | None = None if a.remove else a.ttl
    await ctx.rest().set_checkpoint_ttl_from_tinker_path_async(a.path, ttl)
    if ctx.json:
        emit_json({"tinker_path": a.path, "ttl_seconds": ttl})
    elif ttl is None:
        print(f"no longer expires: {a.path}")
    else:
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=ttl)
        print(f"expires {ago(when)} ({when:%Y-%m-%d %H:%M} UTC): {a.path}")
    return 0


# ---------------------------------------------------------------------------- delete


def _when(value: str, option: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"{option} {value!r} is not an ISO 8601 date or time "
                       "(e.g. 2025-06-01 or 2025-06-01T08:00:00Z)", 2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


async def _targets(ctx: Context) -> list[tuple[str, t.Checkpoint | None]]:
    """What ``delete`` would delete: (path, its listing entry if found)."""
    from ..errors import NotFoundError

    a, rest = ctx.args, ctx.rest()
    if a.run_id:
        before = _when(a.before, "--before") if a.before else None
        after = _when(a.after, "--after") if a.after else None
        kind = _TYPES[a.kind] if a.kind else None
        chosen = [c for c in (await rest.list_checkpoints_async(a.run_id)).checkpoints
                  if (kind is None or c.checkpoint_type == kind)
                  and (before is None or _aware(c.time) < before)
                  and (after is None or _aware(c.time) > after)]
        return [(c.tinker_path, c) for c in chosen]
    parsed = {path: _parse(path) for path in dict.fromkeys(a.paths)}
    listed: dict[str, dict[str, t.Checkpoint]] = {}
    for run_id in {p.training_run_id for p in parsed.values()}:
        try:
            found = (await rest.list_checkpoints_async(run_id)).checkpoints
        except NotFoundError:
            found = []
        listed[run_id] = {c.checkpoint_id: c for c in found}
    return [(path, listed[p.training_run_id].get(p.checkpoint_id)) for path, p in parsed.items()]


def _confirm(targets: list[tuple[str, t.Checkpoint | None]]) -> bool:
    err = sys.stderr
    total = sum((c.size_bytes or 0) for _, c in targets if c is not None)
    n = len(targets)
    print(f"Will delete {n} checkpoint{'' if n == 1 else 's'}:", file=err)
    for path, ckpt in targets:
        detail = (f"{human_size(ckpt.size_bytes)}, created {ago(ckpt.time)}" if ckpt is not None
                  else "not found in its run's list")
        print(f"  - {path} ({detail})", file=err)
    print(f"Total size: {human_size(total)}. This cannot be undone.", file=err)
    err.write(f"Delete {n} checkpoint{'' if n == 1 else 's'}? [y/N] ")
    err.flush()
    answer = sys.stdin.readline()
    if not answer or not sys.stdin.isatty():  # the answer was not echoed: end the line
        err.write("\n")
    return answer.strip().lower() in ("y", "yes")


async def checkpoint_delete(ctx: Context) -> int:
    from ..errors import APIError

    a = ctx.args
    if not a.paths and not a.run_id:
        raise CliError("give checkpoint paths, or --run-id RUN_ID (see 'checkpoint delete "
                       "--help')", 2)
    if a.paths and a.run_id:
        raise CliError("give either checkpoint paths or --run-id, not both", 2)
    if (a.kind or a.before or a.after) and not a.run_id:
        raise CliError("--type, --before and --after need --run-id", 2)
    targets = await _targets(ctx)
    if not targets:
        ctx.say({"deleted_count": 0, "failed": []}, f"no checkpoints of run {a.run_id} match")
        return 0
    if not a.yes and not _confirm(targets):
        print("Cancelled; nothing was deleted.", file=sys.stderr)
        return 0
    rest, gate = ctx.rest(), asyncio.Semaphore(_DELETE_CONCURRENCY)

    async def delete(path: str) -> str | None:
        async with gate:
            try:
                await rest.delete_checkpoint_from_tinker_path_async(path)
            except APIError as exc:
                return str(exc)
        return None

    errors = await asyncio.gather(*(delete(path) for path, _ in targets))
    failed = [(path, e) for (path, _), e in zip(targets, errors, strict=True) if e is not None]
    deleted = len(targets) - len(failed)
    freed = sum((c.size_bytes or 0) for (_, c), e in zip(targets, errors, strict=True)
                if e is None and c is not None)
    if ctx.json:
        emit_json({"deleted_count": deleted,
                   "failed": [{"tinker_path": p, "error": e} for p, e in failed]})
    else:
        print(f"deleted {deleted} checkpoint{'' if deleted == 1 else 's'} "
              f"({human_size(freed)})")
        for path, error in failed:
            print(f"failed: {path}: {error}", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------- download


async def checkpoint_download(ctx: Context) -> int:
    from .._download import target_dir_name

    a = ctx.args
    parsed = _parse(a.path)
    if parsed.checkpoint_type == "sampler":
        raise CliError(f"sampler checkpoints cannot be downloaded: {a.path}; only training "
                       "(.../weights/NAME) and external weights (.../external_weights/NAME) "
                       "checkpoints can", 2)
    output = Path(a.output) if a.output else Path.cwd()
    output.mkdir(parents=True, exist_ok=True)
    target = output / target_dir_name(a.path)
    show = a.progress if a.progress is not None else sys.stderr.isatty()
    bar = ProgressBar(f"{parsed.checkpoint_id}") if show else None
    if parsed.checkpoint_type == "training" and not ctx.json:
        print(f"Exporting {a.path} as external weights (this starts a training session on "
              "the checkpoint's base model)...", file=sys.stderr)
    try:
        result = await ctx.rest().download_checkpoint_async(
            a.path, target, force=a.force, parallel=a.parallel,
            progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if ctx.json:
        emit_json({"checkpoint_path": a.path, "destination": str(result.destination),
                   "file_size_bytes": result.size_bytes,
                   "files": [{"name": f.name, "size_bytes": f.size_bytes,
                              "resumed_bytes": f.resumed_bytes} for f in result.files]})
        return 0
    resumed = sum(f.resumed_bytes for f in result.files)
    pairs: list[tuple[str, Any]] = [
        ("Checkpoint", a.path),
        ("Files", ", ".join(f"{f.name} ({human_size(f.size_bytes)})" for f in result.files)),
        ("Total size", human_size(result.size_bytes)),
    ]
    if resumed:
        pairs.append(("Resumed", f"{human_size(resumed)} were already on disk"))
    pairs.append(("Downloaded to", str(result.destination)))
    print_pairs(pairs)
    return 0
