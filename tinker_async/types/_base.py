"""The msgspec base of every Struct type, with the small pydantic surface people call.

Wire policy (see also ``_codec.keep``):

- ``omit_defaults=True``: a field at its default is not sent. That leaves out None and
  the optional feature switches (``topk_sample_logprobs=0``, ``kind="snapshot"``...)
  that strict servers reject when they do not know them.
- Core values whose server-side defaults may differ (hyperparameters, ``num_samples``)
  use ``keep(...)`` defaults and are always sent, as the official SDK does.
- A literal ``type`` on a request is a msgspec tag (``tag_field="type"``), so it is
  always encoded; a ``type`` ClassVar keeps ``obj.type`` readable.
- Unknown fields in responses are ignored (msgspec's default).
"""

from __future__ import annotations

import copy
import datetime
import enum
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

import msgspec

from ._codec import convert, decode_json_lenient, enc_hook

_M = TypeVar("_M", bound="Model")

_JSON_ENCODER = msgspec.json.Encoder(enc_hook=enc_hook)

# msgspec >= 0.21 runs __post_init__ in structs.replace; older versions do not.
_REPLACE_RUNS_POST_INIT = tuple(int(p) for p in msgspec.__version__.split(".")[:2]) >= (0, 21)


class Model(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """Base of the Struct types: keyword-only, frozen, defaults left off the wire."""

    def model_dump(
        self,
        *,
        mode: Literal["python", "json"] = "python",
        exclude_none: bool = False,
        exclude_defaults: bool = False,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """A dict of the fields (nested models as dicts), like pydantic's ``model_dump``.

        Unlike the wire encoding, defaults are included unless ``exclude_defaults``;
        ``mode="json"`` turns bytes into base64, datetimes into ISO strings, enums into
        values.
        """
        opts = _DumpOptions(mode == "json", exclude_none, exclude_defaults)
        out = _dump_struct(self, opts)
        if include is not None:
            keep_names = set(include)
            out = {k: v for k, v in out.items() if k in keep_names}
        if exclude is not None:
            drop = set(exclude)
            out = {k: v for k, v in out.items() if k not in drop}
        return out

    def model_dump_json(self, *, exclude_none: bool = False) -> str:
        """The JSON text of ``model_dump(mode="json")``."""
        data = self.model_dump(mode="json", exclude_none=exclude_none)
        return _JSON_ENCODER.encode(data).decode()

    def model_copy(self: _M, *, update: dict[str, Any] | None = None, deep: bool = False) -> _M:
        """A copy with the fields in ``update`` replaced (pydantic's ``model_copy``)."""
        base = copy.deepcopy(self) if deep else self
        new = msgspec.structs.replace(base, **(update or {}))
        post_init = getattr(new, "__post_init__", None)
        if post_init is not None and not _REPLACE_RUNS_POST_INIT:
            post_init()  # our __post_init__ methods only normalize, so running twice is safe
        return new

    @classmethod
    def model_validate(cls: type[_M], obj: Any) -> _M:
        """Build from a dict (or return ``obj`` if it already is one), validating types."""
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, msgspec.Struct):
            obj = msgspec.to_builtins(obj, enc_hook=enc_hook)
        return convert(obj, cls)

    @classmethod
    def model_validate_json(cls: type[_M], data: str | bytes) -> _M:
        """Decode JSON text into this type (lenient about known server deviations)."""
        return decode_json_lenient(data, cls)


class _DumpOptions:
    __slots__ = ("exclude_defaults", "exclude_none", "json")

    def __init__(self, json: bool, exclude_none: bool, exclude_defaults: bool) -> None:
        self.json = json
        self.exclude_none = exclude_none
        self.exclude_defaults = exclude_defaults


def _is_default(info: msgspec.structs.FieldInfo, value: Any) -> bool:
    if info.default is not msgspec.NODEFAULT:
        return bool(value == info.default)
    if info.default_factory is not msgspec.NODEFAULT:
        return bool(value == info.default_factory())
    return False


def _dump_struct(obj: msgspec.Struct, opts: _DumpOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    config = obj.__struct_config__
    if config.tag_field is not None:
        out[config.tag_field] = config.tag
    for info in msgspec.structs.fields(obj):
        value = getattr(obj, info.name)
        if opts.exclude_none and value is None:
            continue
        if opts.exclude_defaults and _is_default(info, value):
            continue
        out[info.name] = _dump_value(value, opts)
    return out


def _dump_value(value: Any, opts: _DumpOptions) -> Any:
    if isinstance(value, msgspec.Struct):
        return _dump_struct(value, opts)
    if isinstance(value, (list, tuple)):
        return [_dump_value(v, opts) for v in value]
    if isinstance(value, dict):
        return {k: _dump_value(v, opts) for k, v in value.items()}
    if opts.json and isinstance(value, (bytes, datetime.datetime, enum.Enum)):
        return msgspec.to_builtins(value)
    return value
