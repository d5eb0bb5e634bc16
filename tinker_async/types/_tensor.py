"""``TensorData``: a numpy-backed tensor (dense or sparse CSR) and its JSON wire form."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ._base import WireModel
from ._validation import ValidationError

if TYPE_CHECKING:
    import torch

__all__ = ["TensorData", "TensorDataWire", "TensorDtype", "TorchNotInstalledError"]

TensorDtype = Literal["int64", "float32"]
"""The two dtypes on the wire."""

# dtype objects, not scalar types: comparing an array's dtype with these is cheap.
_INT64 = np.dtype(np.int64)
_FLOAT32 = np.dtype(np.float32)
_NP_DTYPES: dict[str, np.dtype[Any]] = {"int64": _INT64, "float32": _FLOAT32}


class TorchNotInstalledError(ImportError):
    """Raised by the torch conversions when PyTorch is not installed."""


def import_torch() -> Any:
    """Import torch lazily; a clear :class:`TorchNotInstalledError` when it is missing."""
    try:
        import torch
    except ImportError as exc:
        raise TorchNotInstalledError(
            "PyTorch is required for this conversion but is not installed; "
            "install it with `pip install tinker-async[torch]` (or `pip install torch`)"
        ) from exc
    return torch


def is_torch_tensor(value: object) -> bool:
    """True for a torch tensor, checked without importing torch."""
    return type(value).__module__.startswith("torch") and hasattr(value, "numpy")


def tensor_dtype_of(dtype: np.dtype[Any]) -> TensorDtype:
    """The wire dtype for a numpy dtype: floats -> float32, integers -> int64."""
    kind = dtype.kind
    if kind == "f":
        return "float32"
    if kind == "i" or kind == "u":
        return "int64"
    raise ValueError(
        f"Unsupported numpy dtype {dtype}: TensorData holds float32 (from any float dtype) "
        f"or int64 (from any integer dtype); convert with .astype(...) first"
    )


def _numpy_dtype(dtype: str) -> np.dtype[Any]:
    try:
        return _NP_DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"Unsupported TensorData dtype {dtype!r}: expected 'int64' or 'float32'"
        ) from None


def _check_pad_value(pad_value: Any) -> int:
    # An integer shift is exact for int64 tensors; the SDK refuses anything else too.
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, np.integer)):
        raise TypeError(
            f"pad_value must be an integer, got {type(pad_value).__name__}: {pad_value!r}"
        )
    return int(pad_value)


def _as_array(data: Any, np_dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    if isinstance(data, np.ndarray):
        current = data.dtype
        if current is not np_dtype and current != np_dtype:
            return data.astype(np_dtype)
        # torch.from_numpy warns on read-only buffers (np.frombuffer, mmap), so copy.
        return data if data.flags.writeable else data.copy()
    if data is None:
        return np.empty(0, dtype=np_dtype)
    # For float32, numpy reads None (JSON's null for NaN) as NaN.
    try:
        return np.asarray(data, dtype=np_dtype)
    except (TypeError, OverflowError, ValueError) as exc:  # a null in int64, 1e20, text...
        raise ValidationError("TensorData", [{
            "loc": ("data",), "msg": f"expected {np_dtype} numbers: {exc}", "input": data,
        }]) from None


@dataclass(frozen=True, eq=False, init=False, repr=False)
class TensorData:
    """A dense or sparse-CSR tensor of int64 or float32 (wire name ``TensorData``).

    Backed by one numpy array. ``data`` is the flat Python list (as in the official
    SDK); ``to_numpy()`` gives the array without copying. Sparse CSR: ``data`` holds the
    listed values, ``sparse_crow_indices`` the row pointers (nrows + 1),
    ``sparse_col_indices`` the column of each value, ``shape`` the dense shape; every
    other entry is the ``pad_value`` given when densifying.
    """

    __slots__ = ("_numpy", "dtype", "shape", "sparse_col_indices", "sparse_crow_indices")

    # ``data`` is a dataclass field backed by the property below, so that
    # dataclasses.replace/asdict and msgspec's dataclass encoding all see the values.
    data: list[int] | list[float]
    dtype: TensorDtype
    shape: list[int] | None
    sparse_crow_indices: list[int] | None
    sparse_col_indices: list[int] | None
    if TYPE_CHECKING:
        _numpy: npt.NDArray[Any]

    def __init__(
        self,
        data: Sequence[int] | Sequence[float] | npt.NDArray[Any] | None = None,
        dtype: TensorDtype | None = None,
        shape: Sequence[int] | None = None,
        sparse_crow_indices: Sequence[int] | None = None,
        sparse_col_indices: Sequence[int] | None = None,
    ) -> None:
        if dtype is None:
            raise TypeError("TensorData requires `dtype` ('int64' or 'float32')")
        arr = _as_array(data, _numpy_dtype(dtype))
        shape_list = None if shape is None else [int(d) for d in shape]
        if (sparse_crow_indices is None) != (sparse_col_indices is None):
            raise ValueError("sparse_crow_indices and sparse_col_indices must be given together")
        if sparse_crow_indices is None:
            if shape_list is not None and list(arr.shape) != shape_list:
                arr = arr.reshape(shape_list)
        elif shape_list is None:
            raise ValueError("a sparse CSR TensorData needs `shape` (the dense shape)")
        set_ = object.__setattr__
        set_(self, "_numpy", arr)
        set_(self, "dtype", dtype)
        set_(self, "shape", shape_list)
        set_(self, "sparse_crow_indices", _int_list(sparse_crow_indices))
        set_(self, "sparse_col_indices", _int_list(sparse_col_indices))

    @property  # type: ignore[no-redef]
    def data(self) -> list[int] | list[float]:
        """The values as a flat Python list (the CSR values when sparse)."""
        values: list[int] | list[float] = self._numpy.ravel().tolist()
        return values

    @property
    def is_sparse(self) -> bool:
        """True for a sparse CSR tensor."""
        return self.sparse_crow_indices is not None

    def __repr__(self) -> str:
        text = np.array2string(self._numpy.ravel(), threshold=8, separator=", ")
        sparse = ", sparse_csr=True" if self.is_sparse else ""
        return f"TensorData(data={text}, dtype={self.dtype!r}, shape={self.shape!r}{sparse})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Slots + frozen: rebuild through __init__, shipping the array, not a list.
        return (
            TensorData,
            (
                self._numpy,
                self.dtype,
                self.shape,
                self.sparse_crow_indices,
                self.sparse_col_indices,
            ),
        )

    # --- numpy ---------------------------------------------------------------------

    @classmethod
    def from_numpy(cls, array: npt.NDArray[Any]) -> TensorData:
        """A dense tensor from a numpy array (floats -> float32, integers -> int64).

        The array is kept, not copied, when it already is a writeable float32 / int64
        array (as in the official SDK).
        """
        if not isinstance(array, np.ndarray):
            return cls(data=array, dtype=tensor_dtype_of(np.asarray(array).dtype))
        dtype = tensor_dtype_of(array.dtype)
        # The checks __init__ would make are known to pass here; this runs per datum.
        arr = _as_array(array, _NP_DTYPES[dtype])
        self = object.__new__(cls)
        set_ = object.__setattr__
        set_(self, "_numpy", arr)
        set_(self, "dtype", dtype)
        set_(self, "shape", list(arr.shape))
        set_(self, "sparse_crow_indices", None)
        set_(self, "sparse_col_indices", None)
        return self

    @classmethod
    def from_numpy_sparse(cls, array: npt.NDArray[Any], pad_value: int = 0) -> TensorData:
        """A CSR tensor from a dense 2-D array, leaving out entries equal to ``pad_value``.

        Falls back to dense when the array is not 2-D or CSR would not be smaller
        (the SDK's rule: CSR only if ``(nrows + 1) + 2 * nnz < nrows * ncols``).
        """
        pad_value = _check_pad_value(pad_value)
        if array.ndim != 2:
            return cls.from_numpy(array)
        nrows, ncols = array.shape
        mask = array != pad_value
        nnz = int(np.count_nonzero(mask))
        if (nrows + 1) + 2 * nnz >= nrows * ncols:
            return cls.from_numpy(array)
        rows, cols = np.nonzero(mask)
        crow = np.zeros(nrows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=nrows), out=crow[1:])
        return cls(
            data=array[rows, cols],
            dtype=tensor_dtype_of(array.dtype),
            shape=[nrows, ncols],
            sparse_crow_indices=crow.tolist(),
            sparse_col_indices=cols.tolist(),
        )

    def to_numpy(self, pad_value: int = 0) -> npt.NDArray[Any]:
        """The tensor as a numpy array (no copy when dense; CSR densified with ``pad_value``)."""
        if self.sparse_crow_indices is None:
            return self._numpy
        return self._densify(_check_pad_value(pad_value))

    def tolist(self, pad_value: int = 0) -> list[Any]:
        """The tensor as nested Python lists."""
        result: list[Any] = self.to_numpy(pad_value).tolist()
        return result

    def _densify(self, pad_value: int) -> npt.NDArray[Any]:
        shape = self.shape or []
        crow = np.asarray(self.sparse_crow_indices, dtype=np.int64)
        col = np.asarray(self.sparse_col_indices, dtype=np.int64)
        values = self._numpy.ravel()
        problem = None
        if len(shape) != 2:
            problem = f"shape must be 2-D, got {shape}"
        elif len(crow) != shape[0] + 1:
            problem = (
                f"sparse_crow_indices has {len(crow)} entries, expected nrows + 1 = {shape[0] + 1}"
            )
        elif crow[0] != 0 or np.any(np.diff(crow) < 0) or crow[-1] != len(col):
            problem = "sparse_crow_indices must start at 0, not decrease, and end at nnz"
        elif len(col) != len(values):
            problem = f"{len(col)} column indices for {len(values)} values"
        elif len(col) and (col.min() < 0 or col.max() >= shape[1]):
            problem = f"column index out of range for {shape[1]} columns"
        if problem is not None:
            raise ValueError(f"Invalid sparse CSR TensorData: {problem}")
        out = np.full(shape, pad_value, dtype=self._numpy.dtype)
        rows = np.repeat(np.arange(shape[0]), np.diff(crow))
        out[rows, col] = values
        return out

    # --- torch (optional) ----------------------------------------------------------

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> TensorData:
        """A dense tensor from a torch tensor (bfloat16 and other floats -> float32)."""
        torch_mod = import_torch()
        t = tensor.detach().cpu()
        if t.is_floating_point() and t.dtype != torch_mod.float32:
            t = t.float()  # numpy has no bfloat16; every float is float32 on the wire
        return cls.from_numpy(t.contiguous().numpy())

    @classmethod
    def from_torch_sparse(cls, tensor: torch.Tensor, pad_value: int = 0) -> TensorData:
        """A CSR tensor from a dense 2-D torch tensor (see :meth:`from_numpy_sparse`)."""
        dense = cls.from_torch(tensor)
        return cls.from_numpy_sparse(dense.to_numpy(), pad_value)

    def to_torch(self, pad_value: int = 0) -> torch.Tensor:
        """The tensor as a torch tensor (CSR densified with ``pad_value``)."""
        torch_mod = import_torch()
        return torch_mod.from_numpy(self.to_numpy(pad_value))


def _int_list(values: Sequence[int] | None) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, np.ndarray):
        result: list[int] = values.astype(np.int64).tolist()
        return result
    return [int(v) for v in values]


class TensorDataWire(WireModel, kw_only=True, frozen=True):
    """The JSON form of :class:`TensorData` (``{"data", "dtype", "shape"?, ...}``).

    Used where a tensor sits inside a JSON request (``SampleRequest.target_prompt_logprobs``,
    JSON forward_backward bodies). ``data`` may hold ``null`` for a NaN float.
    """

    data: list[int | float | None]
    dtype: TensorDtype
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None

    @classmethod
    def from_tensor_data(cls, td: TensorData) -> TensorDataWire:
        """The wire form of a :class:`TensorData`."""
        return cls(
            data=td.data,  # type: ignore[arg-type]
            dtype=td.dtype,
            shape=td.shape,
            sparse_crow_indices=td.sparse_crow_indices,
            sparse_col_indices=td.sparse_col_indices,
        )

    def to_tensor_data(self) -> TensorData:
        """The :class:`TensorData` this wire form describes."""
        return TensorData(
            data=self.data,  # type: ignore[arg-type]
            dtype=self.dtype,
            shape=self.shape,
            sparse_crow_indices=self.sparse_crow_indices,
            sparse_col_indices=self.sparse_col_indices,
        )
