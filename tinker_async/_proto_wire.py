"""Protobuf wire-format primitives: schema tables, one writer and one schema-driven reader.

This is the type-agnostic half of the hand-written codec. A message is described once, as
a :class:`Message` table of :class:`Field` rows (the Tinker ones are in
:mod:`tinker_async._proto_schema`); the reader walks that table, and the writer takes every
key and every "is the default written?" decision from the same rows. Nothing here knows
about Tinker; nothing here imports ``protobuf``.

Writing follows what the official (upb) serializer emits for proto3, so that our bytes can
be identical to ``SerializeToString()``:

- fields in field-number order (the caller writes them in that order);
- implicit-presence scalars (plain proto3 fields) are skipped when they hold their default
  (0, "", b"", False); fields with presence (oneof members, ``optional`` fields, singular
  messages) are written even then: the writer reads :attr:`Field.presence`;
- negative ``int32``/``int64``/enum values are sign-extended to ten-byte varints;
- repeated scalars are packed;
- a map entry always carries both its key and its value, defaults included.

Reading accepts anything a conforming parser accepts (fields in any order, unknown fields and
groups skipped, packed or unpacked repeated scalars, a singular message field that occurs
twice is merged, the last oneof member wins) and turns every malformed input (truncation, bad
varint, bad wire type for a known field, invalid UTF-8, groups nested too deep) into a
``ValueError`` that names the message and field.

Reading is safe on hostile input: its time is linear in the input (each byte is read once
per nesting level of the schema, which is fixed; the occurrences of a repeated singular
message are gathered into one growing buffer, never re-joined per occurrence), every
length is checked against the bytes that remain before anything is sliced, and every
item it makes (a list slot, a dict, a view) is backed by at least one byte of input, so
memory is a fixed multiple of the input size. Callers that turn a count *read from the wire* into objects (see
:mod:`tinker_async._proto`) must bound it the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "BOOL",
    "BYTES",
    "DOUBLE",
    "ENUM",
    "I32",
    "I64",
    "INT32",
    "INT64",
    "LEN",
    "MAP",
    "MESSAGE",
    "STRING",
    "UINT32",
    "VARINT",
    "Buffer",
    "Field",
    "Message",
    "Part",
    "Writer",
    "decode",
    "encode_varint",
    "frame",
    "map_entry",
    "tag",
]

# Wire types (https://protobuf.dev/programming-guides/encoding/#structure).
VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
SGROUP: Final = 3
EGROUP: Final = 4
I32: Final = 5

_MASK32: Final = (1 << 32) - 1
_MASK64: Final = (1 << 64) - 1
# A deeper nesting of (unknown) groups than this is rejected instead of recursing without end.
_MAX_DEPTH: Final = 64

# What the writer accepts as a payload. A numpy array goes into the output as a memoryview
# of its buffer, which ``b"".join`` copies once; that saves the extra copy ``tobytes()``
# would make (about 10x faster on a 16 MB request). Arrays must be C-contiguous.
Part: TypeAlias = "bytes | memoryview | npt.NDArray[Any]"
# What the reader accepts as input.
Buffer: TypeAlias = "bytes | bytearray | memoryview"

# ---------------------------------------------------------------------------------------
# Schema tables
# ---------------------------------------------------------------------------------------

# Field kinds of the schema; each maps to the wire type it must arrive with.
INT32: Final = 0
INT64: Final = 1
UINT32: Final = 2
BOOL: Final = 3
ENUM: Final = 4
DOUBLE: Final = 5
STRING: Final = 6
BYTES: Final = 7
MESSAGE: Final = 8
MAP: Final = 9

_KIND_WIRE_TYPE: Final = {
    INT32: VARINT,
    INT64: VARINT,
    UINT32: VARINT,
    BOOL: VARINT,
    ENUM: VARINT,
    DOUBLE: I64,
    STRING: LEN,
    BYTES: LEN,
    MESSAGE: LEN,
    MAP: LEN,
}
_KIND_DEFAULT: Final[dict[int, Any]] = {
    INT32: 0,
    INT64: 0,
    UINT32: 0,
    BOOL: False,
    ENUM: 0,
    DOUBLE: 0.0,
    STRING: "",
    BYTES: memoryview(b""),
}


@dataclass(frozen=True)
class Field:
    """One field of a :class:`Message` table, as the ``.proto`` file declares it.

    For ``MESSAGE`` fields ``message`` is the field's type; for ``MAP`` fields it is the
    entry type (key is field 1, value field 2, see :func:`map_entry`). ``oneof`` names the
    oneof the field is in; ``optional`` marks a proto3 ``optional`` field.

    Derived from those: ``wire_type`` (what the reader expects), ``key`` (the encoded tag
    the writer puts first: one length-delimited field for a packed repeated scalar) and
    ``presence`` (whether the field is written even when it holds its default, as
    protobuf's ``has_presence``).
    """

    number: int
    name: str
    kind: int
    repeated: bool = False
    message: Message | None = None
    oneof: str | None = None
    optional: bool = False
    wire_type: int = field(init=False, repr=False, compare=False)
    key: bytes = field(init=False, repr=False, compare=False)
    presence: bool = field(init=False, repr=False, compare=False)

    def inner(self, name: str) -> Field:
        """The field ``name`` of the message this field holds (of the entry, for a map)."""
        if self.message is None:
            raise KeyError(f"{self.name} holds no message, so no field {name!r}")
        return self.message[name]

    def __post_init__(self) -> None:
        wire_type = _KIND_WIRE_TYPE[self.kind]
        object.__setattr__(self, "wire_type", wire_type)
        object.__setattr__(self, "key", tag(self.number, LEN if self.repeated else wire_type))
        object.__setattr__(self, "presence", not self.repeated and (
            self.oneof is not None or self.optional or self.kind == MESSAGE))


@dataclass(frozen=True)
class Message:
    """A message's table: its fields, from which both the reader and the writer work.

    ``message["name"]`` is the field called ``name``.
    """

    name: str
    fields: Sequence[Field]
    by_number: dict[int, Field] = field(init=False, repr=False, compare=False)
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)
    oneof_members: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_number", {f.number: f for f in self.fields})
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        members: dict[str, list[str]] = {}
        for f in self.fields:
            if f.oneof is not None:
                members.setdefault(f.oneof, []).append(f.name)
        object.__setattr__(self, "oneof_members", {k: tuple(v) for k, v in members.items()})

    def __getitem__(self, name: str) -> Field:
        return self.by_name[name]


def map_entry(name: str, value_kind: int, value_message: Message | None = None) -> Message:
    """The entry message of a ``map<string, value>`` field (``name`` as protoc names it)."""
    return Message(name, [_MAP_KEY, Field(2, "value", value_kind, message=value_message)])


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

# Varints below 2**14 (every tag, most lengths, token counts) come from this table.
_VARINT_CACHE: Final[tuple[bytes, ...]] = tuple(
    [bytes((i,)) for i in range(0x80)]
    + [bytes(((i & 0x7F) | 0x80, i >> 7)) for i in range(0x80, 1 << 14)]
)
_CACHE_SIZE: Final = len(_VARINT_CACHE)
_DOUBLE: Final = struct.Struct("<d")


def encode_varint(value: int) -> bytes:
    """Encode an integer as a protobuf varint.

    Negative numbers become their 64-bit two's complement (ten bytes), which is how
    protobuf writes negative ``int32``, ``int64`` and enum values.
    """
    if 0 <= value < _CACHE_SIZE:
        return _VARINT_CACHE[value]
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"integer {value} does not fit in 64 bits")
        value &= _MASK64
    elif value > _MASK64:
        raise ValueError(f"integer {value} does not fit in 64 bits")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """The encoded key of field ``number`` with ``wire_type``."""
    return encode_varint((number << 3) | wire_type)


def _as_buffer(data: Part) -> tuple[bytes | memoryview, int]:
    """``data`` as something ``bytes.join`` takes, and its size in bytes."""
    if isinstance(data, bytes):
        return data, len(data)
    view = data.data if isinstance(data, np.ndarray) else data
    return view, view.nbytes


class Writer:
    """Accumulates output pieces and joins them once at the end.

    Every field is written through its :class:`Field` row: the key comes from there, and
    an implicit-presence field holding its default is skipped. Nested messages are written
    in place: :meth:`begin` leaves a slot for the length and :meth:`end` fills it in, so no
    message body is ever copied into its parent.
    """

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def raw(self, data: Part) -> None:
        """Append bytes as they are (part of a payload, or bytes made by another Writer)."""
        buffer, size = _as_buffer(data)
        self.parts.append(buffer)
        self.size += size

    def varint(self, f: Field, value: int) -> None:
        """Write a varint field (int32, int64, uint32, bool, enum)."""
        if value or f.presence:
            self.raw(f.key + encode_varint(value))

    def double(self, f: Field, value: float) -> None:
        """Write a ``double`` field (eight bytes, little-endian); -0.0 is not a default."""
        data = _DOUBLE.pack(value)
        if f.presence or data != _ZERO_DOUBLE:
            self.raw(f.key + data)

    def blob(self, f: Field, data: Part) -> None:
        """Write a length-delimited field whose payload is ``data``: the one length writer."""
        buffer, size = _as_buffer(data)
        if size or f.presence:
            header = f.key + encode_varint(size)
            self.parts += (header, buffer)
            self.size += len(header) + size

    def string(self, f: Field, value: str) -> None:
        """Write a ``string`` field."""
        self.blob(f, value.encode("utf-8"))

    def packed_varints(self, f: Field, values: Iterable[int]) -> None:
        """Write a packed repeated varint field; nothing at all when ``values`` is empty."""
        self.blob(f, b"".join([encode_varint(int(v)) for v in values]))  # shapes: a few items

    def begin(self, f: Field) -> tuple[int, int]:
        """Start a nested message (or any length-delimited field built piecewise).

        Pass the result to :meth:`end`.
        """
        key = f.key
        self.parts += (key, b"")  # the length goes in the empty slot once the body is known
        self.size += len(key)
        return len(self.parts) - 1, self.size

    def end(self, mark: tuple[int, int]) -> None:
        """Finish the nested message started by :meth:`begin`."""
        index, start = mark
        header = encode_varint(self.size - start)
        self.parts[index] = header
        self.size += len(header)

    def entry(self, f: Field, key: str) -> tuple[int, int]:
        """Start one entry of the map field ``f`` and write its key (even ""); write the
        value through ``f.message["value"]``, then pass the result to :meth:`end`."""
        mark = self.begin(f)
        key_bytes = key.encode("utf-8")
        self.raw(_MAP_KEY.key + encode_varint(len(key_bytes)) + key_bytes)
        return mark

    def double_entry(self, f: Field, key: str, value: float) -> None:
        """Write one entry of the ``map<string, double>`` field ``f`` (0.0 included)."""
        mark = self.entry(f, key)
        self.raw(f.inner("value").key + _DOUBLE.pack(value))
        self.end(mark)

    def getvalue(self) -> bytes:
        """All written bytes, joined once."""
        return b"".join(self.parts)


_ZERO_DOUBLE: Final = _DOUBLE.pack(0.0)
# The key of every map entry (a map entry always carries both its key and its value).
_MAP_KEY: Final = Field(1, "key", STRING)


def frame(write: Callable[[Writer, Part], None], size: int) -> tuple[bytes, bytes]:
    """The bytes ``write`` puts before and after a payload of ``size`` bytes.

    ``write(w, payload)`` writes some fields around ``payload``; it is run once on a
    placeholder of that size, so a hot path can cache the frame per size and append
    ``head, payload, tail`` to a Writer's parts without running ``write`` again. The frame
    is exactly what the general writer makes, so the two cannot disagree. A payload that
    ``write`` skips (an empty implicit-presence field) has an empty tail.
    """
    placeholder = memoryview(bytearray(size))
    w = Writer()
    write(w, placeholder)
    at = next((i for i, part in enumerate(w.parts) if part is placeholder), len(w.parts))
    return b"".join(w.parts[:at]), b"".join(w.parts[at + 1:])


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

def _read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Read one varint at ``pos``; return ``(value, next position)``."""
    if pos >= end:
        raise ValueError("truncated varint")
    byte = buf[pos]
    if byte < 0x80:  # one-byte fast path: tags, small lengths, enums
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            # Bits past the 64th (possible in a 10th byte) are dropped, as protobuf does.
            return result & _MASK64, pos
        shift += 7


def _read_value(buf: Buffer, pos: int, end: int, key: int, depth: int) -> tuple[int, int]:
    """Read the value of a field whose key was just read; the one field reader.

    Returns ``(value, next position)`` where ``value`` is the integer for a varint and the
    start offset of the payload for every other wire type (the payload ends where the next
    position starts, except for a group, whose end marker is included).
    """
    wire_type = key & 7
    if wire_type == VARINT:
        return _read_varint(buf, pos, end)
    if wire_type == LEN:
        length, start = _read_varint(buf, pos, end)
        if length > end - start:
            raise ValueError("truncated length-delimited field")
        return start, start + length
    if wire_type == I64 or wire_type == I32:
        stop = pos + (8 if wire_type == I64 else 4)
        if stop > end:
            raise ValueError("truncated fixed-width field")
        return pos, stop
    if wire_type == SGROUP:
        if depth >= _MAX_DEPTH:
            raise ValueError("groups nested too deeply")
        start = pos
        while True:
            inner, pos = _read_varint(buf, pos, end)
            if inner & 7 == EGROUP:
                if inner >> 3 != key >> 3:
                    raise ValueError("mismatched end-group marker")
                return start, pos
            _, pos = _read_value(buf, pos, end, inner, depth + 1)
    if wire_type == EGROUP:
        raise ValueError("unexpected end-group marker")
    raise ValueError(f"invalid wire type {wire_type}")


def decode(schema: Message, data: Buffer) -> dict[str, Any]:
    """Decode ``data`` as a ``schema`` message into a dict.

    A singular field appears in the dict only if it was on the wire (so presence can be
    tested with ``in``); repeated fields are lists, maps are dicts, ``bytes`` fields are
    zero-copy ``memoryview`` slices of ``data``, nested messages are dicts.
    """
    if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
        data = data.cast("B")
    return _decode(schema, data, memoryview(data), 0, len(data), 0)


def _decode(
    schema: Message, buf: Buffer, view: memoryview, pos: int, end: int, depth: int
) -> dict[str, Any]:
    """Decode the ``schema`` message in ``buf[pos:end]``; errors name the innermost message."""
    try:
        return _decode_fields(schema, buf, view, pos, end, depth)
    except _DecodeError:
        raise
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise _DecodeError(f"malformed protobuf {schema.name}: {exc}") from exc


# Singular message fields are decoded after the fields around them: protobuf merges a
# message field that occurs more than once, which equals decoding the concatenation of its
# payloads. Each holds the (start, stop) of its only occurrence, or the concatenation so
# far, grown in place: one copy of the input at most, however many occurrences come (a
# list of ranges would cost ~100 bytes per 4-byte occurrence).
_Held: TypeAlias = "dict[str, tuple[Field, tuple[int, int] | bytearray]]"


def _decode_fields(
    schema: Message, buf: Buffer, view: memoryview, pos: int, end: int, depth: int
) -> dict[str, Any]:
    """The field loop: one pass over the bytes, dispatching on the schema's rows (the
    rarer cases are helpers; the common scalar and bytes fields stay inline, because this
    runs once per field on the wire)."""
    out: dict[str, Any] = {}
    held: _Held = {}
    item: Any
    by_number = schema.by_number
    while pos < end:
        key = buf[pos]
        if key < 0x80:  # one-byte keys: every field number below 16
            pos += 1
        else:
            key, pos = _read_varint(buf, pos, end)
            if key > _MASK32:
                raise ValueError(f"invalid field key {key}")
        if key < 8:
            raise ValueError("invalid field number 0")
        value, pos = _read_value(buf, pos, end, key, depth)
        spec = by_number.get(key >> 3)
        if spec is None:
            continue  # unknown field: skipped, as every protobuf parser does
        if key & 7 != spec.wire_type:
            _read_packed(out, spec, key & 7, buf, value, pos)
            continue
        if spec.oneof is not None:
            for other in schema.oneof_members[spec.oneof]:  # the last member set wins
                if other != spec.name:
                    out.pop(other, None)
                    held.pop(other, None)
        kind = spec.kind
        if kind == MESSAGE:
            if spec.repeated:
                assert spec.message is not None
                out.setdefault(spec.name, []).append(
                    _decode(spec.message, buf, view, value, pos, depth + 1)
                )
            else:
                _hold(held, spec, view, value, pos)
            continue
        if kind == BYTES:
            item = view[value:pos]
        elif kind == MAP:
            _read_entry(out, spec, buf, view, value, pos, depth)
            continue
        elif kind == STRING:
            item = str(view[value:pos], "utf-8")
        elif kind == DOUBLE:
            item = _DOUBLE.unpack_from(buf, value)[0]
        else:
            item = _convert_varint(kind, value)
        if spec.repeated:
            out.setdefault(spec.name, []).append(item)
        else:
            out[spec.name] = item
    for name, (spec, payload) in held.items():
        sub = spec.message
        assert sub is not None
        if isinstance(payload, bytearray):  # so that views of it stay writable like the rest
            out[name] = _decode(sub, payload, memoryview(payload), 0, len(payload), depth + 1)
        else:
            out[name] = _decode(sub, buf, view, payload[0], payload[1], depth + 1)
    return out


def _read_packed(
    out: dict[str, Any], spec: Field, wire_type: int, buf: Buffer, start: int, stop: int
) -> None:
    """A repeated varint field sent packed (one length-delimited run); any other wire type
    that differs from the schema's is an error."""
    if not (spec.repeated and wire_type == LEN and spec.wire_type == VARINT):
        raise ValueError(
            f"field {spec.name} (#{spec.number}) has wire type {wire_type}, "
            f"expected {spec.wire_type}"
        )
    items = out.setdefault(spec.name, [])
    while start < stop:
        item, start = _read_varint(buf, start, stop)
        items.append(_convert_varint(spec.kind, item))


def _hold(held: _Held, spec: Field, view: memoryview, start: int, stop: int) -> None:
    """Keep an occurrence of a singular message field to decode once all have been seen."""
    seen = held.get(spec.name)
    if seen is None:
        held[spec.name] = (spec, (start, stop))
    elif isinstance(seen[1], bytearray):
        seen[1].extend(view[start:stop])
    else:
        first, end = seen[1]
        held[spec.name] = (spec, bytearray(view[first:end]) + view[start:stop])


def _read_entry(
    out: dict[str, Any], spec: Field, buf: Buffer, view: memoryview, start: int, stop: int,
    depth: int,
) -> None:
    """One map entry into ``out[spec.name]`` (a missing key or value is its default)."""
    assert spec.message is not None
    entry = _decode(spec.message, buf, view, start, stop, depth + 1)
    out.setdefault(spec.name, {})[_entry_part(spec.message, entry, "key")] = (
        _entry_part(spec.message, entry, "value")
    )


class _DecodeError(ValueError):
    """A ``ValueError`` already prefixed with the innermost message name."""


def _entry_part(entry_schema: Message, entry: dict[str, Any], name: str) -> Any:
    """A map entry's key or value, or its default when the entry omits it."""
    if name in entry:
        return entry[name]
    spec = entry_schema.by_number[1 if name == "key" else 2]
    return {} if spec.kind == MESSAGE else _KIND_DEFAULT[spec.kind]


def _convert_varint(kind: int, value: int) -> int | bool:
    """Interpret a raw 64-bit varint as the field's scalar type, as protobuf does."""
    if kind == INT64:
        return value - (1 << 64) if value >> 63 else value
    if kind == INT32 or kind == ENUM:  # proto3 enums are open: any int32 is kept
        value &= _MASK32
        return value - (1 << 32) if value >> 31 else value
    if kind == UINT32:
        return value & _MASK32
    if kind == BOOL:
        return value != 0
    raise ValueError(f"kind {kind} is not a varint kind")
