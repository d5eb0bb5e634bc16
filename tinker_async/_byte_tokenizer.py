"""Byte-level tokenizer for the embedded model, with a Hugging Face-like surface.

Vocabulary (``VOCAB_SIZE == 263``):

=========  ==================  ==================================================
id         token               meaning
=========  ==================  ==================================================
0..255     the byte itself     every UTF-8 byte is one token
256        ``<|bos|>``         beginning of sequence (``bos_token_id``)
257        ``<|eos|>``         end of sequence / end of turn (``eos_token_id``)
258        ``<|pad|>``         padding (``pad_token_id``); never predicted on purpose
259        ``<|system|>``      chat role marker
260        ``<|user|>``        chat role marker
261        ``<|assistant|>``   chat role marker
262        ``<|tool|>``        chat role marker
=========  ==================  ==================================================

Chat template (``apply_chat_template``)::

    <|bos|><|system|>You are terse.<|eos|><|user|>Hi<|eos|><|assistant|>Hello<|eos|>

Each message is its role marker, its text, then ``<|eos|>``; the whole conversation starts
with ``<|bos|>``. ``add_generation_prompt=True`` appends ``<|assistant|>`` so that sampling
continues with the assistant's reply and stops at ``<|eos|>`` (the default stop).

Like Hugging Face tokenizers, ``encode`` recognises the literal text of a special token
(``"<|eos|>"``) and maps it to its id, so ``encode(apply_chat_template(m, tokenize=False),
add_special_tokens=False) == apply_chat_template(m)``. Pure Python, no dependencies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ASSISTANT_ID",
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "ROLE_IDS",
    "SPECIAL_TOKENS",
    "SYSTEM_ID",
    "TOOL_ID",
    "USER_ID",
    "VOCAB_SIZE",
    "ByteTokenizer",
]

BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
SYSTEM_ID = 259
USER_ID = 260
ASSISTANT_ID = 261
TOOL_ID = 262
VOCAB_SIZE = 263

SPECIAL_TOKENS: dict[int, str] = {
    BOS_ID: "<|bos|>",
    EOS_ID: "<|eos|>",
    PAD_ID: "<|pad|>",
    SYSTEM_ID: "<|system|>",
    USER_ID: "<|user|>",
    ASSISTANT_ID: "<|assistant|>",
    TOOL_ID: "<|tool|>",
}
ROLE_IDS: dict[str, int] = {
    "system": SYSTEM_ID,
    "user": USER_ID,
    "assistant": ASSISTANT_ID,
    "tool": TOOL_ID,
}

_SPECIAL_BY_TEXT = {text: tid for tid, text in SPECIAL_TOKENS.items()}
# One alternation of every special token's literal text; longest first so that no token
# can shadow a longer one that starts with the same characters.
_SPECIAL_RE = re.compile(
    "(" + "|".join(re.escape(t) for t in sorted(_SPECIAL_BY_TEXT, key=len, reverse=True)) + ")"
)


class ByteTokenizer:
    """UTF-8 bytes plus seven special tokens; see the module docstring for the ids."""

    name_or_path = "tinker-local/byte-tokenizer"
    vocab_size = VOCAB_SIZE
    bos_token_id = BOS_ID
    eos_token_id = EOS_ID
    pad_token_id = PAD_ID
    bos_token = SPECIAL_TOKENS[BOS_ID]
    eos_token = SPECIAL_TOKENS[EOS_ID]
    pad_token = SPECIAL_TOKENS[PAD_ID]
    padding_side = "right"
    model_max_length = 2048

    def __len__(self) -> int:
        return VOCAB_SIZE

    def __repr__(self) -> str:
        return f"ByteTokenizer(name_or_path={self.name_or_path!r}, vocab_size={VOCAB_SIZE})"

    @property
    def all_special_ids(self) -> list[int]:
        return list(SPECIAL_TOKENS)

    @property
    def all_special_tokens(self) -> list[str]:
        return list(SPECIAL_TOKENS.values())

    # --- encoding ------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` prepends ``<|bos|>`` (Llama-style).

        Literal special-token text inside ``text`` becomes the special id, like Hugging Face
        added tokens; everything else becomes its UTF-8 bytes.
        """
        ids = [BOS_ID] if add_special_tokens else []
        for piece in _SPECIAL_RE.split(text):
            if not piece:
                continue
            special = _SPECIAL_BY_TEXT.get(piece)
            if special is not None:
                ids.append(special)
            else:
                ids.extend(piece.encode("utf-8"))
        return ids

    def __call__(
        self, text: str | Sequence[str], add_special_tokens: bool = True, **_: Any
    ) -> dict[str, Any]:
        """``{"input_ids": ..., "attention_mask": ...}`` for one text or a list of texts."""
        if isinstance(text, str):
            ids = self.encode(text, add_special_tokens=add_special_tokens)
            return {"input_ids": ids, "attention_mask": [1] * len(ids)}
        batch = [self.encode(t, add_special_tokens=add_special_tokens) for t in text]
        return {"input_ids": batch, "attention_mask": [[1] * len(ids) for ids in batch]}

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id of a special token's text or of a one-byte string (list in, list out)."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """Text of each id; a byte that is not valid UTF-8 alone decodes as U+FFFD."""
        if isinstance(ids, int):
            return self.decode([ids])
        return [self.decode([i]) for i in ids]

    def get_vocab(self) -> dict[str, int]:
        """Special-token texts and the printable one-byte tokens (bytes 0x80.. collide)."""
        vocab = {chr(b): b for b in range(128)}
        vocab.update(_SPECIAL_BY_TEXT)
        return vocab

    # --- decoding ------------------------------------------------------------------------

    def decode(self, ids: Iterable[int] | int, skip_special_tokens: bool = False, **_: Any) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD; specials as text unless skipped."""
        if isinstance(ids, int):
            ids = [ids]
        parts: list[str] = []
        run = bytearray()
        for raw in ids:
            tid = int(raw)
            if 0 <= tid < 256:
                run.append(tid)
                continue
            if tid not in SPECIAL_TOKENS:
                raise ValueError(f"token id {tid} is outside the vocabulary [0, {VOCAB_SIZE})")
            # Flush the pending bytes together so multi-byte characters decode whole.
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            if not skip_special_tokens:
                parts.append(SPECIAL_TOKENS[tid])
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def batch_decode(
        self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = False, **_: Any
    ) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    # --- chat ----------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        **_: Any,
    ) -> list[int] | str:
        """Render ``messages`` with the template in the module docstring.

        ``content`` may be a string or a list of ``{"type": "text", "text": ...}`` parts;
        other part types are rejected. Unknown roles raise ``ValueError``.
        """
        out = [self.bos_token]
        for i, message in enumerate(messages):
            role = message.get("role")
            if role not in ROLE_IDS:
                raise ValueError(
                    f"message {i}: unknown role {role!r}; the template knows {sorted(ROLE_IDS)}"
                )
            out.append(SPECIAL_TOKENS[ROLE_IDS[role]])
            out.append(_content_text(message.get("content", ""), i))
            out.append(self.eos_token)
        if add_generation_prompt:
            out.append(SPECIAL_TOKENS[ASSISTANT_ID])
        text = "".join(out)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _token_to_id(self, token: str) -> int:
        special = _SPECIAL_BY_TEXT.get(token)
        if special is not None:
            return special
        data = token.encode("utf-8")
        if len(data) != 1:
            raise ValueError(f"{token!r} is not a single token of this byte tokenizer")
        return data[0]


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise ValueError(f"message {index}: only text content parts are supported")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise ValueError(f"message {index}: content must be a string or a list of text parts")
