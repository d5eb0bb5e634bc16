"""Alias of ``tinker.types.tensor_data`` (code imports ``TensorData`` from there)."""

from ._tensor import TensorData as TensorData
from ._tensor import TensorDtype as TensorDtype

__all__ = ["TensorData", "TensorDtype"]
