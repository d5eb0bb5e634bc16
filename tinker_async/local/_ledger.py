"""The applied-seq ledger: which training requests each model actually applied, in order.

Fault tests compare it with what a client reported: every ``forward_backward`` or
``optim_step`` that returned a result must appear exactly once, one that raised at most
once, and in the order the calls were made. So an entry is written when a sequenced
request's work *succeeded* on the model (inside its turn, so the order of entries is the
order of application), never when it was merely received, admitted or retried.

Each entry has the request's ``seq_id``, its kind (``ForwardBackward``, ``Forward``,
``OptimStep``, ``SaveWeights``, ``SaveWeightsForSampler``, ``SaveWeightsExternal``,
``LoadWeights``) and a ``tag`` naming its content, so that a step applied twice under two
seq ids would show too: the fingerprint of a batch's tokens (:func:`tokens_tag`), the
learning rate of an optimizer step (:func:`lr_tag`), the path of a save or load.

The ledger lives in ``ctx.extras["ledger"]``; ``LocalServer.ledger(model_id)`` reads it.
Entries are written from worker threads (model work runs there), hence the lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

from ._routing import ServerContext

__all__ = ["Applied", "Ledger", "TagHolder", "applying", "ledger_of", "lr_tag", "tokens_tag"]

_T = TypeVar("_T")
_KEY = "ledger"
_PER_MODEL = 100_000
"""Entries kept per model (the oldest go first): a server that runs for days stays small."""


class Applied(NamedTuple):
    """One applied request of a model: ``(seq_id, kind, tag)``."""

    seq_id: int
    kind: str
    tag: str | None = None


class Ledger:
    """Applied requests per model, in order of application. Thread-safe."""

    def __init__(self, per_model: int = _PER_MODEL) -> None:
        self._lock = threading.Lock()
        self._per_model = per_model
        self._models: dict[str, deque[Applied]] = {}

    def record(self, model_id: str, seq_id: int, kind: str, tag: str | None = None) -> None:
        """Note that ``model_id`` applied request ``seq_id``."""
        with self._lock:
            entries = self._models.get(model_id)
            if entries is None:
                entries = self._models[model_id] = deque(maxlen=self._per_model)
            entries.append(Applied(seq_id, kind, tag))

    def entries(self, model_id: str) -> list[Applied]:
        """The requests ``model_id`` applied, oldest first (empty for an unknown model)."""
        with self._lock:
            return list(self._models.get(model_id, ()))

    def models(self) -> list[str]:
        """Every model that applied something."""
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._models.clear()


def ledger_of(ctx: ServerContext) -> Ledger:
    """The server's ledger (made on first use)."""
    ledger = ctx.extras.get(_KEY)
    if not isinstance(ledger, Ledger):
        ledger = ctx.extras[_KEY] = Ledger()
    return ledger


def applying(
    ledger: Ledger,
    model_id: str,
    seq: int,
    kind: str,
    work: Callable[[], _T],
    tag: Callable[[], str | None] | None = None,
) -> Callable[[], _T]:
    """``work``, recording its request in ``ledger`` when it succeeds."""

    def run() -> _T:
        result = work()
        ledger.record(model_id, seq, kind, tag() if tag is not None else None)
        return result

    return run


def tokens_tag(token_lists: Iterable[Sequence[int] | Any]) -> str:
    """A short fingerprint of a batch: the model-input tokens of each datum, in order.

    A client computes the same from its datums
    (``tokens_tag(d.model_input.to_ints() for d in batch)``) to find its batch in a ledger.
    """
    digest = hashlib.blake2b(digest_size=8)
    for tokens in token_lists:
        row = np.asarray(tokens, dtype=np.int64)
        digest.update(len(row).to_bytes(8, "little"))
        digest.update(row.tobytes())
    return "tokens:" + digest.hexdigest()


def lr_tag(learning_rate: Any) -> str:
    """The tag of an optimizer step: its learning rate, as the request gave it."""
    return f"lr:{learning_rate!r}"


class TagHolder:
    """Keeps the tag of a batch computed where its datums are decoded (in the work)."""

    def __init__(self) -> None:
        self.tag: str | None = None

    def wrap(
        self, convert: Callable[[], list[_T]], tokens: Callable[[_T], Any]
    ) -> Callable[[], list[_T]]:
        """``convert``, also fingerprinting the datums it returns."""

        def run() -> list[_T]:
            data = convert()
            self.tag = tokens_tag(tokens(d) for d in data)
            return data

        return run

    def get(self) -> str | None:
        """The tag (``None`` until the datums were decoded)."""
        return self.tag
