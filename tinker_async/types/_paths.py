"""Checkpoint paths: ``tinker://<run_id>/<kind>/<name>`` (and ``twinkle://``).

Implementation of :mod:`tinker_async.paths`; it lives in the types package because
``ParsedCheckpointTinkerPath`` is a type (``tinker_async.types`` exports it) and
``tinker_async.paths`` depends on the types, never the other way round.

Reading accepts the variants other servers return; writing always builds the
official form. The mapping, for ``<scheme>://<run_id>/...``:

========================================  ===========  =============================
path after ``<run_id>/``                  type         ``checkpoint_id``
========================================  ===========  =============================
``weights/<name>``                        training     ``weights/<name>``
``sampler_weights/<name>``                sampler      ``sampler_weights/<name>``
``external_weights/<name>``               external     ``external_weights/<name>``
``checkpoints/<name>`` (hatchery)         sampler      ``sampler_weights/<name>``
``<name>`` (skyrl-tx)                     sampler      ``sampler_weights/<name>``
========================================  ===========  =============================

Both variants are what those servers return from ``save_weights_for_sampler``, hence
"sampler". ``tinker_path`` always keeps the string as given (send that back to the
server that produced it); ``canonical_path`` is the official form.
"""

from __future__ import annotations

from typing import ClassVar, Literal
from urllib.parse import quote

from ..errors import InvalidRequestError
from ._base import Model

__all__ = [
    "CONSOLE_BASE_URL",
    "CheckpointType",
    "InvalidPathError",
    "ParsedCheckpointTinkerPath",
    "build_checkpoint_path",
    "checkpoint_console_url",
    "checkpoint_playground_url",
    "is_checkpoint_path",
    "parse_checkpoint_path",
    "to_tinker_path",
    "to_twinkle_path",
]

CheckpointType = Literal["training", "sampler", "external"]
"""The kind of a checkpoint."""

PathScheme = Literal["tinker", "twinkle"]

_TYPE_BY_SEGMENT: dict[str, CheckpointType] = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}
_SEGMENT_BY_TYPE: dict[str, str] = {t: s for s, t in _TYPE_BY_SEGMENT.items()}
#: other servers' path segments: hatchery's ``tinker://<model>/checkpoints/<name>`` are
#: training checkpoints, whose REST id is the bare name
_VARIANT_SEGMENTS: dict[str, CheckpointType] = {"checkpoints": "training"}
_SCHEMES: tuple[str, ...] = ("tinker://", "twinkle://")
_EXPECTED = "tinker://<run_id>/weights/<name> (or sampler_weights/, external_weights/)"

CONSOLE_BASE_URL = "https://tinker.thinkingmachines.ai"


class InvalidPathError(InvalidRequestError):
    """A checkpoint path that cannot be parsed or built; the message says why.

    A ``ValueError`` (as the official SDK raises) and a :class:`TinkerError`."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"Invalid checkpoint path {path!r}: {problem}. Expected {_EXPECTED}")

    def __reduce__(self) -> tuple[type[InvalidPathError], tuple[object, str]]:
        return (type(self), (self.path, self.problem))


class ParsedCheckpointTinkerPath(Model, kw_only=True, frozen=True):
    """A checkpoint path split into its parts.

    ``checkpoint_id`` is ``"<kind>/<name>"`` in the official spelling (e.g.
    ``"weights/step-100"``); ``tinker_path`` is the path as given.
    """

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    tinker_path: str
    training_run_id: str
    checkpoint_type: CheckpointType
    checkpoint_id: str

    @classmethod
    def from_tinker_path(cls, tinker_path: str) -> ParsedCheckpointTinkerPath:
        """Parse a ``tinker://`` (or ``twinkle://``) checkpoint path."""
        return parse_checkpoint_path(tinker_path)

    @property
    def scheme(self) -> PathScheme:
        """``"tinker"`` or ``"twinkle"``."""
        return "twinkle" if self.tinker_path.startswith("twinkle://") else "tinker"

    @property
    def name(self) -> str:
        """The checkpoint's name (the last path segment)."""
        return self.checkpoint_id.rsplit("/", 1)[-1]

    @property
    def canonical_path(self) -> str:
        """The official spelling of this path (same scheme)."""
        return build_checkpoint_path(
            self.training_run_id, self.checkpoint_type, self.name, scheme=self.scheme
        )


def _split(path: object) -> tuple[str, list[str]]:
    if not isinstance(path, str):
        raise InvalidPathError(path, f"expected a string, got {type(path).__name__}")
    for scheme in _SCHEMES:
        if path.startswith(scheme):
            return scheme, path[len(scheme) :].split("/")
    found = path.split("://", 1)[0] + "://" if "://" in path else "no scheme"
    raise InvalidPathError(path, f"wrong scheme ({found}); expected tinker:// or twinkle://")


def parse_checkpoint_path(path: str) -> ParsedCheckpointTinkerPath:
    """Parse a checkpoint path; :class:`InvalidPathError` says what is wrong with a bad one."""
    _, parts = _split(path)
    run_id = parts[0]
    if not run_id:
        raise InvalidPathError(path, "the training run id is empty")
    if len(parts) == 1:
        raise InvalidPathError(path, "missing '/<kind>/<name>' after the training run id")
    if len(parts) == 2:
        name = parts[1]
        if name in _TYPE_BY_SEGMENT or name in _VARIANT_SEGMENTS:
            raise InvalidPathError(path, f"missing checkpoint name after '{name}/'")
        checkpoint_type: CheckpointType = "sampler"  # skyrl-tx's tinker://<run>/<name>
    else:
        kind = parts[1]
        resolved = _TYPE_BY_SEGMENT.get(kind) or _VARIANT_SEGMENTS.get(kind)
        if resolved is None:
            known = ", ".join(sorted(_TYPE_BY_SEGMENT))
            raise InvalidPathError(path, f"unknown checkpoint kind {kind!r} (known: {known})")
        if len(parts) > 3:
            raise InvalidPathError(path, "the checkpoint name contains '/'")
        checkpoint_type, name = resolved, parts[2]
    if not name:
        raise InvalidPathError(path, "the checkpoint name is empty")
    variant = len(parts) == 3 and parts[1] in _VARIANT_SEGMENTS
    return ParsedCheckpointTinkerPath(
        tinker_path=path,
        training_run_id=run_id,
        checkpoint_type=checkpoint_type,
        # the server's own id where its paths are not the official ones
        checkpoint_id=name if variant else f"{_SEGMENT_BY_TYPE[checkpoint_type]}/{name}",
    )


def build_checkpoint_path(run_id: str, kind: str, name: str, scheme: PathScheme = "tinker") -> str:
    """The official path ``<scheme>://<run_id>/<segment>/<name>``.

    ``kind`` is a checkpoint type (``"training"``, ``"sampler"``, ``"external"``) or
    its path segment (``"weights"``, ``"sampler_weights"``, ``"external_weights"``).
    """
    segment = _SEGMENT_BY_TYPE.get(kind) or (kind if kind in _TYPE_BY_SEGMENT else None)
    shown = f"{scheme}://{run_id}/{kind}/{name}"
    if scheme not in ("tinker", "twinkle"):
        raise InvalidPathError(shown, f"unknown scheme {scheme!r}")
    if segment is None:
        raise InvalidPathError(shown, f"unknown checkpoint kind {kind!r}")
    if not run_id or "/" in run_id:
        raise InvalidPathError(shown, "the training run id must be non-empty without '/'")
    if not name or "/" in name:
        raise InvalidPathError(shown, "the checkpoint name must be non-empty without '/'")
    return f"{scheme}://{run_id}/{segment}/{name}"


def is_checkpoint_path(value: object) -> bool:
    """True if ``value`` parses as a checkpoint path (any accepted spelling)."""
    try:
        parse_checkpoint_path(value)  # type: ignore[arg-type]
    except InvalidPathError:
        return False
    return True


def _convert(path: str, scheme: PathScheme) -> str:
    parsed = parse_checkpoint_path(path)
    return build_checkpoint_path(
        parsed.training_run_id, parsed.checkpoint_type, parsed.name, scheme=scheme
    )


def to_twinkle_path(path: str) -> str:
    """The official ``twinkle://`` spelling of a checkpoint path."""
    return _convert(path, "twinkle")


def to_tinker_path(path: str) -> str:
    """The official ``tinker://`` spelling of a checkpoint path."""
    return _convert(path, "tinker")


def checkpoint_console_url(training_run_id: str, checkpoint_id: str) -> str:
    """The Tinker console page of a checkpoint."""
    return (
        f"{CONSOLE_BASE_URL}/checkpoints/{quote(training_run_id, safe='')}/"
        f"{quote(checkpoint_id, safe='')}"
    )


def checkpoint_playground_url(tinker_path: str) -> str:
    """The Tinker playground set up with a checkpoint."""
    return f"{CONSOLE_BASE_URL}/playground?mode=checkpoint&checkpoint={quote(tinker_path, safe='')}"
