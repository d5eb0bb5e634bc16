"""Model input: the chunk kinds (a union tagged on ``type``) and ``ModelInput``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import msgspec
import numpy as np

from ._base import Model, construct
from ._checks import SHORT_LIST, Check, list_converter
from ._validation import b64_bytes_check, fail, lax_int

__all__ = [
    "DmelChunk",
    "EncodedTextChunk",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ModelInput",
    "ModelInputChunk",
]


class _TokenList(msgspec.Struct, array_like=True, gc=False):
    # A Struct wrapper: msgspec caches its type info, so converting ``(tokens,)`` to it
    # costs no per-call setup (a bare ``list[int]`` target would).
    tokens: list[int]


_lax_token_list = list_converter(Check(frozenset({int}), lax_int, "an integer"),
                                 "a sequence of integer token ids")


def _check_tokens(tokens: Any) -> Any:
    """Token ids as a new list of ints (checked and copied in one C pass when they are a
    list of ints), or a 1-D integer numpy array, kept as it is (no copy)."""
    if type(tokens) is list:
        if len(tokens) <= SHORT_LIST:
            for token in tokens:
                if type(token) is not int:
                    break
            else:
                return tokens.copy()
        else:
            try:
                return msgspec.convert((tokens,), _TokenList).tokens
            except msgspec.ValidationError:
                pass  # the lax path below converts what it can and names what it cannot
    elif isinstance(tokens, np.ndarray):
        _check_token_array(tokens)
        return tokens
    return _lax_token_list(tokens)


class EncodedTextChunk(
    Model, kw_only=True, frozen=True, gc=False, tag="encoded_text", tag_field="type"
):
    """A run of token ids (wire ``{"type": "encoded_text", "tokens": [...]}``).

    ``tokens`` is usually a list of ints; what is given is checked and copied into a new
    list, as the official type does (any sequence of integers, ``"5"`` and ``5.0``
    included; a tuple also becomes a list, where the official type keeps a tuple). An
    integer numpy array is accepted too (the official types refuse one) and kept
    without a copy: a forward_backward then sends it as it is, without the per-token
    conversion a list needs. Decoding also accepts a bare ``{"tokens": [...]}`` (older
    servers omit the tag).
    """

    tokens: Sequence[int]
    type: ClassVar[Literal["encoded_text"]] = "encoded_text"
    _field_checks: ClassVar[dict[str, Check]] = {"tokens": Check(frozenset(), _check_tokens, "token ids")}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncodedTextChunk):
            return NotImplemented
        mine, theirs = self.tokens, other.tokens
        if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
            return bool(np.array_equal(np.asarray(mine), np.asarray(theirs)))
        return mine == theirs

    def __hash__(self) -> int:
        tokens = self.tokens
        return hash(("encoded_text", tuple(tokens.tolist() if isinstance(tokens, np.ndarray)
                                           else tokens)))

    @property
    def length(self) -> int:
        """Number of tokens."""
        return len(self.tokens)


def _check_token_array(tokens: np.ndarray) -> None:
    """A token array must be what a list of token ids would be: 1-D int32-range integers."""
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        fail("a numpy array of 1-D integers (use .ravel() / .astype(np.int32))", tokens,
             got=f"a {tokens.ndim}-D {tokens.dtype} array")
    # Only 64-bit and uint32 arrays can hold values beyond int32.
    if tokens.size and (tokens.dtype.itemsize > 4 or tokens.dtype == np.uint32) and (
        int(tokens.min()) < -(1 << 31) or int(tokens.max()) >= 1 << 31
    ):
        fail("token ids that fit in int32 (token ids are int32 on the wire)", tokens,
             got=f"values from {int(tokens.min())} to {int(tokens.max())}")


# The SDK accepts base64 text where bytes are expected; so do we.
_B64_BYTES = Check(frozenset({bytes}), b64_bytes_check, "bytes or base64 text")


class ImageChunk(
    Model, kw_only=True, frozen=True, gc=False, tag="image", tag_field="type"
):
    """An inline image (wire ``type: "image"``; ``data`` is base64 in JSON).

    ``expected_tokens`` is advisory: the server counts the tokens itself and may fail
    fast on a mismatch. ``length`` needs it.
    """

    data: bytes
    format: Literal["png", "jpeg"]
    expected_tokens: int | None = None
    type: ClassVar[Literal["image"]] = "image"
    _field_checks: ClassVar[dict[str, Check]] = {"data": _B64_BYTES}

    @property
    def length(self) -> int:
        """The token count this image stands for (``expected_tokens``)."""
        if self.expected_tokens is None:
            raise ValueError(
                "ImageChunk expected_tokens needs to be set in order to compute the length"
            )
        return self.expected_tokens


class ImageAssetPointerChunk(
    Model, kw_only=True, frozen=True, gc=False, tag="image_asset_pointer", tag_field="type"
):
    """An image given by location (wire ``type: "image_asset_pointer"``; sampling only)."""

    format: Literal["png", "jpeg"]
    location: str
    expected_tokens: int | None = None
    type: ClassVar[Literal["image_asset_pointer"]] = "image_asset_pointer"

    @property
    def length(self) -> int:
        """The token count this image stands for (``expected_tokens``)."""
        if self.expected_tokens is None:
            raise ValueError(
                "ImageAssetPointerChunk expected_tokens needs to be set in order to "
                "compute the length"
            )
        return self.expected_tokens


class DmelChunk(Model, kw_only=True, frozen=True, gc=False, tag="dmel", tag_field="type"):
    """DMel audio tokens as serialized TensorContainer bytes (wire ``type: "dmel"``)."""

    dmel: bytes
    type: ClassVar[Literal["dmel"]] = "dmel"
    _field_checks: ClassVar[dict[str, Check]] = {"dmel": _B64_BYTES}

    @property
    def length(self) -> int:
        """Dimension 0 of the TensorContainer (read from its header)."""
        return _tensor_container_shape(self.dmel)[0]


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data):
            raise ValueError("Truncated TensorContainer header")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError("TensorContainer varint is too long")


def _tensor_container_shape(data: bytes) -> tuple[int, ...]:
    # Header: optional constant marker 254, a dtype byte 0..7, varint ndim, varint dims.
    if not data:
        raise ValueError("TensorContainer bytes are empty")
    offset = 1 if data[0] == 254 else 0
    if offset >= len(data) or data[offset] > 7:
        raise ValueError("Invalid TensorContainer header (bad dtype byte)")
    ndim, offset = _read_varint(data, offset + 1)
    dims = []
    for _ in range(ndim):
        dim, offset = _read_varint(data, offset)
        dims.append(dim)
    if not dims:
        raise ValueError("TensorContainer tensor has no dimension 0")
    return tuple(dims)


ModelInputChunk = EncodedTextChunk | ImageAssetPointerChunk | ImageChunk | DmelChunk
"""One chunk of a :class:`ModelInput`, told apart by its ``type`` tag."""


class ModelInput(Model, kw_only=True, frozen=True, gc=False):
    """The input of a model: a list of chunks (wire ``{"chunks": [...]}``)."""

    chunks: list[ModelInputChunk]

    @classmethod
    def from_ints(cls, tokens: Sequence[int]) -> ModelInput:
        """A ModelInput of one text chunk (the tokens are checked and copied).

        A numpy array is accepted too (the official type refuses one); it becomes a list.
        """
        if isinstance(tokens, np.ndarray):
            tokens = tokens.tolist()
        return construct(cls, chunks=[construct(EncodedTextChunk, tokens=tokens)])

    def to_ints(self) -> list[int]:
        """All tokens as one list; ``ValueError`` if any chunk is not text."""
        out: list[int] = []
        for chunk in self.chunks:
            if not isinstance(chunk, EncodedTextChunk):
                kinds = [type(c).__name__ for c in self.chunks]
                raise ValueError(
                    f"to_ints only supports ModelInputs made of EncodedTextChunks, got {kinds}"
                )
            tokens = chunk.tokens
            out.extend(tokens.tolist() if isinstance(tokens, np.ndarray) else tokens)
        return out

    @property
    def length(self) -> int:
        """The context length this input uses (sum of chunk lengths)."""
        return sum(chunk.length for chunk in self.chunks)

    @classmethod
    def empty(cls) -> ModelInput:
        """A ModelInput with no chunks."""
        return construct(cls, chunks=[])

    def append(self, chunk: ModelInputChunk) -> ModelInput:
        """A new ModelInput with ``chunk`` added at the end."""
        return construct(ModelInput, chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> ModelInput:
        """A new ModelInput with one token added at the end (as its own text chunk)."""
        return self.append(construct(EncodedTextChunk, tokens=[token]))
