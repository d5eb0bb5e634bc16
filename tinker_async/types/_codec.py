"""Low-level codec helpers shared by the types and by ``_wire``.

- :func:`enc_hook` teaches msgspec the few foreign values that reach it (numpy arrays
  and scalars inside user metadata or loss configs).
- :func:`repaired` fixes the known ways older or third-party servers deviate from the
  official JSON shapes, so a strict decode that failed can be retried once.
- :func:`convert` is ``msgspec.convert`` with that one lenient retry.

Nothing here imports a type module, so every type module may import it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import numpy as np

T = TypeVar("T")

# Chunk kinds by the key that only that kind has; used when a server (or an old client)
# sends a model-input chunk without its "type" tag. Order matters: "data" is last
# because it is the least specific key.
_CHUNK_KIND_BY_KEY: tuple[tuple[str, str], ...] = (
    ("tokens", "encoded_text"),
    ("dmel", "dmel"),
    ("location", "image_asset_pointer"),
    ("data", "image"),
)


def enc_hook(obj: Any) -> Any:
    """msgspec ``enc_hook``: numpy arrays become lists, numpy scalars Python numbers."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"Cannot encode objects of type {type(obj).__name__}")


def infer_chunk_type(chunk: dict[str, Any]) -> str | None:
    """The ``type`` tag a bare chunk dict most likely has, or None if unknown."""
    for key, kind in _CHUNK_KIND_BY_KEY:
        if key in chunk:
            return kind
    return None


def _repaired_chunk(chunk: Any) -> Any:
    if isinstance(chunk, dict) and "type" not in chunk:
        kind = infer_chunk_type(chunk)
        if kind is not None:
            return {**chunk, "type": kind}
    return chunk


def _repaired_value(key: str, value: Any) -> Any:
    if key == "chunks" and isinstance(value, list):
        fixed = [_repaired_chunk(c) for c in value]
        return value if all(a is b for a, b in zip(fixed, value, strict=True)) else fixed
    if key == "supported_models" and isinstance(value, list):
        # tinkercloud lists plain model names instead of SupportedModel objects.
        if any(isinstance(m, str) for m in value):
            return [{"model_name": m} if isinstance(m, str) else m for m in value]
        return value
    return repaired(value)


def repaired(obj: Any) -> Any:
    """Return ``obj`` with known server deviations fixed (new containers only on change).

    Fixed: model-input chunks without a ``type`` tag (older servers and the tinkercloud
    docs send ``{"tokens": [...]}``), and ``supported_models`` given as plain strings.
    Lists of scalars are not walked, so the cost stays proportional to the structure,
    not to the token count.
    """
    if isinstance(obj, dict):
        out: dict[str, Any] | None = None
        for key, value in obj.items():
            fixed = _repaired_value(key, value)
            if fixed is not value:
                if out is None:
                    out = dict(obj)
                out[key] = fixed
        return obj if out is None else out
    if isinstance(obj, list) and obj and isinstance(obj[0], (dict, list)):
        items = [repaired(v) for v in obj]
        return obj if all(a is b for a, b in zip(items, obj, strict=True)) else items
    return obj


def convert(obj: Any, type_: type[T] | Any) -> T:
    """``msgspec.convert(obj, type_)``, retried once on :func:`repaired` input."""
    try:
        result: T = msgspec.convert(obj, type_)
        return result
    except msgspec.ValidationError:
        fixed = repaired(obj)
        if fixed is obj:
            raise
        result = msgspec.convert(fixed, type_)
        return result


def decode_json_lenient(
    data: bytes | str, type_: type[T] | Any, decoder: msgspec.json.Decoder[Any] | None = None
) -> T:
    """Decode JSON strictly; on a validation error retry once on :func:`repaired` input."""
    try:
        result: T = (
            decoder.decode(data) if decoder is not None else msgspec.json.decode(data, type=type_)
        )
        return result
    except msgspec.ValidationError:
        raw = msgspec.json.decode(data)
        fixed = repaired(raw)
        if fixed is raw:
            raise
        result = msgspec.convert(fixed, type_)
        return result


def keep(value: T) -> T:
    """A field default that is always encoded, even with ``omit_defaults=True``.

    msgspec cannot know what a ``default_factory`` would return, so it never omits such
    a field. We use this for core hyperparameters (learning rate, temperature, LoRA
    switches...) whose defaults on other servers may differ from ours: sending them
    keeps the meaning of a request the same everywhere, as the official SDK does.
    The value is shared by every instance, so use it for immutable values only.
    """
    return msgspec.field(default_factory=lambda: value)
