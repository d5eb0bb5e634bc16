"""Uploaded custom-loss graphs: checked against an allowlist, then run with torch.

An uploaded loss is plain data (``CustomLossGraph``: torch.fx nodes in execution order,
arguments in the wire's one-key forms). Nothing in it is executable until
:func:`compile_graph` rebuilds it from this module's own list of allowed operations:
torch functions (and ``torch.nn.functional``, ``torch.special``, ``torch.linalg``,
``torch.fft``) minus anything that touches files, seeds, devices or global settings; the
``math`` functions; Python's arithmetic, comparison and indexing operators; tensor
methods that stay in torch; and reading a tensor attribute such as ``shape``. This is a
development server on 127.0.0.1, so the list is a guard against accidents, not a sandbox.

This module imports torch; ``_custom_losses`` imports it only when torch is installed,
so the server stays numpy-only without it.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["CompiledLoss", "GraphError", "compile_graph", "run_loss"]

_METRIC_KEY = re.compile(r"custom/[a-z0-9_./-]{1,64}:(sum|mean)")
_OPERATORS = frozenset({
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "matmul",
    "getitem", "lt", "le", "gt", "ge", "eq", "ne", "and_", "or_", "xor", "invert", "not_",
})
# Where torch functions may come from (fx names some by their C binding, e.g.
# ``torch._C._nn.softplus`` for ``torch.nn.functional.softplus``).
_TORCH_NAMESPACES: Mapping[str, Any] = {
    "torch": torch,
    "torch.nn.functional": torch.nn.functional,
    "torch.special": torch.special,
    "torch.linalg": torch.linalg,
    "torch.fft": torch.fft,
    **{f"torch._C.{name}": getattr(torch._C, name)
       for name in ("_nn", "_special", "_linalg", "_fft", "_VariableFunctions")},
}
_DENIED_WORDS = re.compile(
    r"save|load|file|seed|set_|compile|storage|hub|cuda|mps|xpu|device|deterministic|"
    r"thread|grad_enabled|inference_mode|no_grad|pin_|share_|export|jit|distributed|profil"
)
# Tensor methods that leave torch, hook into autograd or reach memory directly.
_DENIED_METHODS = frozenset({
    "backward", "item", "numpy", "tolist", "register_hook", "register_post_accumulate_grad_hook",
    "retain_grad", "storage", "untyped_storage", "share_memory_", "pin_memory", "data_ptr",
    "cuda", "apply_", "map_", "map2_", "set_", "requires_grad_", "detach_", "resize_",
})


class GraphError(ValueError):
    """The graph uses something this server does not allow, or is malformed."""


@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Slice:
    parts: tuple[Any, Any, Any]


@dataclass(frozen=True)
class _Step:
    name: str
    call: Any  # a function, or the method name (str) for call_method
    is_method: bool
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class CompiledLoss:
    """A checked loss graph, ready to run on one datum's tensors."""

    params: tuple[str, ...]
    steps: tuple[_Step, ...]
    output: Any

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the graph on ``(logprobs, *inputs)``; returns ``(loss, metrics)``."""
        env: dict[str, Any] = dict(zip(self.params, inputs, strict=True))
        for step in self.steps:
            args = _bind(step.args, env)
            kwargs = {key: _bind(value, env) for key, value in step.kwargs.items()}
            if step.is_method:
                target = args[0]
                if not isinstance(target, torch.Tensor):
                    raise GraphError(
                        f"node {step.name}: method {step.call!r} called on a "
                        f"{type(target).__name__}, not a tensor"
                    )
                env[step.name] = getattr(target, step.call)(*args[1:], **kwargs)
            else:
                env[step.name] = step.call(*args, **kwargs)
        loss, metrics = _bind(self.output, env)
        return loss, metrics


def compile_graph(graph: Mapping[str, Any], input_names: Sequence[str]) -> CompiledLoss:
    """Check a ``CustomLossGraph`` (as decoded JSON) and build its runner.

    ``input_names`` are the loss's inputs (``logprobs`` first), which must be exactly the
    graph's placeholders, in order. Raises :class:`GraphError` saying what is wrong.
    """
    if graph.get("format", 1) != 1:
        raise GraphError(f"graph format {graph.get('format')!r} is not supported (only 1)")
    nodes = graph.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise GraphError("graph.nodes must be a non-empty list")
    known: set[str] = set()
    params: list[str] = []
    steps: list[_Step] = []
    output: Any = None
    for index, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            raise GraphError(f"graph.nodes[{index}] is not an object")
        op, name, target = node.get("op"), node.get("name"), node.get("target")
        args, kwargs = node.get("args", []), node.get("kwargs", {})
        if not isinstance(name, str) or not name or not isinstance(target, str):
            raise GraphError(f"graph.nodes[{index}] needs a name and a target (strings)")
        if not isinstance(args, list) or not isinstance(kwargs, Mapping):
            raise GraphError(f"node {name}: args must be a list and kwargs an object")
        if name in known:
            raise GraphError(f"node {name} is defined twice")
        if output is not None:
            raise GraphError(f"node {name} comes after the output node")
        if op == "placeholder":
            if steps:
                raise GraphError(f"placeholder {name} comes after a computation")
            params.append(name)
        elif op == "call_function":
            steps.append(_Step(name, _function(name, target, args), False,
                               tuple(_compile_arg(name, a, known) for a in args),
                               {str(k): _compile_arg(name, v, known) for k, v in kwargs.items()}))
        elif op == "call_method":
            _check_method(name, target)
            if not args:
                raise GraphError(f"node {name}: method {target!r} has no tensor to call it on")
            steps.append(_Step(name, target, True,
                               tuple(_compile_arg(name, a, known) for a in args),
                               {str(k): _compile_arg(name, v, known) for k, v in kwargs.items()}))
        elif op == "output":
            if len(args) != 1:
                raise GraphError("the output node must have one argument, (loss, metrics)")
            output = _compile_output(_compile_arg(name, args[0], known))
        elif op in ("call_module", "get_attr"):
            raise GraphError(
                f"node {name}: {op} is not allowed; a custom loss may use no modules and "
                "capture no tensors"
            )
        else:
            raise GraphError(f"node {name}: unknown op {op!r}")
        known.add(name)
    if output is None:
        raise GraphError("the graph has no output node")
    if tuple(params) != tuple(input_names):
        raise GraphError(
            f"the graph's parameters {params} are not the declared inputs {list(input_names)}"
        )
    return CompiledLoss(tuple(params), tuple(steps), output)


def _function(node: str, target: str, args: list[Any]) -> Any:
    if target == "getattr":
        if len(args) != 2 or not isinstance(args[1], str) or args[1].startswith("_"):
            raise GraphError(f"node {node}: getattr may only read a public tensor attribute")
        if not hasattr(torch.Tensor, args[1]):
            raise GraphError(f"node {node}: {args[1]!r} is not a torch.Tensor attribute")
        return getattr
    namespace, _, name = target.rpartition(".")
    if namespace == "operator":
        if name not in _OPERATORS:
            raise GraphError(f"node {node}: operator.{name} is not allowed")
        return getattr(operator, name)
    if namespace == "math":
        fn = getattr(math, name, None) if not name.startswith("_") else None
        if not callable(fn):
            raise GraphError(f"node {node}: {target} is not a math function")
        return fn
    module = _TORCH_NAMESPACES.get(namespace)
    if module is None:
        raise GraphError(
            f"node {node}: {target} is not allowed; a custom loss may call torch, math and "
            "operator functions only"
        )
    fn = getattr(module, name, None) if not name.startswith("_") else None
    if fn is None or not callable(fn) or isinstance(fn, type) or _DENIED_WORDS.search(name):
        raise GraphError(f"node {node}: {target} is not an allowed torch function")
    return fn


def _check_method(node: str, name: str) -> None:
    if name.startswith("_") or name in _DENIED_METHODS or not hasattr(torch.Tensor, name):
        raise GraphError(f"node {node}: tensor method {name!r} is not allowed")


def _compile_arg(node: str, value: Any, known: set[str]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_compile_arg(node, v, known) for v in value]
    if not isinstance(value, Mapping) or len(value) != 1:
        raise GraphError(f"node {node}: cannot read argument {value!r}")
    ((kind, payload),) = value.items()
    if kind == "ref":
        if payload not in known:
            raise GraphError(f"node {node} uses {payload!r} before it is defined")
        return _Ref(payload)
    if kind == "tuple" and isinstance(payload, list):
        return tuple(_compile_arg(node, v, known) for v in payload)
    if kind == "dict" and isinstance(payload, Mapping):
        return {str(k): _compile_arg(node, v, known) for k, v in payload.items()}
    if kind == "slice" and isinstance(payload, list) and len(payload) == 3:
        start, stop, step = (_compile_arg(node, v, known) for v in payload)
        return _Slice((start, stop, step))
    if kind == "ellipsis":
        return Ellipsis
    if kind == "float" and payload in ("inf", "-inf", "nan"):
        return float(payload)
    if kind in ("dtype", "layout", "memory_format") and isinstance(payload, str):
        found = getattr(torch, payload, None) if not payload.startswith("_") else None
        expected = {"dtype": torch.dtype, "layout": torch.layout,
                    "memory_format": torch.memory_format}[kind]
        if not isinstance(found, expected):
            raise GraphError(f"node {node}: {payload!r} is not a torch {kind}")
        return found
    if kind == "device" and isinstance(payload, str):
        # Everything runs on this server's CPU, whatever device the client traced with.
        return torch.device("cpu")
    raise GraphError(f"node {node}: cannot read argument {value!r}")


def _compile_output(value: Any) -> Any:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise GraphError("the loss must return (loss, metrics)")
    loss, metrics = value
    if not isinstance(loss, _Ref):
        raise GraphError("the loss must be a tensor computed by the graph")
    if not isinstance(metrics, dict):
        raise GraphError("the metrics must be a dict")
    for key, metric in metrics.items():
        if not _METRIC_KEY.fullmatch(key):
            raise GraphError(f"metric {key!r} must be named custom/<name>:sum or :mean")
        if not isinstance(metric, _Ref):
            raise GraphError(f"metric {key!r} must be a tensor computed by the graph")
    return (loss, metrics)


def _bind(value: Any, env: Mapping[str, Any]) -> Any:
    if isinstance(value, _Ref):
        return env[value.name]
    if isinstance(value, tuple):
        return tuple(_bind(v, env) for v in value)
    if isinstance(value, list):
        return [_bind(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _bind(v, env) for k, v in value.items()}
    if isinstance(value, _Slice):
        return slice(*(_bind(v, env) for v in value.parts))
    return value


def run_loss(
    loss: CompiledLoss,
    name: str,
    logprobs: Sequence[np.ndarray[Any, Any]],
    inputs: Sequence[Sequence[np.ndarray[Any, Any]]],
) -> tuple[float, dict[str, float], list[np.ndarray[Any, Any]]]:
    """Run ``loss`` on each datum: ``(loss sum, metrics, dLoss/dlogprobs per datum)``.

    ``:mean`` metrics are averaged over the datums, ``:sum`` ones summed. Gradients come
    back as float64 arrays shaped like the logprobs.
    """
    total = 0.0
    sums: dict[str, float] = {}
    grads: list[np.ndarray[Any, Any]] = []
    for lp, datum_inputs in zip(logprobs, inputs, strict=True):
        lp_t = torch.tensor(np.asarray(lp, dtype=np.float32), requires_grad=True)
        # Copies: the decoded arrays may be read-only views of the request body.
        tensors = [torch.from_numpy(np.array(x)) for x in datum_inputs]
        value, metrics = loss(lp_t, *tensors)
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"loss {name!r} must return a scalar tensor loss, got {shape}")
        if value.requires_grad:
            value.backward()  # type: ignore[no-untyped-call]
        grad = lp_t.grad
        grads.append(np.zeros(lp_t.shape) if grad is None else grad.detach().double().numpy())
        total += float(value.detach())
        for key, metric in metrics.items():
            scalar = torch.as_tensor(metric).detach()
            if scalar.numel() != 1:
                raise ValueError(
                    f"loss {name!r}: metric {key!r} must be a scalar, got shape "
                    f"{tuple(scalar.shape)}"
                )
            sums[key] = sums.get(key, 0.0) + float(scalar.reshape(()))
    count = max(len(grads), 1)
    out = {key: v / count if key.endswith(":mean") else v for key, v in sums.items()}
    return total, out, grads
