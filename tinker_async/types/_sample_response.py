"""Sampling results: ``SampleResponse``, ``SampledSequence`` and their parts.

Both result classes hold either numpy arrays (the protobuf path) or Python lists (the
JSON path) and derive the other form on first read, caching it: ``tokens`` <->
``tokens_np``, ``logprobs`` <-> ``logprobs_np``, ``prompt_logprobs`` (None for NaN) <->
``prompt_logprobs_np``, and the top-k pairs <-> ``TopkLogprobs`` matrices.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Sequence
from dataclasses import FrozenInstanceError, dataclass, field
from functools import cached_property
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from ._base import WireModel
from ._sampling import StopReason
from ._tensor import TensorData, TensorDataWire

__all__ = [
    "MASK_LOGPROB",
    "PromptAltTokens",
    "SampleResponse",
    "SampleResponseWire",
    "SampledSequence",
    "SampledSequenceWire",
    "TopkLogprobs",
    "normalize_stop_reason",
    "topk_from_lists",
    "topk_to_lists",
]

MASK_LOGPROB = -99999.0
"""Logprob of an empty top-k cell (its token id is 0)."""

TopkLists = list[list[tuple[int, float]] | None]
"""Per position: up to k ``(token_id, logprob)`` pairs, or None where nothing was reported."""


@dataclass(frozen=True, slots=True)
class TopkLogprobs:
    """Top-k tokens at each position as two ``(length, k)`` matrices.

    ``token_ids`` is int32, ``logprobs`` float32; empty cells hold ``(0, -99999.0)``.
    """

    token_ids: npt.NDArray[np.int32]
    logprobs: npt.NDArray[np.float32]


def topk_to_lists(topk: TopkLogprobs) -> TopkLists:
    """The matrices as per-position pair lists (trailing empty cells dropped)."""
    n, k = topk.token_ids.shape
    if n == 0 or k == 0:
        return []
    ids = topk.token_ids.ravel().tolist()
    lps = topk.logprobs.ravel().tolist()
    result: TopkLists = []
    for i in range(n):
        start = end = i * k
        end += k
        while end > start and ids[end - 1] == 0 and lps[end - 1] == MASK_LOGPROB:
            end -= 1
        result.append(
            list(zip(ids[start:end], lps[start:end], strict=True)) if end > start else None
        )
    return result


def topk_from_lists(rows: Sequence[Sequence[Sequence[float]] | None]) -> TopkLogprobs:
    """Pair lists back to matrices, padding with empty cells."""
    k = max((len(r) for r in rows if r), default=0)
    ids = np.zeros((len(rows), k), dtype=np.int32)
    lps = np.full((len(rows), k), MASK_LOGPROB, dtype=np.float32)
    for i, row in enumerate(rows):
        if row:
            pairs = np.asarray(row, dtype=np.float64).reshape(len(row), 2)
            ids[i, : len(row)] = pairs[:, 0]
            lps[i, : len(row)] = pairs[:, 1]
    return TopkLogprobs(token_ids=ids, logprobs=lps)


@dataclass(frozen=True, slots=True)
class PromptAltTokens:
    """``k`` draws at every prompt position after the first (``prompt_alt_tokens_k``).

    Both tensors are dense ``[len(prompt) - 1, k]``: int64 token ids and their float32
    logprobs; row ``i`` holds alternatives to prompt token ``i + 1``.
    """

    tokens: TensorData
    logprobs: TensorData


def _floats_with_none(arr: npt.NDArray[Any]) -> list[float | None]:
    result: list[float | None] = arr.tolist()
    for i in np.flatnonzero(np.isnan(arr)):
        result[i] = None
    return result


def _floats_from_list(values: Sequence[float | None]) -> npt.NDArray[np.float32]:
    # numpy reads None as NaN for float dtypes, so JSON nulls need no pass of their own.
    return np.asarray(values, dtype=np.float32)


def _install_lazy_fields(cls: type, compute: dict[str, Callable[[Any], Any]]) -> None:
    # The numpy fields keep their dataclass identity (fields(), replace) but are read
    # through a cached_property, so a list-built object makes its array only when asked.
    for name, fn in compute.items():
        prop: cached_property[Any] = cached_property(fn)
        prop.__set_name__(cls, name)
        setattr(cls, name, prop)


# --- SampledSequence ---------------------------------------------------------------------


@dataclass(eq=False, init=False, repr=False)
class SampledSequence:
    """One sampled sequence: its tokens, optional logprobs and why it stopped.

    Built from numpy arrays (``tokens_np=``, ``logprobs_np=``, as the official SDK does)
    or from lists (``tokens=``, ``logprobs=``, ``topk_logprobs=``; the official private
    ``_tokens_list=``... spellings work too).

    Frozen like the SDK's, except ``sequence_id``: the sampling client assigns it from
    the submit response (it stays None when the server gives no ids).
    """

    stop_reason: StopReason
    sequence_id: str | None = None
    tokens_np: npt.NDArray[np.int32] | None = field(default=None, repr=False)
    logprobs_np: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    topk_logprobs_np: TopkLogprobs | None = field(default=None, repr=False)
    _tokens_list: list[int] | None = field(default=None, repr=False)
    _logprobs_list: list[float] | None = field(default=None, repr=False)
    _topk_logprobs_list: TopkLists | None = field(default=None, repr=False)

    def __init__(
        self,
        stop_reason: StopReason,
        sequence_id: str | None = None,
        tokens_np: npt.NDArray[np.int32] | None = None,
        logprobs_np: npt.NDArray[np.float32] | None = None,
        topk_logprobs_np: TopkLogprobs | None = None,
        _tokens_list: list[int] | None = None,
        _logprobs_list: list[float] | None = None,
        _topk_logprobs_list: TopkLists | None = None,
        *,
        tokens: Sequence[int] | None = None,
        logprobs: Sequence[float] | None = None,
        topk_logprobs: TopkLists | None = None,
    ) -> None:
        d = self.__dict__
        d["stop_reason"] = stop_reason
        d["sequence_id"] = sequence_id
        d["_tokens_list"] = _tokens_list if _tokens_list is not None else _as_list(tokens)
        d["_logprobs_list"] = _logprobs_list if _logprobs_list is not None else _as_list(logprobs)
        d["_topk_logprobs_list"] = (
            _topk_logprobs_list if _topk_logprobs_list is not None else topk_logprobs
        )
        # Arrays given are stored; missing ones are derived from the lists on first read.
        for name, value in (
            ("tokens_np", tokens_np),
            ("logprobs_np", logprobs_np),
            ("topk_logprobs_np", topk_logprobs_np),
        ):
            if value is not None:
                d[name] = value

    @cached_property
    def tokens(self) -> list[int]:
        """Generated token ids as a list."""
        if self._tokens_list is not None:
            return self._tokens_list
        arr = self.tokens_np
        return [] if arr is None else arr.tolist()

    @cached_property
    def logprobs(self) -> list[float] | None:
        """Logprob of each generated token, or None if not requested."""
        if self._logprobs_list is not None:
            return self._logprobs_list
        arr = self.logprobs_np
        return None if arr is None else arr.tolist()

    @cached_property
    def topk_logprobs(self) -> TopkLists | None:
        """Top-k ``(token_id, logprob)`` pairs per generated position, or None."""
        if self._topk_logprobs_list is not None:
            return self._topk_logprobs_list
        topk = self.topk_logprobs_np
        return None if topk is None else topk_to_lists(topk)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampledSequence):
            return NotImplemented
        return (self.stop_reason, self.sequence_id, self.tokens, self.logprobs) == (
            other.stop_reason,
            other.sequence_id,
            other.tokens,
            other.logprobs,
        )

    __hash__ = None  # type: ignore[assignment]

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "sequence_id":
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        self.__dict__[name] = value

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __repr__(self) -> str:
        return (
            f"SampledSequence(stop_reason={self.stop_reason!r}, "
            f"sequence_id={self.sequence_id!r}, tokens={reprlib.repr(self.tokens)})"
        )


def _as_list(values: Sequence[Any] | None) -> list[Any] | None:
    if values is None or isinstance(values, list):
        return values
    if isinstance(values, np.ndarray):
        result: list[Any] = values.tolist()
        return result
    return list(values)


def _seq_tokens_np(self: SampledSequence) -> npt.NDArray[np.int32] | None:
    lst = self._tokens_list
    return None if lst is None else np.asarray(lst, dtype=np.int32)


def _seq_logprobs_np(self: SampledSequence) -> npt.NDArray[np.float32] | None:
    lst = self._logprobs_list
    return None if lst is None else _floats_from_list(lst)


def _seq_topk_np(self: SampledSequence) -> TopkLogprobs | None:
    lst = self._topk_logprobs_list
    return None if lst is None else topk_from_lists(lst)


_install_lazy_fields(
    SampledSequence,
    {
        "tokens_np": _seq_tokens_np,
        "logprobs_np": _seq_logprobs_np,
        "topk_logprobs_np": _seq_topk_np,
    },
)


# --- SampleResponse ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, init=False, repr=False)
class SampleResponse:
    """Result of a sampling request: the sequences and optional prompt-level data.

    ``prompt_logprobs_np`` is float32 with NaN where nothing was computed;
    ``prompt_logprobs`` is the same as a list with None there. Built from arrays or
    from lists (``prompt_logprobs=``, ``topk_prompt_logprobs=``).
    """

    sequences: Sequence[SampledSequence]
    prompt_logprobs_np: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    topk_prompt_logprobs_np: TopkLogprobs | None = field(default=None, repr=False)
    target_prompt_logprobs: TensorData | None = None
    prompt_cache_hit_tokens: int = 0
    prompt_alt_tokens: PromptAltTokens | None = None
    _prompt_logprobs_list: list[float | None] | None = field(default=None, repr=False)
    _topk_prompt_logprobs_list: TopkLists | None = field(default=None, repr=False)

    def __init__(
        self,
        sequences: Sequence[SampledSequence],
        prompt_logprobs_np: npt.NDArray[np.float32] | None = None,
        topk_prompt_logprobs_np: TopkLogprobs | None = None,
        target_prompt_logprobs: TensorData | None = None,
        prompt_cache_hit_tokens: int = 0,
        prompt_alt_tokens: PromptAltTokens | None = None,
        _prompt_logprobs_list: list[float | None] | None = None,
        _topk_prompt_logprobs_list: TopkLists | None = None,
        *,
        prompt_logprobs: Sequence[float | None] | None = None,
        topk_prompt_logprobs: TopkLists | None = None,
    ) -> None:
        d = self.__dict__
        d["sequences"] = sequences
        d["target_prompt_logprobs"] = target_prompt_logprobs
        d["prompt_cache_hit_tokens"] = prompt_cache_hit_tokens
        d["prompt_alt_tokens"] = prompt_alt_tokens
        d["_prompt_logprobs_list"] = (
            _prompt_logprobs_list
            if _prompt_logprobs_list is not None
            else _as_list(prompt_logprobs)
        )
        d["_topk_prompt_logprobs_list"] = (
            _topk_prompt_logprobs_list
            if _topk_prompt_logprobs_list is not None
            else topk_prompt_logprobs
        )
        if prompt_logprobs_np is not None:
            d["prompt_logprobs_np"] = prompt_logprobs_np
        if topk_prompt_logprobs_np is not None:
            d["topk_prompt_logprobs_np"] = topk_prompt_logprobs_np

    @cached_property
    def prompt_logprobs(self) -> list[float | None] | None:
        """Prompt logprobs as a list (None where not computed), or None if not requested."""
        if self._prompt_logprobs_list is not None:
            return self._prompt_logprobs_list
        arr = self.prompt_logprobs_np
        return None if arr is None else _floats_with_none(arr)

    @cached_property
    def topk_prompt_logprobs(self) -> TopkLists | None:
        """Top-k ``(token_id, logprob)`` pairs per prompt position, or None."""
        if self._topk_prompt_logprobs_list is not None:
            return self._topk_prompt_logprobs_list
        topk = self.topk_prompt_logprobs_np
        return None if topk is None else topk_to_lists(topk)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleResponse):
            return NotImplemented
        return (
            list(self.sequences),
            self.prompt_logprobs,
            self.prompt_cache_hit_tokens,
        ) == (list(other.sequences), other.prompt_logprobs, other.prompt_cache_hit_tokens)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SampleResponse(sequences={self.sequences!r}, "
            f"prompt_cache_hit_tokens={self.prompt_cache_hit_tokens})"
        )


def _resp_prompt_np(self: SampleResponse) -> npt.NDArray[np.float32] | None:
    lst = self._prompt_logprobs_list
    return None if lst is None else _floats_from_list(lst)


def _resp_topk_np(self: SampleResponse) -> TopkLogprobs | None:
    lst = self._topk_prompt_logprobs_list
    return None if lst is None else topk_from_lists(lst)


_install_lazy_fields(
    SampleResponse,
    {"prompt_logprobs_np": _resp_prompt_np, "topk_prompt_logprobs_np": _resp_topk_np},
)


# --- JSON wire forms -----------------------------------------------------------------------

_LENGTH_REASONS = frozenset({"length", "max_tokens", "max_length", "max_new_tokens"})


def normalize_stop_reason(reason: str | None) -> StopReason:
    """Map server spellings (``finish_reason`` values too) to ``"length"`` or ``"stop"``."""
    return "length" if reason in _LENGTH_REASONS else "stop"


class SampledSequenceWire(WireModel, kw_only=True, frozen=True):
    """JSON form of a sampled sequence; accepts ``finish_reason`` for ``stop_reason``."""

    tokens: list[int] = msgspec.field(default_factory=list)
    logprobs: list[float | None] | None = None
    stop_reason: str | None = None
    finish_reason: str | None = None
    sequence_id: str | None = None
    topk_logprobs: TopkLists | None = None

    @classmethod
    def from_sequence(cls, seq: SampledSequence) -> SampledSequenceWire:
        """The wire form of a sequence."""
        # NaN logprobs need no care: msgspec writes NaN as null.
        return cls(
            tokens=seq.tokens,
            logprobs=seq.logprobs,  # type: ignore[arg-type]
            stop_reason=seq.stop_reason,
            sequence_id=seq.sequence_id or None,
            topk_logprobs=seq.topk_logprobs,
        )

    def to_sequence(self) -> SampledSequence:
        """The SampledSequence this wire form describes."""
        return SampledSequence(
            stop_reason=normalize_stop_reason(self.stop_reason or self.finish_reason),
            sequence_id=self.sequence_id,
            _tokens_list=self.tokens,
            # A JSON null (NaN) stays None here and is NaN in logprobs_np; scanning every
            # list for nulls would cost more than the decode itself.
            _logprobs_list=self.logprobs,  # type: ignore[arg-type]
            _topk_logprobs_list=self.topk_logprobs,
        )


class PromptAltTokensWire(WireModel, kw_only=True, frozen=True):
    """JSON form of :class:`PromptAltTokens`."""

    tokens: TensorDataWire
    logprobs: TensorDataWire


class SampleResponseWire(WireModel, kw_only=True, frozen=True):
    """JSON form of a sample result (``prompt_logprobs`` holds null for NaN)."""

    sequences: list[SampledSequenceWire] = msgspec.field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: TopkLists | None = None
    target_prompt_logprobs: TensorDataWire | None = None
    prompt_cache_hit_tokens: int | None = None
    prompt_alt_tokens: PromptAltTokensWire | None = None

    @classmethod
    def from_response(cls, resp: SampleResponse) -> SampleResponseWire:
        """The wire form of a sample result."""
        target = resp.target_prompt_logprobs
        alt = resp.prompt_alt_tokens
        return cls(
            sequences=[SampledSequenceWire.from_sequence(s) for s in resp.sequences],
            prompt_logprobs=resp.prompt_logprobs,
            topk_prompt_logprobs=resp.topk_prompt_logprobs,
            target_prompt_logprobs=None
            if target is None
            else TensorDataWire.from_tensor_data(target),
            prompt_cache_hit_tokens=resp.prompt_cache_hit_tokens or None,
            prompt_alt_tokens=None
            if alt is None
            else PromptAltTokensWire(
                tokens=TensorDataWire.from_tensor_data(alt.tokens),
                logprobs=TensorDataWire.from_tensor_data(alt.logprobs),
            ),
        )

    def to_response(self) -> SampleResponse:
        """The SampleResponse this wire form describes."""
        alt = self.prompt_alt_tokens
        target = self.target_prompt_logprobs
        return SampleResponse(
            sequences=[s.to_sequence() for s in self.sequences],
            target_prompt_logprobs=None if target is None else target.to_tensor_data(),
            prompt_cache_hit_tokens=self.prompt_cache_hit_tokens or 0,
            prompt_alt_tokens=None
            if alt is None
            else PromptAltTokens(
                tokens=alt.tokens.to_tensor_data(), logprobs=alt.logprobs.to_tensor_data()
            ),
            _prompt_logprobs_list=self.prompt_logprobs,
            _topk_prompt_logprobs_list=self.topk_prompt_logprobs,
        )
