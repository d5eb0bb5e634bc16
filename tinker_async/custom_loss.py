"""Custom losses made with ``ServiceClient.create_custom_loss`` and run by handle (alpha).

A per-datum loss ``fn(logprobs, *inputs) -> (loss, {"custom/<name>:sum|mean": tensor})`` is
traced with ``torch.fx`` and checked when it is created. Where the server says
``custom_loss_server_side``, the graph is uploaded (``POST create_custom_loss``, a future
that resolves to a ``loss_id``) and ``forward_backward_custom`` becomes one
``forward_backward(data, "custom", {"loss_id": ...})``. Elsewhere the handle runs here, in
the same two passes as a callable custom loss.

torch is an optional extra: nothing here imports it until a loss is created or run.

The tracing, the checks, the graph encoding and the per-datum run are ported from the
official Tinker SDK 0.38 (``tinker/lib/public_interfaces/custom_loss.py``, Apache-2.0,
Copyright Thinking Machines Lab), so that the checks and the wire form are the same.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import inspect
import math
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from . import types as t
from ._validate import check_forward_backward
from .errors import APIError, InvalidRequestError

if TYPE_CHECKING:
    import torch
    import torch.fx

    from ._family import Family
    from .types._custom_loss import CustomLossNodeOp

__all__ = [
    "LossHandle",
    "PerDatumLossFn",
    "check_loss_inputs",
    "create_custom_loss",
    "encode_graph",
    "run_loss_handle",
    "trace_loss",
]

PerDatumLossFn = Callable[..., "tuple[torch.Tensor, Mapping[str, torch.Tensor]]"]
"""A per-datum custom loss: ``(logprobs, *the loss_fn_inputs it reads, each a tensor) ->
(scalar loss, scalar metrics keyed custom/<name>:sum or custom/<name>:mean)``."""

INSTALL_HINT = "pip install 'tinker-async[torch]'"

# Modules whose functions a custom loss may call. ``_operator`` is where the ``operator``
# functions fx records for Python arithmetic and indexing live.
_ALLOWED_FUNCTION_MODULES = ("torch", "math", "operator", "_operator")
# The custom/ prefix keeps a loss's metrics from shadowing the trainer's own (loss:sum).
_METRIC_KEY = re.compile(r"custom/[a-z0-9_./-]{1,64}:(sum|mean)")
_INPUT_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_MAX_INPUTS = 16
# Tensor methods that turn a tensor into Python or numpy values.
_HOST_METHODS = frozenset({"item", "numpy", "tolist"})


@dataclasses.dataclass(frozen=True)
class LossHandle:
    """A loss function created with ``ServiceClient.create_custom_loss``.

    Pass it to ``TrainingClient.forward_backward_custom`` in place of a callable.
    """

    name: str
    inputs: tuple[t.CustomLossInput, ...]
    """``logprobs``, then the ``loss_fn_inputs`` keys the loss reads, in the order it
    takes them, each with its declared rank."""

    session_id: str
    """The session that created the loss; only its clients can use it."""

    graph: torch.fx.GraphModule = dataclasses.field(repr=False, compare=False)
    """The traced loss; this, not the original function, is what runs."""

    loss_id: str | None = None
    """The server's id for the uploaded loss, or None when it runs client-side."""

    @property
    def key(self) -> str:
        """Identifies the traced loss, so that a session creates each loss once."""
        digest = hashlib.sha256(self.graph.code.encode())
        digest.update(repr([(x.name, x.rank) for x in self.inputs]).encode())
        return digest.hexdigest()

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ``loss_fn_inputs`` keys the loss reads, in the order it takes them."""
        return tuple(loss_input.name for loss_input in self.inputs[1:])


def _import_torch_fx() -> Any:
    try:
        import torch.fx
    except ImportError as exc:
        raise ImportError(
            f"create_custom_loss needs PyTorch, which is not installed: {INSTALL_HINT}"
        ) from exc
    return torch.fx


# -- creation ---------------------------------------------------------------------------


def trace_loss(
    fn: PerDatumLossFn, input_ranks: Mapping[str, t.CustomLossInputRank], session_id: str = ""
) -> LossHandle:
    """Trace ``fn`` into a ``LossHandle`` (not yet bound to a session unless ``session_id``),
    rejecting anything torch.fx cannot represent with only torch and math."""
    fx = _import_torch_fx()
    inputs = _inputs(fn, input_ranks)
    try:
        graph = fx.symbolic_trace(fn)
    except Exception as exc:
        raise InvalidRequestError(
            f"create_custom_loss: {_fn_name(fn)} cannot be traced by torch.fx: {exc}. Custom "
            "losses cannot branch on tensor values or call libraries other than torch and math."
        ) from exc
    _check_graph(_fn_name(fn), graph)
    return LossHandle(name=_fn_name(fn), inputs=inputs, session_id=session_id, graph=graph)


class _SessionLosses:
    """What one ServiceClient's session has created: handles by key, and the seq counter."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.by_key: dict[str, LossHandle | None] = {}  # None: being created
        self.next_seq = 0


# Kept beside the family rather than on it: the family needs no field for an alpha API.
_created: weakref.WeakKeyDictionary[Family, _SessionLosses] = weakref.WeakKeyDictionary()


async def create_custom_loss(family: Family, loss: LossHandle) -> LossHandle:
    """Register a traced loss with ``service``'s session and, where the server runs custom
    losses (``custom_loss_server_side``), upload it and wait for its ``loss_id``.

    Runs on the service's home loop (the registry needs no lock there). The same traced
    loss twice in one session is an ``InvalidRequestError`` (a ``ValueError``).
    """
    session_id = await family.ensure_session()
    losses = _created.get(family)
    if losses is None or losses.session_id != session_id:
        losses = _created[family] = _SessionLosses(session_id)
    key = loss.key
    if key in losses.by_key:
        existing = losses.by_key[key]
        raise InvalidRequestError(
            f"create_custom_loss: this session already created "
            f"{existing.name if existing else loss.name!r} with the same traced loss; "
            "reuse its LossHandle"
        )
    losses.by_key[key] = None
    try:
        handle = dataclasses.replace(loss, session_id=session_id, loss_id=None)
        if family.transport.dialect.flag("custom_loss_server_side"):
            handle = await _upload(family, losses, handle)
    except BaseException:
        # Unlike the official SDK, a failed creation can be retried with the same function.
        losses.by_key.pop(key, None)
        raise
    losses.by_key[key] = handle
    return handle


async def _upload(family: Family, losses: _SessionLosses, handle: LossHandle) -> LossHandle:
    seq, losses.next_seq = losses.next_seq, losses.next_seq + 1
    request = t.CreateCustomLossRequest(
        session_id=handle.session_id,
        custom_loss_seq_id=seq,
        name=handle.name,
        inputs=list(handle.inputs),
        graph=encode_graph(handle),
    )
    resp = await family.transport.request("POST", "create_custom_loss", json=request)
    result = await family.poll_json(resp.json(), "CreateCustomLoss")
    loss_id = result.get("loss_id") if isinstance(result, dict) else None
    if not isinstance(loss_id, str) or not loss_id:
        raise APIError(f"create_custom_loss finished without a loss_id: {result!r}")
    return dataclasses.replace(handle, loss_id=loss_id)


# -- use ------------------------------------------------------------------------------


def check_loss_inputs(handle: LossHandle, data: Sequence[t.Datum]) -> None:
    """Raise unless every datum has each input the loss reads, at its declared rank.

    ``logprobs`` has the shape of the datum's ``target_tokens``.
    """
    logprobs, *inputs = handle.inputs
    for i, datum in enumerate(data):
        for loss_input, key in [(logprobs, "target_tokens"), *((x, x.name) for x in inputs)]:
            if key not in datum.loss_fn_inputs:
                raise InvalidRequestError(
                    f"datum[{i}] has no loss_fn_inputs[{key!r}], which loss {handle.name!r} takes"
                )
            shape = datum.loss_fn_inputs[key].shape
            rank = 1 if shape is None else len(shape)
            if rank != loss_input.rank:
                raise InvalidRequestError(
                    f"datum[{i}] loss_fn_inputs[{key!r}] has rank {rank}, but loss "
                    f"{handle.name!r} declared {loss_input.name} with rank {loss_input.rank}"
                )


def check_handle_batch(
    handle: LossHandle, data: Sequence[t.Datum], session_id: str | None
) -> list[t.Datum]:
    """The checks ``forward_backward_custom`` runs on a batch for ``handle``; the batch as a
    list. Scalar (rank 0) inputs are left out of the per-position length check."""
    if handle.session_id != session_id:
        raise InvalidRequestError(
            f"LossHandle {handle.name!r} was created in session {handle.session_id or None}; "
            f"it can only be used by clients of that session (this one is {session_id})"
        )
    scalars = {x.name for x in handle.inputs[1:] if x.rank == 0}
    view = data
    if scalars and isinstance(data, Sequence):
        view = [
            dataclasses.replace(d, loss_fn_inputs={
                k: v for k, v in d.loss_fn_inputs.items() if k not in scalars})
            if isinstance(d, t.Datum) else d
            for d in data
        ]
    check_forward_backward(view, "custom", None)
    check_loss_inputs(handle, data)
    return list(data)


def run_loss_handle(
    handle: LossHandle, data: Sequence[t.Datum], logprobs_list: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Run ``handle`` on each datum and sum the losses; metrics reduce by their suffix.

    ``data`` has passed :func:`check_loss_inputs`.
    """
    import torch

    total: Any = None
    metric_sums: dict[str, float] = {}
    for datum, logprobs in zip(data, logprobs_list, strict=True):
        inputs = [datum.loss_fn_inputs[name].to_torch() for name in handle.input_names]
        loss, metrics = handle.graph(logprobs, *inputs)
        if loss.ndim != 0:
            raise InvalidRequestError(
                f"loss {handle.name!r} must return a scalar loss, got shape {tuple(loss.shape)}"
            )
        total = loss if total is None else total + loss
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().item()
            metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
    metrics_out = {
        key: value / len(data) if key.endswith(":mean") else value
        for key, value in metric_sums.items()
    }
    return total, metrics_out


def as_loss_fn(handle: LossHandle) -> Callable[[list[t.Datum], list[Any]], tuple[Any, ...]]:
    """The handle as a callable custom loss ``(data, logprobs_list) -> (loss, metrics)``,
    for the client-side two-pass path."""

    def loss_fn(data: list[t.Datum], logprobs_list: list[Any]) -> tuple[Any, ...]:
        return run_loss_handle(handle, data, logprobs_list)

    loss_fn.__name__ = handle.name
    return loss_fn


# -- graph encoding ---------------------------------------------------------------------


def encode_graph(handle: LossHandle) -> t.CustomLossGraph:
    """The handle's graph as plain data, node for node, as the official SDK encodes it;
    the server decides what it allows."""
    from torch.fx.node import _get_qualified_name

    nodes = []
    for node in handle.graph.graph.nodes:
        if node.op == "call_function":
            # Python operators live in CPython's private _operator module; the wire
            # names them by their public operator module.
            target = _get_qualified_name(node.target)
            if target.startswith("_operator."):
                target = "operator." + target[len("_operator."):]
        else:
            target = str(node.target)
        nodes.append(
            t.CustomLossNode(
                op=cast("CustomLossNodeOp", node.op),
                name=node.name,
                target=target,
                args=[_encode_arg(handle.name, arg) for arg in node.args],
                kwargs={key: _encode_arg(handle.name, arg) for key, arg in node.kwargs.items()},
            )
        )
    return t.CustomLossGraph(nodes=nodes)


def _encode_arg(name: str, arg: Any) -> Any:
    import torch
    import torch.fx

    if isinstance(arg, torch.fx.Node):
        return {"ref": arg.name}
    if isinstance(arg, float) and not math.isfinite(arg):
        return {"float": str(arg)}
    if arg is None or isinstance(arg, (bool, int, float, str)):
        return arg
    if isinstance(arg, list):
        return [_encode_arg(name, a) for a in arg]
    if isinstance(arg, tuple):
        return {"tuple": [_encode_arg(name, a) for a in arg]}
    if isinstance(arg, dict) and all(isinstance(key, str) for key in arg):
        return {"dict": {key: _encode_arg(name, a) for key, a in arg.items()}}
    if isinstance(arg, slice):
        return {"slice": [_encode_arg(name, a) for a in (arg.start, arg.stop, arg.step)]}
    if arg is Ellipsis:
        return {"ellipsis": True}
    torch_constants = {
        torch.dtype: "dtype",
        torch.device: "device",
        torch.layout: "layout",
        torch.memory_format: "memory_format",
    }
    kind = torch_constants.get(type(arg))
    if kind is not None:
        return {kind: str(arg).removeprefix("torch.")}
    raise InvalidRequestError(
        f"create_custom_loss: {name} passes a {type(arg).__name__} argument, which a "
        "custom loss cannot send to the server"
    )


# -- creation checks --------------------------------------------------------------------


def _fn_name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


def _inputs(
    fn: Callable[..., Any], input_ranks: Mapping[str, t.CustomLossInputRank]
) -> tuple[t.CustomLossInput, ...]:
    name = _fn_name(fn)
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "logprobs":
        raise InvalidRequestError(
            f"create_custom_loss: {name} must take logprobs as its first parameter, followed "
            "by the loss_fn_inputs it reads, e.g. def loss(logprobs, advantages)"
        )
    if len(params) > _MAX_INPUTS:
        raise InvalidRequestError(
            f"create_custom_loss: {name} takes {len(params)} parameters; a custom loss "
            f"takes at most {_MAX_INPUTS}, logprobs included"
        )
    for param in params:
        if not _INPUT_NAME.fullmatch(param.name):
            raise InvalidRequestError(
                f"create_custom_loss: {name} parameter {param.name!r} must be a lowercase "
                "name of letters, digits and underscores"
            )
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            raise InvalidRequestError(
                f"create_custom_loss: {name} parameter {param.name!r} must be a plain "
                "positional parameter; *args, **kwargs and keyword-only parameters are not "
                "supported"
            )
        if param.default is not param.empty:
            raise InvalidRequestError(
                f"create_custom_loss: {name} parameter {param.name!r} has a default; every "
                "parameter after logprobs names a required loss_fn_inputs key"
            )
    names = [param.name for param in params]
    if not isinstance(input_ranks, Mapping) or set(input_ranks) != set(names):
        given = sorted(input_ranks) if isinstance(input_ranks, Mapping) else input_ranks
        raise InvalidRequestError(
            f"create_custom_loss: input_ranks must give a rank for each parameter of "
            f"{name} ({', '.join(names)}), got {given}"
        )
    for key, rank in input_ranks.items():
        if isinstance(rank, bool) or rank not in (0, 1, 2):
            raise InvalidRequestError(
                f"create_custom_loss: input_ranks[{key!r}] must be 0 (scalar), 1 ([T]) or "
                f"2 ([T, K]), got {rank!r}"
            )
    if input_ranks["logprobs"] == 0:
        raise InvalidRequestError("create_custom_loss: logprobs has rank 1 ([T]) or 2 ([T, K])")
    return tuple(t.CustomLossInput(name=n, rank=input_ranks[n]) for n in names)


def _check_graph(name: str, graph: torch.fx.GraphModule) -> None:
    import torch

    for node in graph.graph.nodes:
        if node.op == "call_function":
            target = node.target
            module = getattr(target, "__module__", None) or ""
            if target is not builtins.getattr and module.split(".")[0] not in (
                _ALLOWED_FUNCTION_MODULES
            ):
                raise InvalidRequestError(
                    f"create_custom_loss: {name} calls {getattr(target, '__qualname__', target)!r} "
                    f"from {module or 'an unknown module'!r}; custom losses may only call "
                    "torch and math"
                )
        elif node.op == "call_method":
            if not hasattr(torch.Tensor, node.target):
                raise InvalidRequestError(
                    f"create_custom_loss: {name} calls method {node.target!r}, which is not a "
                    "torch.Tensor method"
                )
            if node.target == "backward":
                raise InvalidRequestError(
                    f"create_custom_loss: {name} calls backward(); return the loss and "
                    "forward_backward_custom runs the backward pass"
                )
            if node.target in _HOST_METHODS:
                raise InvalidRequestError(
                    f"create_custom_loss: {name} calls {node.target}(), which leaves torch; "
                    "keep every value, metrics included, as a tensor"
                )
        elif node.op == "call_module":
            raise InvalidRequestError(
                f"create_custom_loss: {name} calls module {node.target!r}; custom losses cannot "
                "use torch.nn modules, only functions such as torch.nn.functional"
            )
        elif node.op == "get_attr":
            raise InvalidRequestError(
                f"create_custom_loss: {name} captures a tensor ({node.target!r}); a custom loss "
                "may only read logprobs and the loss_fn_inputs it names"
            )
        elif node.op == "output":
            _check_output(name, node.args[0])


def _check_output(name: str, output: Any) -> None:
    import torch.fx

    if not (isinstance(output, (tuple, list)) and len(output) == 2):
        raise InvalidRequestError(f"create_custom_loss: {name} must return (loss, metrics)")
    # A traced tensor is a graph node; anything else is a Python value.
    if not isinstance(output[0], torch.fx.Node):
        raise InvalidRequestError(
            f"create_custom_loss: {name} must return its loss as a torch.Tensor, got {output[0]!r}"
        )
    metrics = output[1]
    if not isinstance(metrics, dict):
        raise InvalidRequestError(f"create_custom_loss: {name} must return its metrics as a dict")
    for key, value in metrics.items():
        if not (isinstance(key, str) and _METRIC_KEY.fullmatch(key)):
            raise InvalidRequestError(
                f"create_custom_loss: {name} metric {key!r} must be named custom/<name>:sum or "
                "custom/<name>:mean in lowercase; the suffix says how it combines across datums"
            )
        if not isinstance(value, torch.fx.Node):
            raise InvalidRequestError(
                f"create_custom_loss: {name} metric {key!r} must be a torch.Tensor, got {value!r}"
            )
