"""``TwinkleClient``: the Twinkle manager client's API, on tinker_async's core.

The same constructor and method names as ``twinkle_client.manager.TwinkleClient``
(twinkle-kit): ``base_url`` / ``api_key`` (else ``TWINKLE_SERVER_URL`` /
``TWINKLE_SERVER_TOKEN``), ``route_prefix``, ``session_heartbeat_interval`` and
``session_metadata``. Plain methods block and return values, as Twinkle's do; each has an
``_async`` coroutine form. Underneath is one ServiceClient in the Twinkle dialect: one
aiohttp session, and the heartbeat is a task on its loop, not a thread of its own.

The session is created in the constructor, as Twinkle's client does, when the
constructor runs outside an event loop; inside one, it is created by the first call.
``close()`` ends it (and runs at exit if the program does not).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from . import _argcheck, _sync
from . import types as t
from ._loops import running_loop
from ._sync import homed
from .service import ServiceClient, family_of

__all__ = ["DeleteCheckpointResponse", "ParsedCheckpointTwinklePath", "TwinkleClient"]


class ParsedCheckpointTwinklePath(msgspec.Struct, kw_only=True, frozen=True):
    """Where a checkpoint lives: its storage ``path`` and its ``twinkle://`` URI."""

    path: str
    twinkle_path: str
    training_run_id: str
    checkpoint_type: str
    checkpoint_id: str


class DeleteCheckpointResponse(msgspec.Struct, kw_only=True, frozen=True):
    """The outcome of :meth:`TwinkleClient.delete_checkpoint`."""

    success: bool = True
    message: str | None = None


class TwinkleClient:
    """Sessions, training runs, checkpoints, capacity and weights info of a Twinkle server."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        route_prefix: str | None = "/twinkle",
        session_heartbeat_interval: float = 10,
        session_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        metadata = {k: str(v) for k, v in (session_metadata or {}).items()}
        self._service = ServiceClient(
            metadata, base_url=base_url, api_key=api_key, dialect="twinkle",
            route_prefix=route_prefix or "", heartbeat_interval=session_heartbeat_interval)
        family = family_of(self._service)
        self._home = family.home
        self._rest = self._service.create_rest_client()
        self.base_url = family.transport.config.base_url
        self.route_prefix = (route_prefix or "").rstrip("/")
        if running_loop() is None:
            self._service.connect().result()

    def __repr__(self) -> str:
        return f"TwinkleClient(base_url={self.base_url!r}, session={self.session_id!r})"

    def __enter__(self) -> TwinkleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> TwinkleClient:
        await self._service.connect_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_async()

    @property
    def session_id(self) -> str | None:
        """The server session's id (once it exists)."""
        return self._service.session_id

    @homed
    async def close_async(self) -> None:
        """End the session and close the connection pool (idempotent)."""
        await self._service.close_async()

    @homed
    async def create_session_async(self, metadata: Mapping[str, Any] | None = None) -> str:
        """The server session's id, creating it if needed. (Twinkle's client makes one
        session per client; so does this one, and ``metadata`` is the constructor's.)"""
        return await self._service.connect_async()

    @homed
    async def health_check_async(self) -> bool:
        """True if the server answers its health route."""
        return await self._rest.health_check_async()

    @homed
    async def get_server_capabilities_async(self) -> t.GetServerCapabilitiesResponse:
        """The models the server supports."""
        return await self._rest.get_server_capabilities_async()

    @homed
    async def get_capacity_info_async(self) -> t.CapacityInfo:
        """LoRA capacity: ``max_loras``, ``used_loras``, ``free_loras``."""
        return await self._rest.get_capacity_info_async()

    @homed
    async def list_training_runs_async(
        self, limit: int = 20, offset: int = 0, all_users: bool = False
    ) -> list[t.TrainingRun]:
        """One page of training runs (``all_users``: everyone's, where allowed)."""
        runs, _ = await self.list_training_runs_with_cursor_async(limit, offset, all_users)
        return runs

    @homed
    async def list_training_runs_with_cursor_async(
        self, limit: int = 20, offset: int = 0, all_users: bool = False
    ) -> tuple[list[t.TrainingRun], t.Cursor | None]:
        """One page of training runs and the page cursor."""
        scope: Literal["owned", "accessible"] = "accessible" if all_users else "owned"
        return await self._rest.list_training_runs_with_cursor_async(limit, offset, scope)

    @homed
    async def get_training_run_async(self, run_id: str) -> t.TrainingRun:
        """One training run."""
        return await self._rest.get_training_run_async(run_id)

    @homed
    async def find_training_run_by_model_async(self, base_model: str) -> list[t.TrainingRun]:
        """Every training run on ``base_model`` (all pages, not only the first 100)."""
        return await self._rest.find_training_runs_by_model_async(base_model)

    @homed
    async def list_checkpoints_async(self, run_id: str) -> list[t.Checkpoint]:
        """A run's checkpoints."""
        return list((await self._rest.list_checkpoints_async(run_id)).checkpoints)

    @homed
    async def get_checkpoint_path_async(
        self, run_id: str, checkpoint_id: str
    ) -> ParsedCheckpointTwinklePath:
        """The storage path and ``twinkle://`` URI of a checkpoint (``weights/<name>``)."""
        found = await self._rest.get_checkpoint_path_async(run_id, checkpoint_id)
        return ParsedCheckpointTwinklePath(
            path=found.path,
            twinkle_path=found.twinkle_path or found.tinker_path or "",
            training_run_id=run_id,
            checkpoint_type=checkpoint_id.split("/", 1)[0] if "/" in checkpoint_id else "",
            checkpoint_id=checkpoint_id,
        )

    @homed
    async def get_checkpoint_twinkle_path_async(self, run_id: str, checkpoint_id: str) -> str:
        """The ``twinkle://`` URI of a checkpoint."""
        return (await self.get_checkpoint_path_async(run_id, checkpoint_id)).twinkle_path

    @homed
    async def get_latest_checkpoint_path_async(self, run_id: str) -> str | None:
        """The storage path of the run's newest checkpoint (for resuming), or None."""
        checkpoints = await self.list_checkpoints_async(run_id)
        if not checkpoints:
            return None
        latest = max(checkpoints, key=lambda c: c.time)
        return (await self.get_checkpoint_path_async(run_id, latest.checkpoint_id)).path

    @homed
    async def delete_checkpoint_async(
        self, run_id: str, checkpoint_id: str
    ) -> DeleteCheckpointResponse:
        """Delete a checkpoint."""
        await self._rest.delete_checkpoint_async(run_id, checkpoint_id)
        return DeleteCheckpointResponse(message=f"Deleted checkpoint {checkpoint_id}")

    @homed
    async def get_weights_info_async(self, twinkle_path: str) -> t.WeightsInfoResponse:
        """Base model, LoRA flag and rank of saved weights."""
        return await self._rest.get_weights_info_async(twinkle_path)

    # --- BEGIN GENERATED SYNC FORMS (scripts/gen_sync.py; do not edit) ---
    def close(self) -> None:
        """End the session and close the connection pool (idempotent).

        Sync form of :meth:`close_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.close_async, locals())
        return _sync.call(self, self.close_async()).result()

    def create_session(self, metadata: Mapping[str, Any] | None=None) -> str:
        """The server session's id, creating it if needed. (Twinkle's client makes one
        session per client; so does this one, and ``metadata`` is the constructor's.)

        Sync form of :meth:`create_session_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.create_session_async, locals())
        return _sync.call(self, self.create_session_async(metadata)).result()

    def health_check(self) -> bool:
        """True if the server answers its health route.

        Sync form of :meth:`health_check_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.health_check_async, locals())
        return _sync.call(self, self.health_check_async()).result()

    def get_server_capabilities(self) -> t.GetServerCapabilitiesResponse:
        """The models the server supports.

        Sync form of :meth:`get_server_capabilities_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.get_server_capabilities_async, locals())
        return _sync.call(self, self.get_server_capabilities_async()).result()

    def get_capacity_info(self) -> t.CapacityInfo:
        """LoRA capacity: ``max_loras``, ``used_loras``, ``free_loras``.

        Sync form of :meth:`get_capacity_info_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.get_capacity_info_async, locals())
        return _sync.call(self, self.get_capacity_info_async()).result()

    def list_training_runs(self, limit: int=20, offset: int=0, all_users: bool=False) -> list[t.TrainingRun]:
        """One page of training runs (``all_users``: everyone's, where allowed).

        Sync form of :meth:`list_training_runs_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.list_training_runs_async, locals())
        return _sync.call(self, self.list_training_runs_async(limit, offset, all_users)).result()

    def list_training_runs_with_cursor(self, limit: int=20, offset: int=0, all_users: bool=False) -> tuple[list[t.TrainingRun], t.Cursor | None]:
        """One page of training runs and the page cursor.

        Sync form of :meth:`list_training_runs_with_cursor_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.list_training_runs_with_cursor_async, locals())
        return _sync.call(self, self.list_training_runs_with_cursor_async(limit, offset, all_users)).result()

    def get_training_run(self, run_id: str) -> t.TrainingRun:
        """One training run.

        Sync form of :meth:`get_training_run_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.get_training_run_async, locals())
        return _sync.call(self, self.get_training_run_async(run_id)).result()

    def find_training_run_by_model(self, base_model: str) -> list[t.TrainingRun]:
        """Every training run on ``base_model`` (all pages, not only the first 100).

        Sync form of :meth:`find_training_run_by_model_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.find_training_run_by_model_async, locals())
        return _sync.call(self, self.find_training_run_by_model_async(base_model)).result()

    def list_checkpoints(self, run_id: str) -> list[t.Checkpoint]:
        """A run's checkpoints.

        Sync form of :meth:`list_checkpoints_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.list_checkpoints_async, locals())
        return _sync.call(self, self.list_checkpoints_async(run_id)).result()

    def get_checkpoint_path(self, run_id: str, checkpoint_id: str) -> ParsedCheckpointTwinklePath:
        """The storage path and ``twinkle://`` URI of a checkpoint (``weights/<name>``).

        Sync form of :meth:`get_checkpoint_path_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.get_checkpoint_path_async, locals())
        return _sync.call(self, self.get_checkpoint_path_async(run_id, checkpoint_id)).result()

    def get_checkpoint_twinkle_path(self, run_id: str, checkpoint_id: str) -> str:
        """The ``twinkle://`` URI of a checkpoint.

        Sync form of :meth:`get_checkpoint_twinkle_path_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.get_checkpoint_twinkle_path_async, locals())
        return _sync.call(self, self.get_checkpoint_twinkle_path_async(run_id, checkpoint_id)).result()

    def get_latest_checkpoint_path(self, run_id: str) -> str | None:
        """The storage path of the run's newest checkpoint (for resuming), or None.

        Sync form of :meth:`get_latest_checkpoint_path_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.get_latest_checkpoint_path_async, locals())
        return _sync.call(self, self.get_latest_checkpoint_path_async(run_id)).result()

    def delete_checkpoint(self, run_id: str, checkpoint_id: str) -> DeleteCheckpointResponse:
        """Delete a checkpoint.

        Sync form of :meth:`delete_checkpoint_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.delete_checkpoint_async, locals())
        return _sync.call(self, self.delete_checkpoint_async(run_id, checkpoint_id)).result()

    def get_weights_info(self, twinkle_path: str) -> t.WeightsInfoResponse:
        """Base model, LoRA flag and rank of saved weights.

        Sync form of :meth:`get_weights_info_async`; blocks until done and returns the value, as
        the API it mirrors does.
        """
        _argcheck.check_call(self.get_weights_info_async, locals())
        return _sync.call(self, self.get_weights_info_async(twinkle_path)).result()
    # --- END GENERATED SYNC FORMS ---

