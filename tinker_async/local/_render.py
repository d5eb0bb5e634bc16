"""Response shapes of records, per surface (the Tinker ``/api/v1`` one or Twinkle's).

Kept apart from the handlers so that one handler serves both surfaces: it fetches
records, and these functions decide field names (``tinker_path`` / ``twinkle_path``) and
the extra fields Twinkle's records carry. ``None`` fields are left out, as the official
SDK leaves them out of what it sends.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ._dialects import Surface
from ._state import CheckpointRecord, RunRecord, ServerState

__all__ = ["cursor", "iso", "page", "render_checkpoint", "render_run", "render_weights_info"]


def iso(timestamp: float) -> str:
    """RFC 3339 UTC time, as pydantic parses it."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if value is not None}


def cursor(offset: int, limit: int, total_count: int) -> dict[str, int]:
    """The ``Cursor`` of a page."""
    return {"offset": offset, "limit": limit, "total_count": total_count}


def page(items: list[Any], offset: int, limit: int) -> list[Any]:
    """The slice a ``limit`` / ``offset`` page covers."""
    return items[offset : offset + limit]


def render_checkpoint(
    ckpt: CheckpointRecord, surface: Surface, run: RunRecord | None = None
) -> dict[str, Any]:
    """A ``Checkpoint``. Twinkle also names the model, so it needs the run."""
    record: dict[str, Any] = {
        "checkpoint_id": ckpt.checkpoint_id,
        "checkpoint_type": ckpt.checkpoint_type,
        "time": iso(ckpt.created_at),
        surface.path_field: ckpt.path(surface.scheme),
        "size_bytes": ckpt.size_bytes,
        "public": ckpt.public,
        "user_metadata": ckpt.user_metadata,
        "expires_at": iso(ckpt.expires_at) if ckpt.expires_at is not None else None,
    }
    if surface.extended_records and run is not None:
        record.update(
            base_model=run.base_model,
            is_lora=run.is_lora,
            lora_rank=run.lora_rank,
            train_unembed=run.train_unembed,
            train_mlp=run.train_mlp,
            train_attn=run.train_attn,
        )
    return _compact(record)


def render_run(run: RunRecord, state: ServerState, surface: Surface) -> dict[str, Any]:
    """A ``TrainingRun`` with its latest training and sampler checkpoints."""
    last = state.latest_checkpoint(run.training_run_id, "weights")
    last_sampler = state.latest_checkpoint(run.training_run_id, "sampler_weights")
    record: dict[str, Any] = {
        "training_run_id": run.training_run_id,
        "base_model": run.base_model,
        "model_owner": run.model_owner,
        "is_lora": run.is_lora,
        "corrupted": run.corrupted,
        "lora_rank": run.lora_rank,
        "last_request_time": iso(run.last_request_time),
        "last_checkpoint": render_checkpoint(last, surface, run) if last else None,
        "last_sampler_checkpoint": (
            render_checkpoint(last_sampler, surface, run) if last_sampler else None
        ),
        "user_metadata": run.user_metadata,
    }
    if surface.extended_records:
        record["save_dir"] = str(state.run_dir(run.training_run_id))
    return _compact(record)


def optimizer_config(family: str) -> dict[str, Any]:
    """The wire ``optimizer_config`` of an optimizer family."""
    return {"type": "dimuon", "version": 1} if family == "dimuon" else {"type": "adamw"}


def render_weights_info(run: RunRecord, ckpt: CheckpointRecord, surface: Surface) -> dict[str, Any]:
    """``WeightsInfoResponse`` (Twinkle wraps it in ``{"weights_info": ...}``).

    ``exists`` and ``created_at`` are the tinkercloud fields; the SDK ignores them.
    """
    info = _compact(
        {
            "base_model": run.base_model,
            "optimizer_config": optimizer_config(run.optimizer),
            "is_lora": run.is_lora,
            "lora_rank": run.lora_rank,
            "train_unembed": run.train_unembed,
            "train_mlp": run.train_mlp,
            "train_attn": run.train_attn,
            "exists": True,
            "created_at": iso(ckpt.created_at),
        }
    )
    return {"weights_info": info} if surface.wrap_weights_info else info
