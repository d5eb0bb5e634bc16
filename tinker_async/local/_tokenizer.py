"""The embedded model's tokenizer: the library's byte tokenizer (``tinker_async._byte_tokenizer``).

It lives in the library, because ``get_tokenizer()`` hands it to users of any server that
runs the byte model; the server imports it from there (never the other way round).
"""

from __future__ import annotations

from .._byte_tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    ByteTokenizer,
)

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "SPECIAL_TOKENS", "VOCAB_SIZE", "ByteTokenizer"]
