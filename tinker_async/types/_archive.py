"""The checkpoint archive URL of the API before SDK 0.38."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from ._base import Model

__all__ = ["CheckpointArchiveUrlResponse"]


class CheckpointArchiveUrlResponse(Model, kw_only=True, frozen=True):
    """A signed URL of a checkpoint's tar archive, and when it stops working."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    url: str
    """Signed URL to download the checkpoint archive (no credential needed)."""
    expires: datetime
    """When the signed URL expires (UTC)."""

    @property
    def expires_at(self) -> datetime:
        """Same as ``expires`` (the name some older examples use)."""
        return self.expires
