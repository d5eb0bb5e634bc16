"""In-memory records of sessions, training runs, checkpoints and samplers, plus their files.

Everything is guarded by one re-entrant lock, because the records are read and written
both by request handlers (on the server's loop) and by test helpers (on the test thread).
No method awaits while holding it.

On disk, under the data directory::

    sessions/<session_id>.json
    runs/<run_id>/run.json
    runs/<run_id>/<kind>/<name>/checkpoint.json    metadata
    runs/<run_id>/<kind>/<name>/...                 the checkpoint's files

(ids and names are percent-encoded into file names). A server started on an existing data
directory reloads runs and checkpoints; reloaded sessions are no longer live.

Times: ``created_at``-style fields are wall-clock seconds (``time.time()``), rendered as
RFC 3339 on the wire; session liveness uses ``time.monotonic()`` so a clock change cannot
expire a session.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec

from ._auth import LOCAL_OWNER
from ._errors import bad_request, conflict, gone, not_found

__all__ = [
    "KIND_TO_TYPE",
    "MAX_TTL_S",
    "MIN_TTL_S",
    "CheckpointRecord",
    "RunRecord",
    "SamplerRecord",
    "ServerState",
    "SessionRecord",
    "parse_checkpoint_path",
    "validate_ttl",
]

logger = logging.getLogger(__name__)

KIND_TO_TYPE: Mapping[str, str] = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}
"""Path segment of a checkpoint kind -> its ``checkpoint_type``."""

MIN_TTL_S = 3600
MAX_TTL_S = 10 * 365 * 24 * 3600
_METADATA_FILE = "checkpoint.json"
_SCHEMES = ("tinker://", "twinkle://")

_R = TypeVar("_R")


def validate_ttl(ttl_seconds: int | None) -> None:
    """400 unless the TTL is ``None`` or within 1 hour .. 10 years (as the service checks)."""
    if ttl_seconds is not None and not MIN_TTL_S <= ttl_seconds <= MAX_TTL_S:
        raise bad_request(
            f"ttl_seconds must be between {MIN_TTL_S} (1 hour) and {MAX_TTL_S} (10 years), "
            f"got {ttl_seconds}"
        )


def _validate_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise bad_request(f"Invalid checkpoint name: {name!r}")
    if len(name) > 255:
        raise bad_request("Checkpoint name is longer than 255 characters")


def parse_checkpoint_path(path: str) -> tuple[str, str, str]:
    """``(training_run_id, kind, name)`` from ``tinker://run/kind/name`` (or ``twinkle://``).

    Raises a 400 for anything else, the same rule as the SDK's ``ParsedCheckpointTinkerPath``:
    exactly three segments, and a known kind.
    """
    for scheme in _SCHEMES:
        if path.startswith(scheme):
            parts = path[len(scheme) :].split("/")
            if len(parts) == 3 and parts[0] and parts[1] in KIND_TO_TYPE and parts[2]:
                return parts[0], parts[1], parts[2]
            break
    raise bad_request(f"Invalid checkpoint path: {path!r}")


# ---------------------------------------------------------------------------------- records


@dataclass
class SessionRecord:
    """A client session (``create_session``)."""

    session_id: str
    created_at: float
    tags: list[str] = field(default_factory=list)
    user_metadata: dict[str, Any] | None = None
    sdk_version: str | None = None
    project_id: str | None = None
    display_name: str | None = None
    finish_reason: str | None = None
    finish_detail: str | None = None
    expired: bool = False
    training_run_ids: list[str] = field(default_factory=list)
    sampler_ids: list[str] = field(default_factory=list)
    sampling_seq_ids: set[int] = field(default_factory=set)
    last_seen: float = 0.0
    """``time.monotonic()`` of the last request that carried this session (not persisted)."""

    @property
    def live(self) -> bool:
        """Neither finished nor expired."""
        return self.finish_reason is None and not self.expired

    def status(self) -> dict[str, Any]:
        """The ``SessionStatus`` union as JSON."""
        if self.finish_reason is not None:
            status: dict[str, Any] = {
                "type": "client_finished",
                "reason": {"type": self.finish_reason},
            }
            if self.finish_detail is not None:
                status["detail"] = self.finish_detail
            return status
        if self.expired:
            return {"type": "cancelled", "detail": "session expired: no heartbeat"}
        return {"type": "active"}


@dataclass
class RunRecord:
    """A training run (one model of a session)."""

    training_run_id: str
    session_id: str
    model_seq_id: int
    base_model: str
    created_at: float
    last_request_time: float
    is_lora: bool = True
    lora_rank: int | None = None
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True
    user_metadata: dict[str, str] | None = None
    corrupted: bool = False
    read_only: bool = False
    """Copies made by ``copy_weights`` cannot be trained."""
    project_id: str | None = None
    model_owner: str = LOCAL_OWNER
    optimizer: str = "adamw"
    """The optimizer family chosen at creation (``adamw`` or ``dimuon``)."""


@dataclass
class CheckpointRecord:
    """One saved checkpoint; its files live in ``ServerState.checkpoint_dir(...)``."""

    training_run_id: str
    kind: str
    name: str
    created_at: float
    size_bytes: int = 0
    public: bool = False
    expires_at: float | None = None
    user_metadata: dict[str, str] | None = None

    @property
    def checkpoint_id(self) -> str:
        """``<kind>/<name>``, as in REST paths."""
        return f"{self.kind}/{self.name}"

    @property
    def checkpoint_type(self) -> str:
        """``training``, ``sampler`` or ``external``."""
        return KIND_TO_TYPE[self.kind]

    def path(self, scheme: str = "tinker") -> str:
        """``tinker://<run>/<kind>/<name>`` (or with another scheme)."""
        return f"{scheme}://{self.training_run_id}/{self.kind}/{self.name}"


@dataclass
class SamplerRecord:
    """A sampling session (``create_sampling_session`` or an ephemeral sampler save)."""

    sampler_id: str
    session_id: str
    base_model: str
    model_path: str | None = None
    sampling_session_seq_id: int | None = None
    clients: int = 0
    """How many clones joined (``join_sampling_session`` hands out 1, 2, ...)."""


# ------------------------------------------------------------------------------------ state


def _quote(text: str) -> str:
    return quote(text, safe="")


def _write_json(path: Path, value: Any) -> None:
    """Write atomically, so a crash never leaves half a metadata file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode(value))
    os.replace(tmp, path)


class ServerState:
    """All records of one server. Every public method is thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        *,
        session_timeout_s: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = data_dir
        self.session_timeout_s = session_timeout_s
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._sessions: dict[str, SessionRecord] = {}
        self._runs: dict[str, RunRecord] = {}
        self._checkpoints: dict[tuple[str, str, str], CheckpointRecord] = {}
        self._samplers: dict[str, SamplerRecord] = {}
        self._newly_expired: list[str] = []
        self._load()

    def locked(self, fn: Callable[[], _R]) -> _R:
        """Run ``fn`` under the state lock (for follow-up code that reads several records)."""
        with self._lock:
            return fn()

    # -------------------------------------------------------------------------- persistence

    def _session_file(self, session_id: str) -> Path:
        return self.data_dir / "sessions" / f"{_quote(session_id)}.json"

    def run_dir(self, run_id: str) -> Path:
        """Directory of a run's metadata and checkpoints (it may not exist yet)."""
        return self.data_dir / "runs" / _quote(run_id)

    def checkpoint_dir(self, run_id: str, kind: str, name: str) -> Path:
        """Directory of a checkpoint's files (it may not exist yet)."""
        return self.run_dir(run_id) / kind / _quote(name)

    def _save_session(self, record: SessionRecord) -> None:
        _write_json(self._session_file(record.session_id), record)

    def _save_run(self, record: RunRecord) -> None:
        _write_json(self.run_dir(record.training_run_id) / "run.json", record)

    def _save_checkpoint(self, record: CheckpointRecord) -> None:
        directory = self.checkpoint_dir(record.training_run_id, record.kind, record.name)
        _write_json(directory / _METADATA_FILE, record)

    def _load(self) -> None:
        """Reload what an earlier server left in the data directory."""
        for path in sorted((self.data_dir / "sessions").glob("*.json")):
            try:
                session = msgspec.json.decode(path.read_bytes(), type=SessionRecord)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                logger.warning("skipping unreadable session file %s: %s", path, exc)
                continue
            # Its client belonged to an earlier process, so it is no longer live.
            session.expired = session.finish_reason is None
            self._sessions[session.session_id] = session
        for run_file in sorted((self.data_dir / "runs").glob("*/run.json")):
            try:
                run = msgspec.json.decode(run_file.read_bytes(), type=RunRecord)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                logger.warning("skipping unreadable run file %s: %s", run_file, exc)
                continue
            self._runs[run.training_run_id] = run
            for meta in sorted(run_file.parent.glob(f"*/*/{_METADATA_FILE}")):
                try:
                    ckpt = msgspec.json.decode(meta.read_bytes(), type=CheckpointRecord)
                except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    logger.warning("skipping unreadable checkpoint file %s: %s", meta, exc)
                    continue
                self._checkpoints[(ckpt.training_run_id, ckpt.kind, ckpt.name)] = ckpt

    # ----------------------------------------------------------------------------- sessions

    def create_session(
        self,
        *,
        tags: Iterable[str] = (),
        user_metadata: Mapping[str, Any] | None = None,
        sdk_version: str | None = None,
        project_id: str | None = None,
        display_name: str | None = None,
    ) -> SessionRecord:
        """A new live session."""
        record = SessionRecord(
            session_id=str(uuid.uuid4()),
            created_at=self._clock(),
            tags=list(tags),
            user_metadata=dict(user_metadata) if user_metadata is not None else None,
            sdk_version=sdk_version,
            project_id=project_id,
            display_name=display_name,
            last_seen=self._monotonic(),
        )
        with self._lock:
            self._sessions[record.session_id] = record
            self._save_session(record)
        return record

    def get_session(self, session_id: str) -> SessionRecord:
        """A session, live or not (404 if unknown)."""
        with self._lock:
            record = self._sessions.get(session_id)
            if record is None:
                raise not_found(f"Session not found: {session_id}")
            self._check_expiry(record)
            return record

    def _check_expiry(self, record: SessionRecord) -> None:
        if record.live and self._monotonic() - record.last_seen > self.session_timeout_s:
            self._mark_expired(record)

    def _mark_expired(self, record: SessionRecord) -> None:
        record.expired = True
        self._newly_expired.append(record.session_id)

    def live_session(self, session_id: str, *, touch: bool = True) -> SessionRecord:
        """A session that may still be used: 404 if unknown, 410 if finished or expired.

        ``touch`` counts this request as activity (it resets the expiry clock).
        """
        with self._lock:
            record = self.get_session(session_id)
            if record.finish_reason is not None:
                raise gone(f"Session {session_id} has finished")
            if record.expired:
                raise gone(f"Session {session_id} has expired (no heartbeat)")
            if touch:
                record.last_seen = self._monotonic()
            return record

    def touch_session(self, session_id: str) -> None:
        """Count a request as activity of a session, if it is known and live (no errors)."""
        with self._lock:
            record = self._sessions.get(session_id)
            if record is not None:
                self._check_expiry(record)
                if record.live:
                    record.last_seen = self._monotonic()

    def finish_session(self, session_id: str, reason: str, detail: str | None) -> SessionRecord:
        """Mark a session finished. The first reason wins; later calls change nothing."""
        with self._lock:
            record = self.get_session(session_id)
            if record.live:
                record.finish_reason = reason
                record.finish_detail = detail
                self._save_session(record)
            return record

    def expire_session(self, session_id: str) -> None:
        """Expire a session now, as if its heartbeats had stopped (404 if unknown)."""
        with self._lock:
            record = self.get_session(session_id)
            if record.live:
                self._mark_expired(record)

    def sweep_expired_sessions(self) -> list[str]:
        """Expire every session past its timeout; return the sessions expired since last time.

        The server's reaper calls this to expire the futures of those sessions.
        """
        with self._lock:
            for record in self._sessions.values():
                self._check_expiry(record)
            expired, self._newly_expired = self._newly_expired, []
            return expired

    def list_sessions(self) -> list[SessionRecord]:
        """Every session, newest first."""
        with self._lock:
            for record in self._sessions.values():
                self._check_expiry(record)
            return sorted(
                self._sessions.values(), key=lambda s: (s.created_at, s.session_id), reverse=True
            )

    def assign_project(self, session_id: str, project_id: str) -> None:
        """Move a session (and its runs) to another project."""
        with self._lock:
            record = self.get_session(session_id)
            record.project_id = project_id
            self._save_session(record)
            for run_id in record.training_run_ids:
                run = self._runs.get(run_id)
                if run is not None:
                    run.project_id = project_id
                    self._save_run(run)

    def session_checkpoint_stats(self, session_id: str) -> tuple[int, int]:
        """``(count, total bytes)`` of the checkpoints of a session's runs."""
        with self._lock:
            self._purge_expired_checkpoints()
            runs = set(self.get_session(session_id).training_run_ids)
            sizes = [c.size_bytes for c in self._checkpoints.values() if c.training_run_id in runs]
            return len(sizes), sum(sizes)

    # --------------------------------------------------------------------------------- runs

    def next_model_seq_id(self, session_id: str) -> int:
        """The lowest ``model_seq_id`` not yet used in the session."""
        with self._lock:
            record = self.get_session(session_id)
            used = {self._runs[r].model_seq_id for r in record.training_run_ids if r in self._runs}
            seq = 0
            while seq in used:
                seq += 1
            return seq

    def create_training_run(
        self,
        session_id: str,
        model_seq_id: int,
        base_model: str,
        *,
        lora_rank: int | None = 32,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: Mapping[str, str] | None = None,
        read_only: bool = False,
        optimizer: str = "adamw",
    ) -> RunRecord:
        """A new run ``{session_id}:train:{model_seq_id}`` (409 if that id exists).

        Does not check that the session is live: callers that need it use
        :meth:`live_session` first (seeding and ``copy_weights`` do not).
        """
        run_id = f"{session_id}:train:{model_seq_id}"
        now = self._clock()
        with self._lock:
            session = self.get_session(session_id)
            if run_id in self._runs:
                raise conflict(f"Training run already exists: {run_id}")
            record = RunRecord(
                training_run_id=run_id,
                session_id=session_id,
                model_seq_id=model_seq_id,
                base_model=base_model,
                created_at=now,
                last_request_time=now,
                is_lora=lora_rank is not None,
                lora_rank=lora_rank,
                train_mlp=train_mlp,
                train_attn=train_attn,
                train_unembed=train_unembed,
                user_metadata=dict(user_metadata) if user_metadata is not None else None,
                read_only=read_only,
                project_id=session.project_id,
                optimizer=optimizer,
            )
            self._runs[run_id] = record
            session.training_run_ids.append(run_id)
            self._save_run(record)
            return record

    def get_run(self, run_id: str) -> RunRecord:
        """A training run (404 if unknown)."""
        with self._lock:
            record = self._runs.get(run_id)
            if record is None:
                raise not_found(f"Training run not found: {run_id}")
            return record

    def touch_run(self, run_id: str) -> RunRecord:
        """Record activity on a run (its ``last_request_time``) and on its session."""
        with self._lock:
            record = self.get_run(run_id)
            record.last_request_time = self._clock()
            session = self._sessions.get(record.session_id)
            if session is not None and session.live:
                session.last_seen = self._monotonic()
            return record

    def list_runs(self, project_id: str | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally of one project."""
        with self._lock:
            runs = [
                r for r in self._runs.values() if project_id is None or r.project_id == project_id
            ]
        return sorted(runs, key=lambda r: (r.created_at, r.training_run_id), reverse=True)

    def used_loras(self) -> int:
        """Runs whose session is live (the adapters a real server would keep loaded)."""
        with self._lock:
            count = 0
            for run in self._runs.values():
                session = self._sessions.get(run.session_id)
                if session is not None:
                    self._check_expiry(session)
                    count += session.live
            return count

    # -------------------------------------------------------------------------- checkpoints

    def _purge_expired_checkpoints(self) -> None:
        now = self._clock()
        for key, record in list(self._checkpoints.items()):
            if record.expires_at is not None and record.expires_at <= now:
                del self._checkpoints[key]
                shutil.rmtree(self.checkpoint_dir(*key), ignore_errors=True)

    def add_checkpoint(
        self,
        run_id: str,
        kind: str,
        name: str,
        *,
        files: Mapping[str, bytes] | None = None,
        size_bytes: int | None = None,
        ttl_seconds: int | None = None,
        user_metadata: Mapping[str, str] | None = None,
        created_at: float | None = None,
        overwrite: bool = False,
    ) -> CheckpointRecord:
        """Register a checkpoint and write its files.

        ``files`` maps file names to contents. Files already placed in
        :meth:`checkpoint_dir` (big weights written outside the lock) are kept. The size is
        ``size_bytes`` if given, else the total size of the directory's files.
        409 if the checkpoint exists and ``overwrite`` is false.
        """
        if kind not in KIND_TO_TYPE:
            raise bad_request(f"Invalid checkpoint kind: {kind!r}")
        _validate_name(name)
        validate_ttl(ttl_seconds)
        self.get_run(run_id)
        key = (run_id, kind, name)
        directory = self.checkpoint_dir(run_id, kind, name)
        with self._lock:
            self._purge_expired_checkpoints()
            if key in self._checkpoints and not overwrite:
                raise conflict(f"Checkpoint already exists: {kind}/{name}")
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, content in (files or {}).items():
            _validate_name(file_name)
            (directory / file_name).write_bytes(content)
        if size_bytes is None:
            size_bytes = sum(
                p.stat().st_size
                for p in directory.iterdir()
                if p.is_file() and p.name != _METADATA_FILE
            )
        now = self._clock() if created_at is None else created_at
        record = CheckpointRecord(
            training_run_id=run_id,
            kind=kind,
            name=name,
            created_at=now,
            size_bytes=size_bytes,
            expires_at=now + ttl_seconds if ttl_seconds is not None else None,
            user_metadata=dict(user_metadata) if user_metadata is not None else None,
        )
        with self._lock:
            self._checkpoints[key] = record
            self._save_checkpoint(record)
        return record

    def get_checkpoint(self, run_id: str, kind: str, name: str) -> CheckpointRecord:
        """A checkpoint (404 if the run or the checkpoint is unknown or expired)."""
        with self._lock:
            self.get_run(run_id)
            self._purge_expired_checkpoints()
            record = self._checkpoints.get((run_id, kind, name))
            if record is None:
                raise not_found(f"Checkpoint not found: {run_id}/{kind}/{name}")
            return record

    def checkpoint_by_path(self, path: str) -> CheckpointRecord:
        """The checkpoint a ``tinker://`` (or ``twinkle://``) path names (400 / 404)."""
        return self.get_checkpoint(*parse_checkpoint_path(path))

    def checkpoint_files(self, record: CheckpointRecord) -> list[Path]:
        """The checkpoint's files, sorted by name (without the metadata file)."""
        directory = self.checkpoint_dir(record.training_run_id, record.kind, record.name)
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != _METADATA_FILE)

    def list_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """A run's checkpoints, oldest first (404 if the run is unknown)."""
        with self._lock:
            self.get_run(run_id)
            self._purge_expired_checkpoints()
            records = [c for c in self._checkpoints.values() if c.training_run_id == run_id]
        return sorted(records, key=lambda c: (c.created_at, c.kind, c.name))

    def list_user_checkpoints(self) -> list[CheckpointRecord]:
        """Every checkpoint, newest first."""
        with self._lock:
            self._purge_expired_checkpoints()
            records = list(self._checkpoints.values())
        return sorted(
            records, key=lambda c: (c.created_at, c.training_run_id, c.name), reverse=True
        )

    def latest_checkpoint(self, run_id: str, kind: str) -> CheckpointRecord | None:
        """The newest checkpoint of one kind of a run."""
        candidates = [c for c in self.list_checkpoints(run_id) if c.kind == kind]
        return candidates[-1] if candidates else None

    def delete_checkpoint(self, run_id: str, kind: str, name: str) -> None:
        """Remove a checkpoint and its files (404 if unknown)."""
        with self._lock:
            self.get_checkpoint(run_id, kind, name)
            del self._checkpoints[(run_id, kind, name)]
        shutil.rmtree(self.checkpoint_dir(run_id, kind, name), ignore_errors=True)

    def update_checkpoint(
        self,
        record: CheckpointRecord,
        *,
        public: bool | None = None,
        ttl_seconds: int | None = None,
        clear_ttl: bool = False,
    ) -> None:
        """Publish/unpublish, or set/clear the TTL (counted from now)."""
        validate_ttl(ttl_seconds)
        with self._lock:
            if public is not None:
                record.public = public
            if clear_ttl:
                record.expires_at = None
            elif ttl_seconds is not None:
                record.expires_at = self._clock() + ttl_seconds
            self._save_checkpoint(record)

    def copy_checkpoint(
        self,
        source: CheckpointRecord,
        *,
        session_id: str | None,
        model_seq_id: int | None,
        project_id: str | None,
        ttl_seconds: int | None,
    ) -> CheckpointRecord:
        """``copy_weights``: a read-only run holding a copy of ``source``.

        The copy shares storage with the source (hard links where the file system allows),
        as the service does. With no session, a new (finished) session in ``project_id``
        owns the copy.
        """
        validate_ttl(ttl_seconds)
        run = self.get_run(source.training_run_id)
        with self._lock:
            if session_id is None:
                owner = self.create_session(project_id=project_id, tags=["copy_weights"])
                self.finish_session(owner.session_id, "success", "copy_weights")
                session_id, model_seq_id = owner.session_id, 0
            elif model_seq_id is None:
                model_seq_id = self.next_model_seq_id(session_id)
            copy = self.create_training_run(
                session_id,
                model_seq_id,
                run.base_model,
                lora_rank=run.lora_rank,
                train_mlp=run.train_mlp,
                train_attn=run.train_attn,
                train_unembed=run.train_unembed,
                user_metadata=run.user_metadata,
                read_only=True,
                optimizer=run.optimizer,
            )
        target = self.checkpoint_dir(copy.training_run_id, source.kind, source.name)
        for path in self.checkpoint_files(source):
            destination = target / path.relative_to(
                self.checkpoint_dir(source.training_run_id, source.kind, source.name)
            )
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)
        return self.add_checkpoint(
            copy.training_run_id,
            source.kind,
            source.name,
            size_bytes=source.size_bytes,
            ttl_seconds=ttl_seconds,
            user_metadata=source.user_metadata,
        )

    # ----------------------------------------------------------------------------- samplers

    def create_sampler(
        self,
        session_id: str,
        *,
        base_model: str,
        model_path: str | None = None,
        sampling_session_seq_id: int | None = None,
    ) -> SamplerRecord:
        """A sampling session ``{session_id}:sample:{seq}`` in a live session.

        ``sampling_session_seq_id`` is shared with ephemeral sampler saves; reusing one is
        a 409. Without one (a follow-up convenience) the next free number is used.
        """
        with self._lock:
            session = self.live_session(session_id)
            if sampling_session_seq_id is None:
                sampling_session_seq_id = max(session.sampling_seq_ids, default=-1) + 1
            if sampling_session_seq_id in session.sampling_seq_ids:
                raise conflict(
                    f"sampling_session_seq_id {sampling_session_seq_id} was already used in "
                    f"session {session_id}"
                )
            session.sampling_seq_ids.add(sampling_session_seq_id)
            record = SamplerRecord(
                sampler_id=f"{session_id}:sample:{sampling_session_seq_id}",
                session_id=session_id,
                base_model=base_model,
                model_path=model_path,
                sampling_session_seq_id=sampling_session_seq_id,
            )
            self._samplers[record.sampler_id] = record
            session.sampler_ids.append(record.sampler_id)
            return record

    def get_sampler(self, sampler_id: str) -> SamplerRecord:
        """A sampling session (404 if unknown)."""
        with self._lock:
            record = self._samplers.get(sampler_id)
            if record is None:
                raise not_found(f"Sampler not found: {sampler_id}")
            return record

    def join_sampler(self, sampler_id: str) -> int:
        """The next clone number of a sampling session (1, 2, ...); touches its session."""
        with self._lock:
            record = self.get_sampler(sampler_id)
            self.live_session(record.session_id)
            record.clients += 1
            return record.clients
