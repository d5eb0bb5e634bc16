"""Model input: the chunk kinds (a union tagged on ``type``) and ``ModelInput``."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import ClassVar, Literal

import msgspec
import numpy as np

from ._base import Model

__all__ = [
    "DmelChunk",
    "EncodedTextChunk",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ModelInput",
    "ModelInputChunk",
]


class EncodedTextChunk(Model, kw_only=True, frozen=True, tag="encoded_text", tag_field="type"):
    """A run of token ids (wire ``{"type": "encoded_text", "tokens": [...]}``).

    ``tokens`` is usually a list of ints. An integer numpy array is accepted too (the
    official types refuse one): a forward_backward then sends it as it is, without the
    per-token conversion a list needs. Decoding also accepts a bare ``{"tokens": [...]}``
    (older servers omit the tag).
    """

    tokens: Sequence[int]
    type: ClassVar[Literal["encoded_text"]] = "encoded_text"

    def __post_init__(self) -> None:
        if isinstance(self.tokens, np.ndarray):
            _check_token_array(self.tokens)

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
        raise ValueError(
            f"EncodedTextChunk tokens given as a numpy array must be 1-D integers; got a "
            f"{tokens.ndim}-D {tokens.dtype} array (use .ravel() / .astype(np.int32))"
        )
    if tokens.size and tokens.dtype.itemsize >= 4 and (
        int(tokens.min()) < -(1 << 31) or int(tokens.max()) >= 1 << 31
    ):
        raise ValueError("EncodedTextChunk tokens must fit in int32 (token ids are int32 on "
                         "the wire)")


def _b64_bytes(value: bytes | str) -> bytes:
    # The SDK accepts a base64 string where bytes are expected; so do we.
    return base64.b64decode(value) if isinstance(value, str) else value


class ImageChunk(Model, kw_only=True, frozen=True, tag="image", tag_field="type"):
    """An inline image (wire ``type: "image"``; ``data`` is base64 in JSON).

    ``expected_tokens`` is advisory: the server counts the tokens itself and may fail
    fast on a mismatch. ``length`` needs it.
    """

    data: bytes
    format: Literal["png", "jpeg"]
    expected_tokens: int | None = None
    type: ClassVar[Literal["image"]] = "image"

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            msgspec.structs.force_setattr(self, "data", _b64_bytes(self.data))

    @property
    def length(self) -> int:
        """The token count this image stands for (``expected_tokens``)."""
        if self.expected_tokens is None:
            raise ValueError(
                "ImageChunk expected_tokens needs to be set in order to compute the length"
            )
        return self.expected_tokens


class ImageAssetPointerChunk(
    Model, kw_only=True, frozen=True, tag="image_asset_pointer", tag_field="type"
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


class DmelChunk(Model, kw_only=True, frozen=True, tag="dmel", tag_field="type"):
    """DMel audio tokens as serialized TensorContainer bytes (wire ``type: "dmel"``)."""

    dmel: bytes
    type: ClassVar[Literal["dmel"]] = "dmel"

    def __post_init__(self) -> None:
        if isinstance(self.dmel, str):
            msgspec.structs.force_setattr(self, "dmel", _b64_bytes(self.dmel))

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


class ModelInput(Model, kw_only=True, frozen=True):
    """The input of a model: a list of chunks (wire ``{"chunks": [...]}``)."""

    chunks: list[ModelInputChunk]

    @classmethod
    def from_ints(cls, tokens: Sequence[int]) -> ModelInput:
        """A ModelInput of one text chunk."""
        if isinstance(tokens, np.ndarray):
            tokens = tokens.tolist()
        return cls(chunks=[EncodedTextChunk(tokens=tokens)])

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
        return cls(chunks=[])

    def append(self, chunk: ModelInputChunk) -> ModelInput:
        """A new ModelInput with ``chunk`` added at the end."""
        return ModelInput(chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> ModelInput:
        """A new ModelInput with one token added at the end (as its own text chunk)."""
        return self.append(EncodedTextChunk(tokens=[token]))
