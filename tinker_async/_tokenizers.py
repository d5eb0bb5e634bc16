"""Tokenizers for ``get_tokenizer()``: the embedded server's byte tokenizer, or Hugging Face.

The byte tokenizer needs nothing extra. Other models load with ``transformers`` (an
optional extra), following the official SDK's naming rules (§6.6 of the reference).
"""

from __future__ import annotations

import functools
from typing import Any

from . import types as t

__all__ = ["load_tokenizer", "tokenizer_for_model"]

BYTE_TOKENIZER_IDS = ("tinker_async/byte", "byte")


def load_tokenizer(info: t.GetInfoResponse) -> Any:
    """The tokenizer of a training run, from its ``get_info`` answer."""
    data = info.model_data
    tokenizer_id = (data.tokenizer_id if data is not None else None) or ""
    model = (data.model_name if data is not None else None) or info.model_name or ""
    return tokenizer_for_model(tokenizer_id.split(":", 1)[0] or model)


@functools.lru_cache(maxsize=32)
def tokenizer_for_model(name: str) -> Any:
    """The tokenizer for a model name or tokenizer id."""
    if name in BYTE_TOKENIZER_IDS or name.startswith("local/"):
        from ._byte_tokenizer import ByteTokenizer

        return ByteTokenizer()
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ImportError(
            f"The tokenizer of {name!r} needs transformers: pip install 'tinker-async[transformers]'"
        ) from None
    repo = name.split(":", 1)[0]
    if repo.startswith("meta-llama/Llama-3"):
        repo = "thinkingmachineslabinc/meta-llama-3-instruct-tokenizer"
    parts = repo.split("/")
    if len(parts) > 2:
        repo = "/".join(parts[:2])
    return AutoTokenizer.from_pretrained(repo, use_fast=True)
