"""Token-choice maths for the embedded model's decoder, batched over rows.

Pure numpy, no model: the decode loop in ``_model.py`` calls these once per step for every
live sequence of every request in the batch, each row with its own temperature, top-k,
top-p and stop set.

Semantics (the official ``SamplingParams``):

- ``temperature == 0`` is greedy (argmax of the raw logits). Otherwise the distribution is
  ``softmax(logits / temperature)``.
- ``top_k <= 0`` (the official default is ``-1``) means no limit; otherwise only the
  ``top_k`` most likely tokens may be drawn.
- ``top_p`` keeps the smallest set of most likely tokens whose mass reaches ``top_p``
  (the most likely token is always kept).
- The reported log-probability of a drawn token is its log-probability under
  ``softmax(logits / temperature)`` (``temperature`` 1 when greedy) *before* the top-k /
  top-p truncation, so at ``temperature=1`` it is exactly what ``forward`` computes.
- Stops: ``None`` stops at EOS; ``[]`` disables every stop, EOS included; a non-empty list
  of strings, token ids or token sequences stops at any of them *and* at EOS (like vLLM's
  ``ignore_eos=False``). The matched stop tokens stay in the output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MASK_LOGPROB",
    "StopSeqs",
    "choose_tokens",
    "log_softmax",
    "normalize_stop",
    "top_k_rows",
]

FloatArray = NDArray[np.floating[Any]]
IntArray = NDArray[np.integer[Any]]
StopSeqs = tuple[tuple[int, ...], ...]

MASK_LOGPROB = -99999.0
"""Log-probability of an empty top-k cell (the official ``TopkLogprobs`` sentinel)."""


def normalize_stop(
    stop: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | None,
    encode: Callable[[str], list[int]],
    eos_id: int,
) -> StopSeqs:
    """Turn any official ``stop`` form into token sequences (EOS added unless ``[]``)."""
    if stop is None:
        return ((eos_id,),)
    if isinstance(stop, str):
        stop = [stop]
    seqs: list[tuple[int, ...]] = []
    for item in stop:
        if isinstance(item, str):
            if not item:
                raise ValueError("stop strings must not be empty")
            seqs.append(tuple(encode(item)))
        elif isinstance(item, (int, np.integer)):
            seqs.append((int(item),))
        else:
            seq = tuple(int(t) for t in item)
            if not seq:
                raise ValueError("stop token sequences must not be empty")
            seqs.append(seq)
    if seqs and (eos_id,) not in seqs:
        seqs.append((eos_id,))
    return tuple(dict.fromkeys(seqs))  # drop duplicates, keep order


def log_softmax(logits: FloatArray) -> FloatArray:
    """Row-wise ``logits - logsumexp(logits)``, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def choose_tokens(
    logits: FloatArray,
    temperature: FloatArray,
    top_k: IntArray,
    top_p: FloatArray,
    uniforms: FloatArray,
) -> tuple[NDArray[np.int64], FloatArray]:
    """Draw one token per row; return the tokens and the rows' reported log-distributions.

    ``uniforms`` (one U[0, 1) draw per row) drive the inverse-CDF draw, so a caller that
    fixes them fixes the result whatever else is in the batch.
    """
    scale = np.where(temperature > 0, temperature, 1.0).astype(logits.dtype)
    logp = log_softmax(logits / scale[:, None])
    probs = np.exp(logp)
    vocab = logits.shape[1]
    limited = ((top_k > 0) & (top_k < vocab)) | (top_p < 1.0)
    tokens = _inverse_cdf(probs, uniforms)
    rows = np.flatnonzero(limited & (temperature > 0))
    if rows.size:
        tokens[rows] = _truncated_draw(probs[rows], top_k[rows], top_p[rows], uniforms[rows])
    greedy = np.flatnonzero(temperature <= 0)
    if greedy.size:
        tokens[greedy] = np.argmax(logits[greedy], axis=1)
    return tokens, logp


def top_k_rows(logp: FloatArray, k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """The ``k`` largest entries of each row, best first; cells past the vocab get the
    sentinel ``(0, MASK_LOGPROB)``."""
    rows, vocab = logp.shape
    ids = np.zeros((rows, k), dtype=np.int32)
    vals = np.full((rows, k), MASK_LOGPROB, dtype=np.float32)
    kk = min(k, vocab)
    if kk == 0 or rows == 0:
        return ids, vals
    part = np.argpartition(-logp, kk - 1, axis=1)[:, :kk] if kk < vocab else None
    cand = part if part is not None else np.broadcast_to(np.arange(vocab), (rows, vocab))
    cand_vals = np.take_along_axis(logp, cand, axis=1)
    order = np.argsort(-cand_vals, axis=1, kind="stable")
    ids[:, :kk] = np.take_along_axis(cand, order, axis=1)
    vals[:, :kk] = np.take_along_axis(cand_vals, order, axis=1)
    return ids, vals


def _inverse_cdf(probs: FloatArray, uniforms: FloatArray) -> NDArray[np.int64]:
    cdf = np.cumsum(probs, axis=1, dtype=np.float64)
    # Scale u by each row's total so float rounding in the cumsum cannot skip the last token.
    targets = uniforms[:, None] * cdf[:, -1:]
    idx = (cdf <= targets).sum(axis=1)
    out: NDArray[np.int64] = np.minimum(idx, probs.shape[1] - 1).astype(np.int64)
    return out


def _truncated_draw(
    probs: FloatArray, top_k: IntArray, top_p: FloatArray, uniforms: FloatArray
) -> NDArray[np.int64]:
    """Inverse-CDF draw restricted to each row's top-k / top-p set (sorted once per row)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=1)
    rank = np.arange(probs.shape[1])[None, :]
    k = np.where(top_k > 0, top_k, probs.shape[1])[:, None]
    mass_before = np.cumsum(sorted_p, axis=1) - sorted_p
    keep = (rank < k) & (mass_before < top_p[:, None])
    keep[:, 0] = True
    picked = _inverse_cdf(np.where(keep, sorted_p, 0.0), uniforms)
    return np.take_along_axis(order, picked[:, None], axis=1)[:, 0].astype(np.int64)
