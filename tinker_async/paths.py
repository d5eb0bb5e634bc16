"""Checkpoint paths: parse and build ``tinker://`` and ``twinkle://`` paths.

``<scheme>://<training_run_id>/<kind>/<name>`` with ``<kind>`` one of ``weights``
(type ``training``), ``sampler_weights`` (``sampler``) or ``external_weights``
(``external``). Training run ids may contain ``:`` (``<uuid>:train:0``); names may
not contain ``/``.

Reading also accepts what other servers return from ``save_weights_for_sampler``:
skyrl-tx's ``tinker://<run>/<name>`` and hatchery's ``tinker://<run>/checkpoints/<name>``,
both read as sampler checkpoints. ``ParsedCheckpointTinkerPath.tinker_path`` keeps the
string as given (send that back to the server that made it); ``canonical_path`` and
the ``build``/``to_*`` functions always write the official form.

Malformed paths raise :class:`InvalidPathError` (a ``ValueError``) saying what is wrong.

The code lives in ``tinker_async.types._paths`` because ``ParsedCheckpointTinkerPath``
is also a public type (``tinker_async.types.ParsedCheckpointTinkerPath`` is the same
object); this module is its public home.
"""

from __future__ import annotations

from .errors import InvalidRequestError
from .types._paths import (
    CheckpointType,
    InvalidPathError,
    ParsedCheckpointTinkerPath,
    build_checkpoint_path,
    checkpoint_console_url,
    checkpoint_playground_url,
    is_checkpoint_path,
    parse_checkpoint_path,
    to_tinker_path,
    to_twinkle_path,
)

__all__ = [
    "CheckpointType",
    "InvalidPathError",
    "ParsedCheckpointTinkerPath",
    "build_checkpoint_path",
    "checkpoint_console_url",
    "checkpoint_playground_url",
    "is_checkpoint_path",
    "parse_checkpoint_path",
    "require_training_checkpoint",
    "to_tinker_path",
    "to_twinkle_path",
]


def require_training_checkpoint(path: str, method: str) -> ParsedCheckpointTinkerPath:
    """Parse ``path`` and refuse, before anything is sent, a checkpoint that ``method``
    cannot load: only training checkpoints (``save_state``'s ``.../weights/<name>``)
    carry what training needs; sampler weights do not."""
    parsed = parse_checkpoint_path(path)
    if parsed.checkpoint_type != "training":
        raise InvalidRequestError(
            f"{method} takes a training checkpoint (tinker://<run>/weights/<name>, saved by "
            f"save_state); {path!r} is a {parsed.checkpoint_type} checkpoint. Sampler "
            "weights can only be sampled from (create_sampling_client(model_path=...)).")
    return parsed
