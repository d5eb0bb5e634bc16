"""Request payloads -> the numpy model's inputs (token arrays and loss-input arrays).

Two sources: datums decoded from a protobuf ``ForwardBackwardRequest`` (``tinker_async``
types, via ``_proto``) and raw JSON bodies (legacy and third-party dialects), read here
independently of the client's types. Both give :class:`~._model.ModelDatum` lists.

Problems raise ``ValueError`` with a message naming the datum and the field; the routes
turn that into a failed future with category ``user``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import types as t
from ._model import ModelDatum

__all__ = [
    "datum_from_json",
    "datum_from_sdk",
    "tensor_from_json",
    "tokens_from_json",
]

_DTYPES: dict[str, type[np.generic]] = {"int64": np.int64, "float32": np.float32}
_INT_KEYS = frozenset({"target_tokens"})


def _text_only(kind: str, where: str) -> ValueError:
    return ValueError(
        f"{where}: a {kind!r} chunk cannot be used here; the local model reads token "
        f"(encoded_text) chunks only"
    )


def datum_from_sdk(datum: t.Datum, index: int) -> ModelDatum:
    """A model datum from a decoded ``Datum`` (text chunks only)."""
    where = f"datum {index}"
    parts: list[Sequence[int]] = []
    for chunk in datum.model_input.chunks:
        if not isinstance(chunk, t.EncodedTextChunk):
            raise _text_only(getattr(chunk, "type", type(chunk).__name__), where)
        parts.append(chunk.tokens)
    tokens = [token for part in parts for token in part] if len(parts) != 1 else parts[0]
    inputs = {key: value.to_numpy() for key, value in datum.loss_fn_inputs.items()}
    return ModelDatum(tokens=tokens, loss_fn_inputs=inputs)


def tokens_from_json(model_input: Any, where: str) -> npt.NDArray[np.int64]:
    """The tokens of a JSON ``ModelInput`` (``{"chunks": [...]}``, or a bare token list)."""
    if isinstance(model_input, list):
        return _int_array(model_input, where)
    if not isinstance(model_input, Mapping) or not isinstance(model_input.get("chunks"), list):
        raise ValueError(f"{where}: expected a model input {{'chunks': [...]}}")
    parts: list[npt.NDArray[np.int64]] = []
    for i, chunk in enumerate(model_input["chunks"]):
        if not isinstance(chunk, Mapping):
            raise ValueError(f"{where}: chunk {i} is not an object")
        kind = chunk.get("type", "encoded_text")
        if kind != "encoded_text":
            raise _text_only(str(kind), where)
        parts.append(_int_array(chunk.get("tokens"), f"{where}: chunk {i} tokens"))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _int_array(value: Any, where: str) -> npt.NDArray[np.int64]:
    """A list of token ids as an int64 array (one numpy call, not a Python loop: this is
    on the path of every sample)."""
    if isinstance(value, list):
        if not value:
            return np.zeros(0, dtype=np.int64)
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is not None and array.ndim == 1 and array.dtype.kind in "iu":
            return array.astype(np.int64, copy=False)
    raise ValueError(f"{where}: expected a list of integer token ids")


def tensor_from_json(value: Any, key: str, where: str, *, pad_value: int = 0) -> npt.NDArray[Any]:
    """A dense array from a JSON ``TensorData`` (dense or sparse CSR) or a bare list.

    A bare (nested) list takes its dtype from the key, as the SDK's ``Datum`` does:
    ``target_tokens`` is int64, everything else float32. CSR cells not listed are
    ``pad_value``.
    """
    where = f"{where}[{key!r}]"
    if isinstance(value, list):
        dtype = np.int64 if key in _INT_KEYS else np.float32
        return _array(value, dtype, where)
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a TensorData object or a list")
    dtype_name = value.get("dtype")
    if dtype_name not in _DTYPES:
        raise ValueError(f"{where}: dtype must be 'int64' or 'float32', got {dtype_name!r}")
    values = _array(value.get("data", []), _DTYPES[dtype_name], where).ravel()
    shape = value.get("shape")
    if shape is not None and (
        not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
    ):
        raise ValueError(f"{where}: shape must be a list of non-negative integers")
    crow, col = value.get("sparse_crow_indices"), value.get("sparse_col_indices")
    if crow is None and col is None:
        if shape is None:
            return values
        try:
            return values.reshape(shape)
        except ValueError:
            raise ValueError(f"{where}: {values.size} values do not fit shape {shape}") from None
    return _densify(values, shape, crow, col, pad_value, where)


def _array(value: Any, dtype: type[np.generic], where: str) -> npt.NDArray[Any]:
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a rectangular array of numbers ({exc})") from None


def _densify(
    values: npt.NDArray[Any], shape: Any, crow: Any, col: Any, pad_value: int, where: str
) -> npt.NDArray[Any]:
    if not isinstance(shape, list) or len(shape) != 2:
        raise ValueError(f"{where}: a sparse CSR tensor needs a 2-D shape")
    try:
        crow_arr = np.asarray(crow, dtype=np.int64)
        col_arr = np.asarray(col, dtype=np.int64)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: sparse indices must be integer lists") from None
    nrows, ncols = shape
    if (
        crow_arr.shape != (nrows + 1,)
        or crow_arr[0] != 0
        or np.any(np.diff(crow_arr) < 0)
        or crow_arr[-1] != col_arr.size
        or col_arr.size != values.size
        or (col_arr.size and (col_arr.min() < 0 or col_arr.max() >= ncols))
    ):
        raise ValueError(f"{where}: inconsistent sparse CSR indices for shape {shape}")
    dense = np.full((nrows, ncols), pad_value, dtype=values.dtype)
    dense[np.repeat(np.arange(nrows), np.diff(crow_arr)), col_arr] = values
    return dense


def datum_from_json(value: Any, index: int) -> ModelDatum:
    """A model datum from a JSON ``Datum`` (``{"model_input", "loss_fn_inputs"}``)."""
    where = f"datum {index}"
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object")
    tokens = tokens_from_json(value.get("model_input"), f"{where}: model_input")
    raw_inputs = value.get("loss_fn_inputs") or {}
    if not isinstance(raw_inputs, Mapping):
        raise ValueError(f"{where}: loss_fn_inputs must be an object")
    inputs = {
        str(key): tensor_from_json(item, str(key), f"{where}: loss_fn_inputs")
        for key, item in raw_inputs.items()
    }
    return ModelDatum(tokens=tokens, loss_fn_inputs=inputs)
