"""The scenarios: real tinker-cookbook 0.6.1 entry points with tiny settings.

Each function runs in a fresh interpreter prepared by ``compat._setup.prepare`` (see
``compat/_child.py``), talks to the embedded server named by ``TINKER_BASE_URL`` /
``TINKER_API_KEY``, and returns a JSON-able dict of facts for the test to assert on. The
cookbook also leaves its own files in ``workdir`` (``metrics.jsonl``, ``checkpoints.jsonl``),
which the tests read too.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chz

from ._setup import MODEL, RENDERER

#: Tiny chat data for the supervised loop: 12 conversations, batch 2 -> 6 steps.
CONVERSATIONS = [
    [{"role": "user", "content": f"What is {a} plus {b}?"},
     {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
    for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7),
                 (7, 8), (8, 9), (9, 1), (2, 2), (3, 3), (4, 4)]
]

#: Preference pairs for DPO: the chosen reply is polite, the rejected one curt.
COMPARISONS = [
    {"comparison": {
        "prompt_conversation": [{"role": "user", "content": f"Name a colour, {n}."}],
        "completion_A": [{"role": "assistant", "content": f"Gladly, {n}: {c}."}],
        "completion_B": [{"role": "assistant", "content": "No."}]},
     "label": "A"}
    for n, c in [("Ann", "blue"), ("Bob", "red"), ("Cy", "green"), ("Di", "teal"),
                 ("Ed", "gold"), ("Flo", "pink")]
]


class SimulatedCrash(Exception):
    """Raised by the dataset at a chosen batch, to stop a training run midway."""


def _write_jsonl(path: Path, rows: list[Any]) -> None:
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------- supervised


def _crashing_builder_class() -> type:
    """A ``FromConversationFileBuilder`` whose dataset records and can crash (built lazily,
    after ``prepare``, because the cookbook must import the chosen ``tinker``)."""
    from tinker_cookbook.supervised.data import FromConversationFileBuilder
    from tinker_cookbook.supervised.types import SupervisedDataset

    class Recording(SupervisedDataset):
        def __init__(self, inner: SupervisedDataset, crash_at: int | None,
                     fetched: list[int]) -> None:
            self.inner, self.crash_at, self.fetched = inner, crash_at, fetched

        def get_batch(self, index: int) -> Any:
            if index == self.crash_at:
                raise SimulatedCrash(f"simulated crash before batch {index}")
            self.fetched.append(index)
            return self.inner.get_batch(index)

        def set_epoch(self, seed: int = 0) -> None:
            self.inner.set_epoch(seed)

        def __len__(self) -> int:
            return len(self.inner)

    @chz.chz
    class RecordingConversationFileBuilder(FromConversationFileBuilder):
        crash_at: int | None = None

        def __call__(self) -> Any:
            train, test = super().__call__()
            return Recording(train, self.crash_at, FETCHED), test

    return RecordingConversationFileBuilder


#: The batch indices the supervised dataset handed out in this process.
FETCHED: list[int] = []


def sft(workdir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """``supervised.train.main`` on a conversation file; ``args["crash_at"]`` stops it there.

    Run once with ``crash_at`` (it saves a checkpoint every 2 steps, then crashes) and
    once without (it must resume from the last checkpoint and finish).
    """
    from tinker_cookbook.supervised import train
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    data = workdir / "conversations.jsonl"
    if not data.exists():
        _write_jsonl(data, [{"messages": m} for m in CONVERSATIONS])
    builder = _crashing_builder_class()(
        file_path=str(data),
        crash_at=args.get("crash_at"),
        common_config=ChatDatasetBuilderCommonConfig(
            model_name_for_tokenizer=MODEL, renderer_name=RENDERER, max_length=128,
            batch_size=2),
    )
    config = train.Config(
        log_path=str(workdir / "log"), model_name=MODEL, recipe_name="compat_sft",
        renderer_name=RENDERER, dataset_builder=builder, learning_rate=1e-3, lora_rank=4,
        save_every=2, eval_every=0, infrequent_eval_every=0,
    )
    crashed = None
    try:
        asyncio.run(train.main(config))
    except SimulatedCrash as exc:
        crashed = str(exc)
    return {"crashed": crashed, "fetched": FETCHED}


# ----------------------------------------------------------------------------------- RL


def rl(workdir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """``rl.train.main`` on the letter task, in one of its three execution modes.

    ``args["mode"]``: ``sync`` (the on-policy loop, here with a KL penalty against a
    reference sampler of the base model), ``async`` (sampling runs one step ahead of
    training, ``AsyncConfig``, PPO loss; ``async_default_loss`` with AsyncConfig's default
    loss, ``stable_reinforce``) or ``stream`` (minibatches trained as soon as their groups
    finish, ``StreamMinibatchConfig``).
    """
    from tinker_cookbook.rl import train

    from . import _toy_env

    mode = args.get("mode", "sync")
    groups = int(args.get("groups_per_batch", 2))
    extra: dict[str, Any] = {}
    if mode == "sync":
        if args.get("kl_penalty", True):
            extra = dict(kl_penalty_coef=0.01,
                         kl_reference_config=train.KLReferenceConfig(base_model=MODEL))
    elif mode == "async":
        extra = dict(async_config=train.AsyncConfig(
            max_steps_off_policy=1, groups_per_batch=groups, loss_fn="ppo"))
    elif mode == "async_default_loss":  # AsyncConfig's own default loss, stable_reinforce
        extra = dict(async_config=train.AsyncConfig(
            max_steps_off_policy=1, groups_per_batch=groups))
    elif mode == "stream":
        extra = dict(stream_minibatch_config=train.StreamMinibatchConfig(
            groups_per_batch=groups, num_minibatches=2))
    else:
        raise ValueError(f"unknown RL mode {mode!r}")
    config = train.Config(
        log_path=str(workdir / "log"), model_name=MODEL, recipe_name="compat_rl",
        renderer_name=RENDERER, learning_rate=float(args.get("learning_rate", 1e-3)),
        max_tokens=int(args.get("max_tokens", 8)), lora_rank=4,
        dataset_builder=_toy_env.LetterDatasetBuilder(
            model_name=MODEL, renderer_name=RENDERER, letter="e",
            batches=int(args.get("batches", 3)), groups_per_batch=groups,
            group_size=int(args.get("group_size", 4))),
        save_every=int(args.get("save_every", 2)), eval_every=0,
        num_groups_to_log=int(args.get("num_groups_to_log", 1)),
        rollout_json_export=bool(args.get("rollout_json_export", True)), **extra,
    )
    marks = _mark_logged_steps() if args.get("step_marks") else []
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(train.main(config))
    return {"fetched": [d.fetched for d in _toy_env.BUILT], "step_marks": marks,
            "main_wall_s": time.perf_counter() - wall, "main_cpu_s": time.process_time() - cpu}


def _mark_logged_steps() -> list[tuple[int | None, float, float]]:
    """For the benchmark: ``(step, perf_counter, process_time)`` each time the loop logs a
    step's metrics (once per step, in every RL mode). Wraps the logger that
    ``ml_log.setup_logging`` returns; what the loop does is unchanged."""
    from tinker_cookbook.utils import ml_log

    marks: list[tuple[int | None, float, float]] = []
    setup = ml_log.setup_logging

    def setup_logging(*args: Any, **kwargs: Any) -> Any:
        logger = setup(*args, **kwargs)
        inner = logger.log_metrics

        def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
            marks.append((step, time.perf_counter(), time.process_time()))
            inner(metrics, step)

        logger.log_metrics = log_metrics
        return logger

    ml_log.setup_logging = setup_logging
    return marks


# ---------------------------------------------------------------------------------- DPO


def dpo(workdir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """``preference.train_dpo.main`` (synchronous, ``forward_backward_custom``)."""
    from tinker_cookbook.preference import train_dpo
    from tinker_cookbook.preference.dpo_datasets import DPODatasetBuilderFromComparisons
    from tinker_cookbook.preference.preference_datasets import ComparisonBuilderFromJsonl
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    data = workdir / "comparisons.jsonl"
    _write_jsonl(data, COMPARISONS)
    config = train_dpo.Config(
        log_path=str(workdir / "log"), model_name=MODEL, recipe_name="compat_dpo",
        renderer_name=RENDERER, learning_rate=1e-3, lora_rank=4, dpo_beta=0.1,
        dataset_builder=DPODatasetBuilderFromComparisons(
            comparison_builder=ComparisonBuilderFromJsonl(train_path=str(data)),
            common_config=ChatDatasetBuilderCommonConfig(
                model_name_for_tokenizer=MODEL, renderer_name=RENDERER, max_length=128,
                batch_size=2)),
        save_every=2, eval_every=0, infrequent_eval_every=0,
    )
    train_dpo.main(config)
    return {}


# ---------------------------------------------------------------------- checkpoint_utils


def checkpoints(workdir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The public functions of ``checkpoint_utils``, sync and async, on a real run."""
    import tinker
    from tinker_cookbook import checkpoint_utils as cu

    log = workdir / "log"
    log.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    service = tinker.ServiceClient()
    metadata: dict[str, str] = {}
    cu.add_renderer_name_to_user_metadata(metadata, RENDERER)
    out["metadata"] = metadata
    training = service.create_lora_training_client(
        base_model=MODEL, rank=4, user_metadata=metadata).result()

    # Sync save (asyncio.run inside) from plain code, then the async one in a coroutine.
    out["sync_paths"] = cu.save_checkpoint(
        training, name="sync-1", log_path=str(log), loop_state={"batch": 1}, kind="both")

    async def async_part() -> dict[str, Any]:
        part: dict[str, Any] = {}
        part["async_paths"] = await cu.save_checkpoint_async(
            training, name="async-2", log_path=str(log), loop_state={"batch": 2}, kind="state")
        state_path = part["async_paths"]["state_path"]
        part["renderer_async"] = await cu.get_renderer_name_from_checkpoint_async(
            service, state_path)
        await cu.check_renderer_name_for_checkpoint_async(service, state_path, RENDERER)
        part["resolved_async"] = await cu.resolve_renderer_name_from_checkpoint_or_default_async(
            model_name=MODEL, explicit_renderer_name=None, load_checkpoint_path=state_path)
        mgr = cu.CheckpointManager(
            training_client=training, service_client=service, log_path=str(log),
            save_every=0, rolling_save_every=1, rolling_ttl_seconds=3600)
        for step in (3, 4):
            await mgr.maybe_save_async(step, {"batch": step})
        part["final_async"] = await mgr.save_final_async({"batch": 5})
        return part

    out.update(asyncio.run(async_part()))
    state_path = out["sync_paths"]["state_path"]
    out["renderer_sync"] = cu.get_renderer_name_from_checkpoint(service, state_path)
    cu.check_renderer_name_for_checkpoint(service, state_path, RENDERER)
    out["resolved_sync"] = cu.resolve_renderer_name_from_checkpoint_or_default(
        model_name=MODEL, explicit_renderer_name=None, load_checkpoint_path=state_path)
    out["explicit"] = cu.resolve_renderer_name_from_checkpoint_or_default(
        model_name=MODEL, explicit_renderer_name="llama3", load_checkpoint_path=state_path)

    # The sync manager (asyncio.run per call) with rolling saves, then its final save, on
    # a second run (a run has one checkpoint named "final").
    second = service.create_lora_training_client(
        base_model=MODEL, rank=4, user_metadata=metadata).result()
    mgr = cu.CheckpointManager(
        training_client=second, service_client=service, log_path=str(log),
        save_every=2, rolling_save_every=1, rolling_ttl_seconds=3600)
    for step in (6, 7, 8):
        out.setdefault("maybe_save_sync", []).append(mgr.maybe_save(step, {"batch": step}))
    out["final_sync"] = mgr.save_final({"batch": 9})

    out["records"] = [r.to_dict() for r in cu.load_checkpoints_file(str(log))]
    last = cu.get_last_checkpoint(str(log))
    out["last"] = last.to_dict() if last is not None else None
    last_sampler = cu.get_last_checkpoint(str(log), required_key="sampler_path")
    out["last_sampler"] = last_sampler.to_dict() if last_sampler is not None else None
    rest = service.create_rest_client()
    out["server_checkpoints"] = sorted(
        c.tinker_path for client in (training, second)
        for c in rest.list_checkpoints(client.model_id).result().checkpoints)
    return out


# -------------------------------------------------------------------------------- weights


def weights(workdir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """``weights.download`` of an ``external_weights`` export (``args["what"]``: external,
    training or sampler)."""
    import tinker
    from tinker_cookbook import weights as cw
    from tinker_cookbook.exceptions import WeightsDownloadError

    service = tinker.ServiceClient()
    training = service.create_lora_training_client(base_model=MODEL, rank=4).result()
    what = args.get("what", "external")
    if what == "external":
        path = training.save_weights_external("final").result().path
    elif what == "training":
        path = training.save_state("state-1").result().path
    else:
        path = training.save_weights_for_sampler("sampler-1").result().path
    out_dir = workdir / "download"
    out: dict[str, Any] = {"path": path}
    try:
        returned = cw.download(tinker_path=path, output_dir=str(out_dir))
        out["returned"] = returned
    except WeightsDownloadError as exc:
        out["error"] = f"{type(exc).__name__}: {exc} (cause: {exc.__cause__!r})"
    files = sorted(p for p in out_dir.rglob("*") if p.is_file()) if out_dir.exists() else []
    out["files"] = {p.relative_to(out_dir).as_posix(): p.stat().st_size for p in files}
    safetensors = out_dir / "adapter_model.safetensors"
    if safetensors.exists():
        from safetensors.numpy import load_file

        tensors = load_file(str(safetensors))
        out["tensors"] = {k: list(v.shape) for k, v in sorted(tensors.items())}
        out["finite"] = all(bool(math.isfinite(float(abs(v).sum()))) for v in tensors.values())
    return out


SCENARIOS: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "sft": sft, "rl": rl, "dpo": dpo, "checkpoints": checkpoints, "weights": weights,
}
