"""Tokenizers for ``get_tokenizer()``: the byte tokenizer, or Hugging Face.

The byte tokenizer (the embedded server's model) needs nothing extra. Other models load
with ``transformers`` (an optional extra), by the official SDK's rules
(``_load_tokenizer_from_model_info``): an explicit ``tokenizer_id`` is used as given (a
Hugging Face repo or a local directory, as self-hosted servers report); without one, the
model name's ``:suffix`` is dropped, Llama 3 names use an ungated copy, and a name of the
form ``org/model/variant`` uses ``org/model``.
"""

from __future__ import annotations

import functools
from typing import Any

from . import types as t
from .errors import TinkerError

__all__ = ["TokenizerLoadError", "load_tokenizer", "tokenizer_for_model", "tokenizer_id_for"]

BYTE_TOKENIZER_IDS = ("tinker_async/byte", "byte")
_LLAMA3 = "thinkingmachineslabinc/meta-llama-3-instruct-tokenizer"
#: pinned remote-code revisions, as the official SDK pins them
_REMOTE_CODE: dict[str, tuple[str, str]] = {
    "moonshotai/Kimi-K2-Thinking": ("moonshotai/Kimi-K2-Thinking",
                                    "612681931a8c906ddb349f8ad0f582cb552189cd"),
    "moonshotai/Kimi-K2.5-Text-Only": ("moonshotai/Kimi-K2.5",
                                       "4d01dfe0332d63057c186e0b262165819efb6611"),
    "moonshotai/Kimi-K2.5": ("moonshotai/Kimi-K2.5", "4d01dfe0332d63057c186e0b262165819efb6611"),
    "moonshotai/Kimi-K2.6": ("moonshotai/Kimi-K2.6", "b5aabbfb20227ed42becbf5541dbffd213942c58"),
}


class TokenizerLoadError(TinkerError, ValueError):
    """The model's tokenizer could not be loaded (the message says which and why)."""


def tokenizer_id_for(model_name: str, tokenizer_id: str | None) -> str:
    """Which tokenizer to load, by the official SDK's rules."""
    if tokenizer_id:
        return tokenizer_id
    name = model_name.split(":", 1)[0]
    if name.startswith("meta-llama/Llama-3"):
        return _LLAMA3
    if name.count("/") == 2:
        org, model, _variant = name.split("/", 2)
        return f"{org}/{model}"
    return name


def load_tokenizer(info: t.GetInfoResponse) -> Any:
    """The tokenizer of a training run, from its ``get_info`` answer."""
    data = info.model_data
    model = (data.model_name if data is not None else None) or info.model_name or ""
    return tokenizer_for_model(tokenizer_id_for(model, data.tokenizer_id if data else None))


@functools.lru_cache(maxsize=32)
def tokenizer_for_model(tokenizer_id: str) -> Any:
    """The tokenizer for a tokenizer id (see :func:`tokenizer_id_for`)."""
    if tokenizer_id in BYTE_TOKENIZER_IDS or tokenizer_id.startswith("local/"):
        from ._byte_tokenizer import ByteTokenizer

        return ByteTokenizer()
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ImportError(
            f"The tokenizer {tokenizer_id!r} needs transformers: "
            "pip install 'tinker-async[transformers]'"
        ) from None
    repo, kwargs = tokenizer_id, {}
    if tokenizer_id in _REMOTE_CODE:
        repo, revision = _REMOTE_CODE[tokenizer_id]
        kwargs = {"trust_remote_code": True, "revision": revision}
    try:
        return AutoTokenizer.from_pretrained(repo, use_fast=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise TokenizerLoadError(
            f"Could not load the tokenizer {repo!r} (from the server's get_info): {exc}"
        ) from exc
