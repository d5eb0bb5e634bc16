"""An embedded Tinker-compatible server, for examples, tests and benchmarks with no account.

It is an ``aiohttp.web`` app that speaks the official SDK 0.38 wire protocol under
``/api/v1`` (the official ``tinker`` SDK runs against it unmodified) and the Twinkle
management API under ``/twinkle``. It binds 127.0.0.1 unless told otherwise.

Running it
----------
::

    async with LocalServer() as srv:                  # on the running loop
        client = ServiceClient(base_url=srv.url, api_key=srv.api_key)

    with LocalServer(api_key="tml-test").in_thread() as srv:   # on its own loop, in a thread
        ...                                           # (blocking clients cannot stall it)

    $ python -m tinker_async.local --port 8000 [--api-key KEY] [--data-dir DIR] [--dialect NAME]

Constructor: ``LocalServer(host="127.0.0.1", port=0, api_key=None, data_dir=None,
zero_compute=False, session_timeout_s=60.0, dialect="official", *, client_config=None,
dynamic_config=None, models=("local/byte-lm",), poll_hold_s=10.0,
twinkle_prefix="/twinkle", max_loras=64, inline_payload_limit=8 MiB,
record_requests=True, max_recorded_requests=100_000, routes=(), jwt_ttl_s=3600.0,
require_jwt=False, sample_capacity=None)``.

- ``api_key``: when set, ``/api/v1`` requires it in ``X-API-Key`` (or a JWT the server
  minted at ``auth/token``, valid ``jwt_ttl_s``) and Twinkle in ``Authorization:
  Bearer``; else 401. ``require_jwt=True`` (with ``client_config={"pjwt_auth_enabled":
  True}``) makes a strict JWT-mode server: the key itself opens only ``client/config``
  and ``auth/token``, and is otherwise refused with a 401 ``invalid_token``.
- Custom losses: with ``client_config={"custom_loss_server_side": True}`` (``--custom-loss-
  server-side``) and torch installed in the server's process, ``create_custom_loss`` and
  ``forward_backward(..., "custom", {"loss_id": ...})``; without torch, a clear 400.
  ``server.context.auth.revoke_tokens()`` invalidates every JWT issued so far.
- ``data_dir``: where checkpoints live; default a temporary directory removed on stop.
  A server started on an existing directory reloads its runs and checkpoints.
- ``session_timeout_s``: a session with no heartbeat (or other request naming it) for
  this long expires: heartbeats get 410 and its pending futures expire.
- ``dialect``: ``official``, ``legacy``, ``strict``, ``tinkercloud`` or ``twinkle`` (or a
  :class:`Dialect`), see ``_dialects.py``.
- ``client_config`` / ``dynamic_config``: flags merged over the SDK defaults (with
  ``sample_use_retrieve_futures`` and ``sample_cancel_enabled`` on).
- ``models``: names, or ``SupportedModel`` records, for ``get_server_capabilities``.
- ``poll_hold_s``: how long a pending ``retrieve_future``/``retrieve_futures`` is held.
- ``sample_capacity``: a :class:`SampleCapacity` (``per_model``, ``per_key``,
  ``service_time_s``, ``retry_after_s``): samples served at once. Above it the server
  answers as real servers do: 429 with ``Retry-After`` and a ``paused_rate_limit`` queue
  state to submits that send ``X-Tinker-Sampling-Backpressure: 1``, a queued sample whose
  polls say ``paused_rate_limit`` otherwise. ``srv.config.sample_capacity`` may be
  replaced while serving. Default: no limit.

Every helper below may be called from any thread while the server runs.

Training and sampling
---------------------
The model is a small numpy byte-level language model (``_model.py``: 263 tokens = bytes,
BOS/EOS/PAD and chat-role markers; a window of 8 embeddings, one causal attention head,
an MLP; 0.36 M parameters, pretrained on public-domain text shipped as ``byte_lm.npz``)
with one LoRA adapter per training run. ``create_model``, ``get_info``,
``forward_backward`` (protobuf or JSON, zstd accepted; ``forward_only``; ``/forward`` in
the legacy dialect), ``optim_step`` (AdamW), ``save_weights`` (with optimizer state),
``save_weights_for_sampler`` (named, or ephemeral with ``sampling_session_seq_id``),
``save_weights_external``, ``load_weights`` (legacy, and create-via-load),
``create_sampling_session`` and ``asample`` (plus tinkercloud's blocking ``/sample``)
work as the official server's do. Losses: ``cross_entropy``, ``importance_sampling``,
``ppo``, ``cispo``, ``dro``, ``gspo``.

- Seq ids are enforced per model: requests are applied in seq order whatever order they
  arrive in (an early one is held up to 60 s for its predecessors), a resubmitted seq id
  or idempotency key gets the same request id and is not applied twice, and a stale one
  gets ``409 Sequence conflict``.
- Sampling requests that arrive together are decoded as one batch (``_batching.py``).
- ``zero_compute=True`` answers every call at once with well-formed results, for client
  benchmarks. With real compute the server runs numpy with one BLAS thread (faster on
  small shared machines) and keeps the event loop free by computing in worker threads.
- The model registry is ``ctx.extras["models"]`` (``_models.py``).

Test helpers
------------
- ``srv.seed_training_run(base_model="local/byte-lm", lora_rank=8, session_id=None,
  user_metadata=None) -> run_id`` (a new session owns it unless one is given).
- ``srv.seed_checkpoint(run_id, name, kind="weights", size_bytes=1024, time=None, *,
  ttl_seconds=None, public=False, user_metadata=None) -> tinker_path`` (``kind``:
  ``weights``, ``sampler_weights`` or ``external_weights``; sparse files).
- ``srv.create_future(result=None, error=None, delay_s=0.0, session_id=None,
  sampling_session_id=None, *, category="user", cloned_sampler_id=0, kind="generic")
  -> request_id``: finishes after ``delay_s`` with ``result`` (a dict; ``bytes`` are served
  as protobuf) or fails with ``{"error": error, "category": category}``.
- ``srv.complete_future(request_id, result)``, ``srv.fail_future(request_id, error,
  category="user")``, ``srv.expire_future(request_id)`` (then 410).
- ``srv.expire_session(session_id)``: as if heartbeats had stopped.
- ``srv.set_poll_hold(seconds)``: long-poll hold time.
- ``srv.requests -> list[RecordedRequest]`` (``method, path, query, headers, body, status,
  time, duration_s, request_id``; credentials shown as ``***`` and scrubbed from bodies;
  ``status`` is ``None`` when no response was sent), ``srv.count(path_pattern,
  method=None) -> int``, ``srv.clear_requests()``.

Fault injection
---------------
``srv.faults.add(path_pattern, status=None, count=1, retry_after=None, delay_s=0.0,
drop_connection=False, body=None, method=None, *, headers=None, rate=1.0, seed=None)
-> FaultRule``: the next ``count`` requests whose path matches the regex
(``re.search``; ``count=None``: until removed) get the fault: ``status`` with a
``{"detail"}`` body (or ``body``) and ``Retry-After`` if given; or a delay first; or the
connection closed with no response. ``rate`` < 1 makes it random. More (keyword-only):
``skip``/``every`` pick which matching requests; ``drop_connection="after"`` runs the
handler first (the request is admitted, the answer lost); ``stall=True`` never answers
(until ``srv.faults.release_stalled()``); ``mangle="truncate"|"garbage"|"cut"`` spoils
the real answer (``keep_bytes``, ``garbage``, ``zstd``). ``srv.faults.clear()``,
``srv.faults.remove(rule)``, ``srv.faults.rules``.

The applied-seq ledger: ``srv.ledger(model_id) -> list[Applied]`` lists each training
request the server applied, once, in order (``seq_id``, ``kind``, ``tag``), and
``srv.ledgers()`` every model's: a fault test checks that nothing was lost or applied
twice.

Extending (training and sampling routes)
----------------------------------------
A route module exports ``ROUTES`` built with ``_routing.route(method, path, handler,
twinkle=False, when=None)``; add it to ``_app.DEFAULT_ROUTES`` (or pass ``routes=`` to the
constructor). Handlers reach the server through ``_routing.context(request)``: ``.state``
(records), ``.futures`` (``submit(work, kind=..., session_id=..., sampling_session_id=...,
json_encoder=..., proto_encoder=..., in_thread=...) -> request_id``), ``.config``,
``.dialect``.
"""

from __future__ import annotations

from ._config import DEFAULT_MODEL, SampleCapacity
from ._dialects import DIALECTS, Dialect
from ._faults import FaultInjector, FaultRule
from ._futures import FutureFailure
from ._recorder import RecordedRequest
from ._server import LocalServer

__all__ = [
    "DEFAULT_MODEL",
    "DIALECTS",
    "Dialect",
    "FaultInjector",
    "FaultRule",
    "FutureFailure",
    "LocalServer",
    "RecordedRequest",
    "SampleCapacity",
]
