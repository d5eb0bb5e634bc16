"""The model registry: base models, each training run's LoRA adapter, and sampler weights.

Glue between the routes and the numpy model in ``_model.py``. One :class:`ModelRegistry`
per server lives in ``ServerContext.extras`` (see :func:`registry`). It holds:

- one :class:`~._model.BaseModel` per base model name (created on first use);
- one :class:`TrainedModel` per training run: its adapter, its :class:`~._sequencing.Sequencer`
  and the weights its ``inflight`` samplers read;
- one :class:`SamplerSource` per sampling session: the (frozen) adapter it samples with;
- one :class:`~._batching.SampleBatcher` per base model (real compute only).

Checkpoints on disk (in ``ServerState.checkpoint_dir``): ``weights/<name>`` and
``sampler_weights/<name>`` hold ``adapter.npz`` (``_model.save_state``; training
checkpoints with the AdamW state); ``external_weights/<name>`` holds a PEFT-style export,
``adapter_config.json`` and ``adapter_model.safetensors``.

Everything here runs on the server's loop except the functions documented as blocking,
which the routes call in a worker thread (or inline in zero-compute mode).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._batching import SampleBatcher
from ._errors import bad_request, not_found
from ._model import Adapter, BaseModel, SampleResult, load_state, set_blas_threads
from ._routing import ServerContext
from ._sequencing import Sequencer, remember
from ._state import CheckpointRecord, ServerState

__all__ = [
    "ADAPTER_FILE",
    "ARCH",
    "MAX_LORA_RANK",
    "TOKENIZER_ID",
    "ModelRegistry",
    "Publication",
    "SamplerSource",
    "TrainedModel",
    "compute_executor",
    "external_export",
    "read_adapter",
    "registry",
    "snapshot",
]

ADAPTER_FILE = "adapter.npz"
MAX_LORA_RANK = 128
TOKENIZER_ID = "tinker_async/byte"
"""``GetInfoResponse.model_data.tokenizer_id`` of every local model (the byte tokenizer)."""
ARCH = "tinker-local-byte-lm"

_EXTRAS_KEY = "models"
_MEMORY = 100_000  # remembered create / sample submits, for retries
_ADAPTER_CACHE = 64  # adapters loaded from checkpoint files, by path
_ZERO_RESULTS = 1024  # zero-compute sample results, by request shape

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_blas_limited = False


def _limit_blas_threads() -> None:
    """One OpenBLAS thread per call, once per process, before the first real model runs.

    The model's matrices are small: on a few cores OpenBLAS's own threads, on top of the
    compute pool's, fight for the CPU and sampling runs ~2.5x slower (measured on 2
    cores). Done when a server first needs real compute, not on import.
    """
    global _blas_limited
    with _executor_lock:
        if not _blas_limited:
            _blas_limited = True
            set_blas_threads(1)


def compute_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The worker threads that run model computations (shared by every server).

    numpy releases the GIL in its kernels, so this keeps each server's loop free for polls
    and heartbeats while a model trains or samples.
    """
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(4, os.cpu_count() or 1),
                thread_name_prefix="tinker-local-compute",
            )
        return _executor


@dataclass(eq=False)
class Publication:
    """The weights that the ``inflight`` samplers of one model read.

    Each inflight ``save_weights_for_sampler`` replaces ``adapter`` with a fresh snapshot,
    so a sampler made earlier moves to the newer weights (the SDK's inflight contract: the
    weights as of creation or newer).
    """

    adapter: Adapter | None = None


@dataclass(eq=False)
class TrainedModel:
    """One training run's live state."""

    run_id: str
    base: BaseModel
    adapter: Adapter | None
    """``None`` until a create-via-load has applied (or if it failed: see ``load_error``)."""
    sequencer: Sequencer
    inflight: Publication = field(default_factory=Publication)
    load_error: str | None = None

    def require_adapter(self) -> Adapter:
        """The adapter, or a ``ValueError`` saying why there is none."""
        if self.adapter is None:
            why = f": {self.load_error}" if self.load_error else ""
            raise ValueError(f"model {self.run_id} has no weights loaded{why}")
        return self.adapter


@dataclass(eq=False)
class SamplerSource:
    """What a sampling session samples with: a base model and a frozen (or published) adapter."""

    base: BaseModel
    fixed: Adapter | None = None
    published: Publication | None = None
    last_seq_id: int | None = None
    """The last sampling ``seq_id`` seen (recorded, not enforced)."""

    def adapter(self) -> Adapter | None:
        """The adapter to sample with now (``None``: the base model)."""
        if self.published is not None:
            return self.published.adapter
        return self.fixed


def snapshot(adapter: Adapter) -> Adapter:
    """A frozen copy of an adapter's weights (no optimizer state), for sampling."""
    return Adapter(
        adapter.base,
        rank=adapter.rank,
        seed=adapter.seed,
        train_mlp=adapter.train_mlp,
        train_attn=adapter.train_attn,
        train_unembed=adapter.train_unembed,
        params={key: value.copy() for key, value in adapter.params.items()},
    )


# -------------------------------------------------------------------------- checkpoint files


def read_adapter(
    state: ServerState,
    record: CheckpointRecord,
    base: BaseModel,
    *,
    include_optimizer: bool,
    optimizer: str | None = None,
) -> Adapter:
    """Blocking: the adapter saved in a checkpoint (``ValueError`` if it holds none).

    ``optimizer`` is the family of the run receiving it: the optimizer state of another
    family cannot be loaded (``ValueError``); weights alone can, and the run keeps its own.
    """
    path = state.checkpoint_dir(record.training_run_id, record.kind, record.name) / ADAPTER_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(
            f"checkpoint {record.path()} holds no weights of the local model "
            f"(it has no {ADAPTER_FILE})"
        ) from None
    adapter = load_state(base, data, include_optimizer=include_optimizer)
    if optimizer is not None and optimizer != adapter.optimizer:
        if include_optimizer:
            raise ValueError(
                f"checkpoint {record.path()} holds {adapter.optimizer} optimizer state and "
                f"this model uses {optimizer}; load the weights only"
            )
        adapter.optimizer = optimizer  # fresh moments: load_state loaded none
    return adapter


def external_export(adapter: Adapter, base_model: str) -> dict[str, bytes]:
    """Blocking: a PEFT-style export (``adapter_config.json`` + ``adapter_model.safetensors``).

    PEFT stores ``lora_A`` as ``(rank, in)`` and ``lora_B`` as ``(out, rank)``, the
    transposes of the local ``A`` (``in x rank``) and ``B`` (``rank x out``).
    """
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for target in adapter.targets:
        prefix = f"base_model.model.{target}"
        tensors[f"{prefix}.lora_A.weight"] = adapter.params[f"{target}.A"].T
        tensors[f"{prefix}.lora_B.weight"] = adapter.params[f"{target}.B"].T
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": adapter.rank,
        "lora_alpha": adapter.base.config.lora_alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(adapter.targets),
    }
    return {
        "adapter_config.json": json.dumps(config, indent=2).encode(),
        "adapter_model.safetensors": _safetensors(tensors, {"format": "pt"}),
    }


def _safetensors(tensors: dict[str, np.ndarray[Any, Any]], metadata: dict[str, str]) -> bytes:
    """The safetensors format: u64 header length, JSON header, then the raw tensors."""
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs)


# ---------------------------------------------------------------------------------- registry


class ModelRegistry:
    """Base models, trained models and sampler sources of one server (loop-only)."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self.zero_compute = ctx.config.zero_compute
        self._bases: dict[str, BaseModel] = {}
        self._models: dict[str, TrainedModel] = {}
        self._samplers: dict[str, SamplerSource] = {}
        self._loading: dict[str, asyncio.Future[SamplerSource]] = {}
        self._batchers: dict[str, SampleBatcher] = {}
        self._adapters: dict[tuple[str, int], Adapter] = {}
        self.creates: dict[tuple[str, int], str] = {}
        """``(session_id, model_seq_id)`` -> request id of the call that created the model."""
        self.submits: dict[str, Any] = {}
        """``X-Idempotency-Key`` -> the answer given, for non-sequenced submits."""
        self.zero_results: dict[tuple[Any, ...], SampleResult] = {}
        """Zero-compute sample results by what they depend on (see ``_sampling_routes``)."""
        self._deleted: set[str] = set()
        """Training runs whose model was deleted (tinkercloud's ``delete_model``)."""

    @property
    def executor(self) -> concurrent.futures.Executor | None:
        """Where model work runs: a thread pool, or inline (``None``) in zero-compute mode,
        where every call returns at once and a thread hop would only add latency."""
        return None if self.zero_compute else compute_executor()

    def remember_submit(self, key: str | None, answer: Any) -> None:
        """Keep the answer of a submit so that a retry with the same key gets it again."""
        if key is not None:
            remember(self.submits, key, answer, _MEMORY)

    def remember_zero_result(self, key: tuple[Any, ...], result: SampleResult) -> None:
        """Keep a zero-compute sample result for the next request with the same key."""
        remember(self.zero_results, key, result, _ZERO_RESULTS)

    def remember_create(self, session_id: str, model_seq_id: int, request_id: str) -> None:
        """Keep the request id of a model creation, for retries of the same creation."""
        remember(self.creates, (session_id, model_seq_id), request_id, _MEMORY)

    # ---------------------------------------------------------------------------- bases

    def base_model(self, name: str) -> BaseModel:
        """The base model ``name`` (400 listing the supported ones if it is not served)."""
        base = self._bases.get(name)
        if base is not None:
            return base
        supported = self._ctx.config.model_names
        if name not in supported:
            raise bad_request(f"Unsupported base model {name!r}; supported: {', '.join(supported)}")
        if not self.zero_compute:
            _limit_blas_threads()
        base = BaseModel.create(name, zero_compute=self.zero_compute)
        self._bases[name] = base
        return base

    def batcher(self, base: BaseModel) -> SampleBatcher:
        """The sampling batcher of a base model."""
        batcher = self._batchers.get(base.name)
        if batcher is None:
            batcher = self._batchers[base.name] = SampleBatcher(base, compute_executor())
        return batcher

    # --------------------------------------------------------------------------- models

    def add_model(
        self, run_id: str, base: BaseModel, adapter: Adapter | None, *, next_seq: int
    ) -> TrainedModel:
        """Register a new trained model whose next request will be ``next_seq``."""
        model = TrainedModel(run_id, base, adapter, Sequencer(next_seq))
        self._models[run_id] = model
        return model

    def model(self, run_id: str) -> TrainedModel:
        """A trained model (404 if there is no such training run).

        A run known to the state but not here (seeded by a test helper, or reloaded from a
        data directory by a new server) gets a fresh adapter of its recorded rank, and its
        sequence starts at 1.
        """
        model = self._models.get(run_id)
        if model is not None:
            return model
        if run_id in self._deleted:
            raise not_found(f"Model {run_id} was deleted")
        run = self._ctx.state.get_run(run_id)
        base = self.base_model(run.base_model)
        adapter = Adapter.new(
            base,
            rank=run.lora_rank or 32,
            train_mlp=run.train_mlp,
            train_attn=run.train_attn,
            train_unembed=run.train_unembed,
        )
        return self.add_model(run_id, base, adapter, next_seq=1)

    def delete_model(self, run_id: str) -> None:
        """Free a trained model: its weights go, and later requests for it are 404s."""
        self._models.pop(run_id, None)
        self._deleted.add(run_id)

    def is_deleted(self, run_id: str) -> bool:
        return run_id in self._deleted

    # ------------------------------------------------------------------------- samplers

    def add_sampler(self, sampler_id: str, source: SamplerSource) -> None:
        """Register the weights of a sampling session made by a training run."""
        self._samplers[sampler_id] = source

    def cached_sampler(self, sampler_id: str) -> SamplerSource | None:
        """A sampler source already resolved, if any (no I/O)."""
        return self._samplers.get(sampler_id)

    async def sampler(
        self, sampler_id: str, base_model: str, model_path: str | None
    ) -> SamplerSource:
        """The source of a sampling session, loading its checkpoint on first use.

        Concurrent first requests share one load.
        """
        source = self._samplers.get(sampler_id)
        if source is not None:
            return source
        pending = self._loading.get(sampler_id)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve(base_model, model_path))
            self._loading[sampler_id] = pending

            def forget(done: asyncio.Future[SamplerSource]) -> None:
                self._loading.pop(sampler_id, None)
                if not done.cancelled():
                    done.exception()  # retrieved: its waiters may all have gone away

            pending.add_done_callback(forget)
        source = await asyncio.shield(pending)
        self._samplers[sampler_id] = source
        return source

    async def _resolve(self, base_model: str, model_path: str | None) -> SamplerSource:
        base = self.base_model(base_model)
        if model_path is None:
            return SamplerSource(base)
        return SamplerSource(base, fixed=await self.checkpoint_adapter(model_path, base))

    async def checkpoint_adapter(self, model_path: str, base: BaseModel) -> Adapter:
        """The frozen adapter of a checkpoint path (cached per path and file version)."""
        state = self._ctx.state
        record = state.checkpoint_by_path(model_path)
        file = state.checkpoint_dir(record.training_run_id, record.kind, record.name)
        try:
            version = (file / ADAPTER_FILE).stat().st_mtime_ns
        except OSError:
            version = -1  # read_adapter explains what is missing
        key = (model_path, version)
        adapter = self._adapters.get(key)
        if adapter is None:
            executor = self.executor
            if executor is None:
                adapter = read_adapter(state, record, base, include_optimizer=False)
            else:
                adapter = await asyncio.get_running_loop().run_in_executor(
                    executor,
                    lambda: read_adapter(state, record, base, include_optimizer=False),
                )
            remember(self._adapters, key, adapter, _ADAPTER_CACHE)
        return adapter


def registry(ctx: ServerContext) -> ModelRegistry:
    """The model registry of a server (created on first use)."""
    found = ctx.extras.get(_EXTRAS_KEY)
    if isinstance(found, ModelRegistry):
        return found
    created = ModelRegistry(ctx)
    ctx.extras[_EXTRAS_KEY] = created
    return created
