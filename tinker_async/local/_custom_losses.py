"""Server-side custom losses: ``POST create_custom_loss`` and ``forward_backward`` with
``loss_fn="custom"``.

Off unless the server is started with ``client_config={"custom_loss_server_side": True}``
(then clients upload their traced losses instead of running them client-side). Running
an uploaded graph needs torch in the server process; without it ``create_custom_loss``
answers a 400 saying so, and the server stays numpy-only.

- ``create_custom_loss`` ``{session_id, custom_loss_seq_id, name, inputs, graph}`` answers
  a future resolving to ``{"loss_id", "type": "create_custom_loss"}``. The graph is
  checked against an allowlist (``_custom_graph``); a graph that fails the check fails
  the future (category ``user``). A repeated ``(session_id, custom_loss_seq_id)`` gets the
  first request id back.
- ``forward_backward(data, "custom", {"loss_id": id})`` from the same session runs the
  graph per datum on the model's target logprobs; its gradient w.r.t. the logprobs feeds
  the model's per-token logprob gradient path (the same as ``cross_entropy`` with
  ``weights = -dLoss/dlogprobs``). The result has the logprobs, ``loss:sum`` and the
  loss's ``custom/...`` metrics.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from aiohttp import web

from .. import types as t
from . import _model
from ._errors import ValidationIssue, bad_request, json_response
from ._futures import FutureFailure
from ._model import Adapter, ForwardBackwardResult, ModelDatum
from ._models import TrainedModel
from ._routing import ServerContext, context
from ._validate import at_least, finish, read_request

__all__ = ["CustomLossStore", "create_custom_loss", "custom_loss_op"]

_EXTRAS_KEY = "custom_losses"
_MAX_INPUTS = 16
_INPUT_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_INSTALL_HINT = "pip install 'tinker-async[torch]'"


@dataclass(frozen=True)
class StoredLoss:
    """One uploaded loss: who owns it, what it reads, and its checked graph."""

    loss_id: str
    session_id: str
    name: str
    inputs: tuple[tuple[str, int], ...]
    """``(name, rank)`` of ``logprobs`` and then each ``loss_fn_inputs`` key it reads."""
    compiled: Any  # _custom_graph.CompiledLoss (typed loosely: torch is optional here)


class CustomLossStore:
    """The uploaded losses of one server, and the request id of each upload."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uploads: dict[tuple[str, int], str] = {}
        self.losses: dict[str, StoredLoss] = {}


def store(ctx: ServerContext) -> CustomLossStore:
    """The server's custom-loss store (created on first use)."""
    found = ctx.extras.get(_EXTRAS_KEY)
    if isinstance(found, CustomLossStore):
        return found
    created = ctx.extras[_EXTRAS_KEY] = CustomLossStore()
    return created


def torch_installed() -> bool:
    """Whether the server process can run uploaded graphs (without importing torch)."""
    return importlib.util.find_spec("torch") is not None


# ------------------------------------------------------------------------------- creation


async def create_custom_loss(request: web.Request) -> web.Response:
    """``POST create_custom_loss``: store a traced loss; the future resolves to its id."""
    ctx = context(request)
    if not ctx.config.client_config.get("custom_loss_server_side"):
        raise bad_request(
            "This server runs custom losses client-side (custom_loss_server_side is off); "
            "start it with client_config={'custom_loss_server_side': True} to upload them"
        )
    body = await read_request(request, t.CreateCustomLossRequest,
                              strict=ctx.dialect.strict_fields)
    issues: list[ValidationIssue] = []
    at_least(issues, "custom_loss_seq_id", body.custom_loss_seq_id, 0)
    finish(issues)
    session_id, seq_id, name = body.session_id, body.custom_loss_seq_id, body.name
    inputs: list[tuple[str, int]] = [(item.name, item.rank) for item in body.inputs]
    # The graph checker works on plain JSON data.
    graph: dict[str, Any] = msgspec.to_builtins(body.graph)

    ctx.state.live_session(session_id)
    losses = store(ctx)
    with losses.lock:
        earlier = losses.uploads.get((session_id, seq_id))
    if earlier is not None:
        return json_response({"request_id": earlier})
    if not torch_installed():
        raise bad_request(
            "This server cannot run custom losses: torch is not installed in the server "
            f"process ({_INSTALL_HINT} where the server runs)"
        )
    problem = _check_inputs(inputs)
    loss_id = f"{session_id}:loss:{seq_id}"

    def work() -> dict[str, Any]:
        if problem is not None:
            raise FutureFailure(f"create_custom_loss {name!r}: {problem}", "user")
        from ._custom_graph import GraphError, compile_graph

        try:
            compiled = compile_graph(graph, [input_name for input_name, _ in inputs])
        except GraphError as exc:
            raise FutureFailure(f"create_custom_loss {name!r}: {exc}", "user") from exc
        loss = StoredLoss(loss_id, session_id, name, tuple(inputs), compiled)
        with losses.lock:
            losses.losses[loss_id] = loss
        return {"loss_id": loss_id, "type": "create_custom_loss"}

    # In a thread: the first upload imports torch, which takes seconds.
    request_id = ctx.futures.submit(
        work, kind="CreateCustomLoss", session_id=session_id, in_thread=True
    )
    with losses.lock:
        losses.uploads[(session_id, seq_id)] = request_id
    return json_response({"request_id": request_id})


def _check_inputs(inputs: list[tuple[str, int]]) -> str | None:
    names = [name for name, _ in inputs]
    if not inputs or names[0] != "logprobs" or inputs[0][1] not in (1, 2):
        return "inputs must start with logprobs, of rank 1 or 2"
    if len(inputs) > _MAX_INPUTS:
        return f"a custom loss takes at most {_MAX_INPUTS} inputs, logprobs included"
    if len(set(names)) != len(names):
        return f"input names must be unique, got {names}"
    bad = [name for name in names if not _INPUT_NAME.fullmatch(name)]
    if bad:
        return f"input names must be lowercase letters, digits and underscores, got {bad}"
    return None


# ------------------------------------------------------------------------ forward/backward


def custom_loss_op(
    ctx: ServerContext,
    convert: Callable[[], list[ModelDatum]],
    loss_fn_config: Mapping[str, float | str] | None,
    forward_only: bool,
) -> Callable[[TrainedModel, int], Any]:
    """The sequenced work of ``forward_backward`` with ``loss_fn="custom"``.

    Problems raise ``ValueError`` (the route turns them into a failed future, category
    ``user``).
    """

    def op(model: TrainedModel, seq: int) -> ForwardBackwardResult:
        config = dict(loss_fn_config or {})
        loss_id = config.pop("loss_id", None)
        if not isinstance(loss_id, str):
            raise ValueError(
                "loss_fn 'custom' needs loss_fn_config={'loss_id': ...}, the id "
                "create_custom_loss returned"
            )
        if config:
            raise ValueError(
                f"loss_fn_config keys {sorted(config)} are not accepted by 'custom' "
                "(it takes loss_id only)"
            )
        losses = store(ctx)
        with losses.lock:
            loss = losses.losses.get(loss_id)
        if loss is None:
            raise ValueError(f"unknown custom loss_id {loss_id!r}; create it with create_custom_loss")
        run = ctx.state.get_run(model.run_id)
        if run.session_id != loss.session_id:
            raise ValueError(
                f"custom loss {loss.name!r} ({loss_id}) belongs to session {loss.session_id}; "
                "a loss can only be used by models of the session that created it"
            )
        return run_custom_loss(model.require_adapter(), convert(), loss, backward=not forward_only)

    return op


def run_custom_loss(
    adapter: Adapter, data: list[ModelDatum], loss: StoredLoss, *, backward: bool
) -> ForwardBackwardResult:
    """Two passes of the numpy model around the loss graph: target logprobs first, then
    (if ``backward``) the per-token gradient ``dLoss/dlogprobs`` applied as
    ``cross_entropy`` weights ``-dLoss/dlogprobs``, which has the same gradient."""
    try:
        from ._custom_graph import run_loss
    except ImportError as exc:
        raise ValueError(
            f"this server cannot run custom losses: torch is not installed ({_INSTALL_HINT})"
        ) from exc
    (_, lp_rank), *reads = loss.inputs
    forward_data: list[ModelDatum] = []
    per_datum: list[list[np.ndarray[Any, Any]]] = []
    for i, datum in enumerate(data):
        where = f"datum {i}: custom loss {loss.name!r}"
        given = datum.loss_fn_inputs
        if "target_tokens" not in given:
            raise ValueError(f"{where} needs loss_fn_inputs['target_tokens']")
        targets = np.asarray(given["target_tokens"])
        if targets.ndim != lp_rank:
            raise ValueError(
                f"{where} declared logprobs with rank {lp_rank}, but target_tokens has rank "
                f"{targets.ndim}"
            )
        row = []
        for key, rank in reads:
            if key not in given:
                raise ValueError(f"{where} reads loss_fn_inputs[{key!r}], which is missing")
            value = np.asarray(given[key])
            if rank == 0 and value.shape == (1,):
                # Protobuf cannot tell shape [] from no shape: a scalar arrives as 1 value.
                value = value.reshape(())
            if value.ndim != rank:
                raise ValueError(
                    f"{where} declared {key} with rank {rank}, got rank {value.ndim}"
                )
            row.append(value)
        per_datum.append(row)
        forward_data.append(ModelDatum(tokens=datum.tokens, loss_fn_inputs={
            "target_tokens": targets, "weights": np.zeros(targets.shape, dtype=np.float32)}))
    first = _model.forward_backward(adapter, forward_data, "cross_entropy", None, backward=False)
    logprobs = [out["logprobs"] for out in first.loss_fn_outputs]
    try:
        total, metrics, grads = run_loss(loss.compiled, loss.name, logprobs, per_datum)
    except ValueError:
        raise
    except Exception as exc:  # torch errors (shapes, dtypes) are the loss's, not the server's
        raise ValueError(f"custom loss {loss.name!r} failed: {exc}") from exc
    if backward:
        backward_data = [
            ModelDatum(tokens=d.tokens, loss_fn_inputs={
                "target_tokens": d.loss_fn_inputs["target_tokens"], "weights": -grad})
            for d, grad in zip(forward_data, grads, strict=True)
        ]
        _model.forward_backward(adapter, backward_data, "cross_entropy", None, backward=True)
    return ForwardBackwardResult(
        [{"logprobs": lp} for lp in logprobs], {**metrics, "loss:sum": total}
    )
