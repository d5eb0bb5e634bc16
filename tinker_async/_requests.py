"""Request bodies from the request Structs, in the shape the server's dialect takes.

The clients build each request as its Struct from ``tinker_async.types`` (the one schema
the embedded server also decodes into) and hand it to the transport as ``json=``, through
a function here where the body differs by server. What differs is decided here, from the
:class:`~tinker_async._dialect.Dialect`, so clients never branch on it:

- **Default-valued optional fields** are left out for every server: the Structs encode
  with ``omit_defaults`` (``kind="snapshot"``, ``topk_sample_logprobs=0``,
  ``record_stability_info=False``, ``grad_clip_norm=0``, an AdamW ``optimizer_config``
  and every ``None``),
  which strict servers (tuft: ``extra="forbid"`` models older than those fields) require
  and every tested server accepts (dialects.md, tolerance 2). Core values whose server
  defaults may differ (sampling and Adam hyperparameters, ``num_samples``, the LoRA
  switches, ``tags``) are always sent, as the official SDK does (``types._codec.keep``).
- **Twinkle** sessions: ``{"metadata": ...}`` only.
- **tinkercloud** bodies: the sampler is also named ``model_id`` and prompt logprobs
  ``include_prompt_logprobs``; forward_backward takes ``data``/``loss_fn`` at the top.

Nothing here does I/O; each function returns the Struct to pass as ``json=``, and
:func:`encode` gives the bytes. A new request field goes in its Struct (``types/``) and
nowhere else; a new server's body shape goes here.
"""

from __future__ import annotations

from typing import Any

from . import types as t
from ._dialect import Dialect
from .types import _wire
from .types._training import ForwardBackwardInputWire, ForwardBackwardRequestWire

__all__ = [
    "create_session_body",
    "encode",
    "forward_backward_json_body",
    "sample_body",
]


def encode(body: Any) -> bytes:
    """The JSON bytes of a body from this module (what the transport sends)."""
    return _wire.encode_json(body)


def create_session_body(request: t.CreateSessionRequest, dialect: Dialect) -> Any:
    """``create_session``: the official request, or Twinkle's ``{"metadata": ...}``.

    Build ``request`` with ``user_metadata=metadata or {}``: servers built on the
    0.25-0.38 request models require the field, and ``{}`` is not its default (``None``),
    so it is sent.
    """
    if dialect.session_request == "twinkle":
        return t.TwinkleCreateSessionRequest(metadata=request.user_metadata or {})
    return request


def sample_body(request: t.SampleRequest, dialect: Dialect) -> t.SampleRequest:
    """``asample`` / ``sample``: on tinkercloud, its documented body
    (:class:`~tinker_async.types.TinkercloudSampleRequest`: the sampler also as
    ``model_id``, prompt logprobs also as ``include_prompt_logprobs``)."""
    if not dialect.tinkercloud_bodies:
        return request
    fields = {f: getattr(request, f) for f in request.__struct_fields__}
    return t.TinkercloudSampleRequest(
        **fields,
        model_id=request.sampling_session_id,
        include_prompt_logprobs=bool(request.prompt_logprobs),
    )


def forward_backward_json_body(
    request: t.ForwardBackwardRequest | t.ForwardRequest, dialect: Dialect, endpoint: str
) -> ForwardBackwardRequestWire:
    """The JSON body of a forward pass or forward_backward for ``endpoint``
    (``"forward"`` or ``"forward_backward"``; servers without ``/forward`` get a forward
    pass at ``forward_backward`` with ``forward_only``).

    Official nesting (``forward_backward_input`` / ``forward_input``) with ``type`` naming
    the endpoint; tinkercloud's flat form otherwise (no seq id, no type).
    """
    forward_only = isinstance(request, t.ForwardRequest)
    inner = request.forward_input if isinstance(request, t.ForwardRequest) else (
        request.forward_backward_input)
    wire = ForwardBackwardInputWire.from_input(inner)
    # An empty loss_fn_config is left out (None), as the clients do today.
    config = wire.loss_fn_config or None
    flag = forward_only and endpoint == "forward_backward"
    if dialect.tinkercloud_bodies:
        return ForwardBackwardRequestWire(model_id=request.model_id, data=wire.data,
                                          loss_fn=wire.loss_fn, loss_fn_config=config,
                                          forward_only=flag)
    nested = ForwardBackwardInputWire(data=wire.data, loss_fn=wire.loss_fn,
                                      loss_fn_config=config)
    forward = endpoint == "forward"
    return ForwardBackwardRequestWire(
        model_id=request.model_id, seq_id=request.seq_id, forward_only=flag, type=endpoint,
        forward_input=nested if forward else None,
        forward_backward_input=None if forward else nested,
    )
