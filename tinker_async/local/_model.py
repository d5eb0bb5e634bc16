"""A small byte-level language model in numpy, with per-run LoRA adapters.

This is the compute behind the embedded Tinker-compatible server. It really learns (SFT
loss falls, RL reward rises) and is fast enough on two CPU cores for examples, tests and
benchmarks. Everything is vectorised over all positions of all sequences; the only Python
loop over tokens is the batched autoregressive decoder.

Architecture (sizes are the ``ModelConfig`` defaults)
-----------------------------------------------------
Tokens are bytes plus specials (``_tokenizer``: ``V = 263``; BOS 256, EOS 257, PAD 258).
For position ``t`` of a sequence ``x``:

- ``u_t = concat(E[x_t], E[x_{t-1}], ..., E[x_{t-K+1}])``: the embeddings (``E: V x d``,
  ``d = 32``) of the last ``K = 8`` tokens; positions before the start embed as zeros.
  ``u_t`` (``K d = 256`` wide) is the model's local, n-gram view.
- One causal attention head (``d_a = 64``) that can copy from anywhere in the context:
  ``q_t = u_t Wq``, ``k_s = u_{s-1} Wk``, ``v_s = u_s Wv``. The key of position ``s`` is the
  window *before* ``x_s`` and its value the window *ending at* ``x_s``, so "the current
  context looks like the one before s" retrieves what came at s: an induction head in one
  layer. ``a_t = softmax_{s<=t}(q_t . k_s / sqrt(d_a)) v``.
- An MLP head: ``h_t = gelu(u_t W_in + a_t Wo + b_in)`` (``H = 512``; the sigmoid form of
  GELU, ``x sigmoid(1.702 x)``, a quarter of the tanh form's cost), then
  ``logits_t = h_t W_out + b_out``.

0.36 M base parameters. Measured on 2 busy cores with one BLAS thread: ``forward_backward``
on 8 x 64 tokens ~23 ms, ``optim_step`` (rank 8) ~0.3 ms, 64 samples x 16 tokens ~25 ms
(64 one-sample requests in one ``sample_many``: ~35 ms, against ~500 ms one by one).

LoRA mapping (``LoraConfig`` flags -> matrices): ``train_attn`` -> ``Wq, Wk, Wv, Wo``;
``train_mlp`` -> ``W_in``; ``train_unembed`` -> ``W_out``. Each adapted ``W`` (``n x m``)
becomes ``W + (alpha / rank) * A B`` with ``A: n x rank`` drawn from
``N(0, 1/n)`` with the adapter's seed and ``B: rank x m`` zero, so a new adapter computes
exactly the base model. The embedding and the biases are never adapted. Base weights are
frozen; only ``A`` and ``B`` train.

Base weights: a tiny pretrained set (``byte_lm.npz`` next to this file, made by
``scripts/train_base_model.py`` on public-domain text) when present, so samples look like
English; otherwise random weights from ``seed``. Model names ending in ``-random`` always
use the seeded random weights.

API (what the server calls)
---------------------------
::

    base = BaseModel.create(name="local/byte-lm", seed=0, zero_compute=False)
    base.vocab_size, base.max_context, base.tokenizer, base.name, base.pretrained

    adapter = Adapter.new(base, rank=8, seed=None, train_mlp=True, train_attn=True,
                          train_unembed=True)

    data = [ModelDatum(tokens=[...], loss_fn_inputs={"target_tokens": [...], ...}), ...]
    forward(base, adapter_or_None, data) -> list[float32 array (T,) or (T, K)]
    forward_backward(adapter, data, loss_fn, loss_fn_config=None, backward=True)
        -> ForwardBackwardResult(loss_fn_outputs=[{"logprobs": ...}, ...],
                                 metrics={"loss:sum": ...})
    optim_step(adapter, {"learning_rate": ..., "beta1": ..., "beta2": ..., "eps": ...,
                         "weight_decay": ..., "grad_clip_norm": ...})
        -> {"grad_norm:mean": ..., "learning_rate:mean": ...}
    sample(base, adapter_or_None, prompt_tokens, num_samples=1, max_tokens=None,
           temperature=1.0, top_p=1.0, top_k=-1, stop=None, seed=None,
           include_prompt_logprobs=False, topk_prompt_logprobs=0, topk_sample_logprobs=0,
           **other SampleRequest fields) -> SampleResult
    sample_many(base, [SampleRequest(prompt_tokens, ..., adapter=...), ...])
        -> list[SampleResult]        # all requests decoded together, one step per token
    SampleResult(sequences=[SampledSequence(tokens, logprobs, stop_reason,
                                            topk_token_ids, topk_logprobs)],
                 prompt_logprobs, topk_prompt_token_ids, topk_prompt_logprobs,
                 target_prompt_logprobs, prompt_alt_tokens, prompt_alt_logprobs)
    save_state(adapter, include_optimizer=True) -> bytes                 # npz
    load_state(base, data, include_optimizer=True) -> Adapter
    checkpoint_info(data) -> dict                                         # rank, flags, ...
    set_blas_threads(1)              # once, at server start (see its docstring)

Conventions: a datum's ``tokens`` are the model input and ``target_tokens[t]`` is scored
given ``tokens[:t+1]`` (next-token prediction), as in Tinker. Losses are sums (see
``_losses``). ``forward_backward`` *adds* to the adapter's gradients and ``optim_step``
applies AdamW and zeroes them. Bad input raises ``ValueError`` (``UnsupportedLossError``
for an unknown loss) with a message naming the datum, the loss and the key.

Threads: a ``BaseModel`` is read-only after creation and can be shared; an ``Adapter`` must
not be used by two calls at once (the server serialises each training run). numpy's BLAS
releases the GIL, so running these calls in a worker thread keeps an event loop free.

Zero-compute mode (``BaseModel.create(..., zero_compute=True)``): every call returns at
once with well-formed results: logprobs are ``-log(V)``, losses are evaluated on them,
gradients stay zero, and each sample is ``max_tokens`` letters ``a, b, c, ...`` (shifted by
the sample index) with ``stop_reason="length"``.
"""

from __future__ import annotations

import ctypes
import io
import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from . import _losses, _sampler
from ._losses import SUPPORTED_LOSSES, UnsupportedLossError
from ._sampler import MASK_LOGPROB
from ._tokenizer import EOS_ID, VOCAB_SIZE, ByteTokenizer

__all__ = [
    "DEFAULT_MODEL_NAME",
    "LORA_TARGETS",
    "MASK_LOGPROB",
    "SUPPORTED_LOSSES",
    "Adapter",
    "BaseModel",
    "ForwardBackwardResult",
    "ModelConfig",
    "ModelDatum",
    "SampleRequest",
    "SampleResult",
    "SampledSequence",
    "UnsupportedLossError",
    "checkpoint_info",
    "forward",
    "forward_backward",
    "load_state",
    "optim_step",
    "sample",
    "sample_many",
    "save_state",
    "set_blas_threads",
]

FloatArray = NDArray[np.floating[Any]]
IntArray = NDArray[np.integer[Any]]

DEFAULT_MODEL_NAME = "local/byte-lm"
PRETRAINED_PATH = Path(__file__).with_name("byte_lm.npz")

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "train_attn": ("wq", "wk", "wv", "wo"),
    "train_mlp": ("w_in",),
    "train_unembed": ("w_out",),
}
"""Which base matrices each ``LoraConfig`` flag adapts."""

_CHECKPOINT_FORMAT = "tinker-local-lora"
_CHECKPOINT_VERSION = 1
_ATTN_BUDGET = 4_000_000  # max score-matrix cells per attention group (16 MB in float32)
_ADAM_KEYS = frozenset(
    {"learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm", "type"}
)


def set_blas_threads(count: int) -> int | None:
    """Set OpenBLAS's thread count (process-wide); return the old count, or ``None`` when
    numpy is not linked to a findable OpenBLAS (then nothing changes).

    Why: this model's matrices are small, and on a 2-core laptop OpenBLAS's worker threads
    cost more than they save; when other processes compete for the cores they spin-wait
    and a training step becomes 5-7x slower (measured). The server calls
    ``set_blas_threads(1)`` once at start; a library should not do it on import.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so[\w.]*)", maps))):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if getter is not None and setter is not None:
                    previous = int(getter())
                    setter(int(count))
                    return previous
    return None


# --------------------------------------------------------------------------------------
# Configuration and weights
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the network (see the module docstring) and its compute dtype."""

    vocab_size: int = VOCAB_SIZE
    d_embed: int = 32
    window: int = 8
    d_attn: int = 64
    d_hidden: int = 512
    max_context: int = 2048
    lora_alpha: float = 32.0
    dtype: str = "float32"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every base weight, by name."""
        kd = self.window * self.d_embed
        return {
            "embed": (self.vocab_size, self.d_embed),
            "wq": (kd, self.d_attn),
            "wk": (kd, self.d_attn),
            "wv": (kd, self.d_attn),
            "wo": (self.d_attn, self.d_hidden),
            "w_in": (kd, self.d_hidden),
            "b_in": (self.d_hidden,),
            "w_out": (self.d_hidden, self.vocab_size),
            "b_out": (self.vocab_size,),
        }

    def same_network(self, other: ModelConfig) -> bool:
        """True when the two configs have the same weight shapes (dtype may differ)."""
        return self.shapes() == other.shapes()


def random_weights(config: ModelConfig, seed: int) -> dict[str, FloatArray]:
    """Base weights drawn from ``seed``: unit-variance pre-activations, small logits."""
    rng = np.random.default_rng(seed)
    weights: dict[str, FloatArray] = {}
    for name, shape in config.shapes().items():
        if name.startswith("b_"):
            weights[name] = np.zeros(shape)
        elif name == "embed":
            weights[name] = rng.standard_normal(shape)
        else:
            weights[name] = rng.standard_normal(shape) / math.sqrt(shape[0])
    return {k: v.astype(config.dtype) for k, v in weights.items()}


class BaseModel:
    """Frozen base weights, the tokenizer and the config. Create with ``create``."""

    def __init__(
        self,
        name: str,
        config: ModelConfig,
        weights: Mapping[str, FloatArray],
        *,
        zero_compute: bool = False,
        pretrained: bool = False,
    ) -> None:
        shapes = config.shapes()
        if set(weights) != set(shapes):
            raise ValueError(f"weights must have exactly the keys {sorted(shapes)}")
        for key, shape in shapes.items():
            if weights[key].shape != shape:
                raise ValueError(f"weight {key} has shape {weights[key].shape}, want {shape}")
        self.name = name
        self.config = config
        self.zero_compute = zero_compute
        self.pretrained = pretrained
        self.tokenizer = ByteTokenizer()
        self.dtype = np.dtype(config.dtype)
        self.weights = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in weights.items()}
        # One extra all-zero row: the embedding of "before the start of the sequence". The
        # public "embed" weight is a view into it, so in-place updates reach both.
        self.embed_ext = np.vstack(
            [self.weights["embed"], np.zeros((1, config.d_embed), dtype=self.dtype)]
        )
        self.weights["embed"] = self.embed_ext[:-1]
        self.none_id = config.vocab_size

    @classmethod
    def create(
        cls,
        name: str = DEFAULT_MODEL_NAME,
        *,
        seed: int = 0,
        zero_compute: bool = False,
        pretrained: bool | None = None,
        config: ModelConfig | None = None,
        weights_path: str | Path | None = None,
    ) -> BaseModel:
        """The base model called ``name``.

        ``pretrained=None`` means: use the pretrained weights (``weights_path``, default the
        shipped ``byte_lm.npz``) unless ``name`` ends in ``-random`` or the file is missing
        or does not fit ``config``. Otherwise the weights are random from ``seed``.
        """
        config = config or ModelConfig()
        want_pretrained = not name.endswith("-random") if pretrained is None else pretrained
        if want_pretrained and not zero_compute:
            loaded = _load_pretrained(config, Path(weights_path or PRETRAINED_PATH))
            if loaded is not None:
                return cls(name, config, loaded, pretrained=True)
        return cls(name, config, random_weights(config, seed), zero_compute=zero_compute)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_context(self) -> int:
        return self.config.max_context

    def __repr__(self) -> str:
        kind = (
            "zero-compute" if self.zero_compute else "pretrained" if self.pretrained else "random"
        )
        return f"BaseModel(name={self.name!r}, {kind})"


def _load_pretrained(config: ModelConfig, path: Path) -> dict[str, FloatArray] | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(bytes(archive["__config__"]).decode())
        stored = ModelConfig(**{**meta, "dtype": config.dtype})
        if not stored.same_network(config):
            return None
        return {k: archive[k].astype(config.dtype) for k in config.shapes()}


# --------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------


class Adapter:
    """One training run's LoRA factors, accumulated gradients and AdamW state."""

    def __init__(
        self,
        base: BaseModel,
        *,
        rank: int,
        seed: int,
        train_mlp: bool,
        train_attn: bool,
        train_unembed: bool,
        params: dict[str, FloatArray],
    ) -> None:
        self.base = base
        self.rank = rank
        self.seed = seed
        self.train_mlp = train_mlp
        self.train_attn = train_attn
        self.train_unembed = train_unembed
        self.scale = base.config.lora_alpha / rank
        self.params = params
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}
        self.adam_m = {k: np.zeros_like(v) for k, v in params.items()}
        self.adam_v = {k: np.zeros_like(v) for k, v in params.items()}
        self.step = 0
        #: the optimizer family fixed at creation: "adamw", or "dimuon" (adam_m holds its
        #: momentum then)
        self.optimizer = "adamw"
        self.targets = tuple(k[:-2] for k in params if k.endswith(".A"))

    @classmethod
    def new(
        cls,
        base: BaseModel,
        rank: int,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
    ) -> Adapter:
        """A fresh adapter computing exactly the base model (``B = 0``).

        ``seed=None`` draws a seed (kept in ``adapter.seed`` and in checkpoints).
        """
        if not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        flags = {"train_attn": train_attn, "train_mlp": train_mlp, "train_unembed": train_unembed}
        if not any(flags.values()):
            raise ValueError("at least one of train_mlp, train_attn, train_unembed must be true")
        seed = secrets.randbits(63) if seed is None else int(seed)
        rng = np.random.default_rng(seed)
        shapes = base.config.shapes()
        params: dict[str, FloatArray] = {}
        for flag, names in LORA_TARGETS.items():  # fixed order: same seed, same adapter
            if not flags[flag]:
                continue
            for name in names:
                n_in, n_out = shapes[name]
                a = rng.standard_normal((n_in, rank)) / math.sqrt(n_in)
                params[f"{name}.A"] = a.astype(base.dtype)
                params[f"{name}.B"] = np.zeros((rank, n_out), dtype=base.dtype)
        return cls(base, rank=int(rank), seed=seed, params=params, **flags)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0.0)

    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def __repr__(self) -> str:
        return f"Adapter(rank={self.rank}, targets={self.targets}, step={self.step})"


# --------------------------------------------------------------------------------------
# Which adapter serves which row (several training runs can share one sampling batch)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Adapter of every row: ``row_ids[i]`` indexes ``adapters`` (-1 = base only).

    ``row_ids is None`` means every row uses ``adapters[0]`` (or the base, if empty): the
    training case, which then needs no row indexing at all.
    """

    adapters: tuple[Adapter, ...]
    row_ids: NDArray[np.int64] | None = None

    @staticmethod
    def uniform(adapter: Adapter | None) -> _Plan:
        return _Plan(() if adapter is None else (adapter,))

    def subset(self, rows: IntArray) -> _Plan:
        return self if self.row_ids is None else _Plan(self.adapters, self.row_ids[rows])

    def groups(self) -> list[tuple[Adapter, IntArray | None]]:
        if self.row_ids is None:
            return [(a, None) for a in self.adapters]
        out: list[tuple[Adapter, IntArray | None]] = []
        for i, adapter in enumerate(self.adapters):
            rows = np.flatnonzero(self.row_ids == i)
            if rows.size == self.row_ids.size:
                out.append((adapter, None))  # every row: skip the gather/scatter
            elif rows.size:
                out.append((adapter, rows))
        return out


def _lin(base: BaseModel, x: FloatArray, name: str, plan: _Plan) -> FloatArray:
    """``x W + scale * (x A) B`` for each row's adapter (rows without one: ``x W``)."""
    y: FloatArray = x @ base.weights[name]
    for adapter, rows in plan.groups():
        a = adapter.params.get(name + ".A")
        if a is None:
            continue
        b = adapter.params[name + ".B"]
        if rows is None:
            y += ((x @ a) * adapter.scale) @ b
        else:
            y[rows] += ((x[rows] @ a) * adapter.scale) @ b
    return y


def _lin_backward(
    base: BaseModel,
    x: FloatArray,
    dy: FloatArray,
    name: str,
    adapter: Adapter | None,
    base_grads: dict[str, FloatArray] | None,
    need_dx: bool,
) -> FloatArray | None:
    """Backward of ``_lin`` for one adapter: add ``dA``, ``dB`` (and ``dW``) in place.

    With ``y = x W + s (x A) B``: ``dB = s (x A)^T dy``, ``dA = s x^T (dy B^T)``,
    ``dx = dy W^T + s (dy B^T) A^T``.
    """
    dx = dy @ base.weights[name].T if need_dx else None
    a = adapter.params.get(name + ".A") if adapter is not None else None
    if adapter is not None and a is not None:
        b = adapter.params[name + ".B"]
        s = adapter.scale
        dyb = dy @ b.T
        adapter.grads[name + ".B"] += ((x @ a) * s).T @ dy
        adapter.grads[name + ".A"] += x.T @ (dyb * s)
        if dx is not None:
            dx += (dyb * s) @ a.T
    if base_grads is not None:
        base_grads[name] += x.T @ dy
    return dx


# --------------------------------------------------------------------------------------
# The network on packed sequences
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Packed:
    """Sequences laid end to end: row ``n`` is position ``pos[n]`` of sequence ``seq[n]``."""

    tokens: NDArray[np.int64]
    lengths: NDArray[np.int64]
    offsets: NDArray[np.int64]
    pos: NDArray[np.int64]

    @staticmethod
    def of(seqs: Sequence[NDArray[np.int64]]) -> _Packed:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        tokens = np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, np.int64)
        pos = np.arange(tokens.size, dtype=np.int64) - np.repeat(offsets, lengths)
        return _Packed(tokens, lengths, offsets, pos)

    @property
    def size(self) -> int:
        return int(self.tokens.size)


@dataclass
class _Acts:
    """Activations kept for the backward pass (all ``(N, .)`` on packed rows)."""

    win: NDArray[np.int64]
    u: FloatArray
    u_prev: FloatArray
    q: FloatArray
    k: FloatArray
    v: FloatArray
    att: FloatArray
    pre: FloatArray | None = None
    h: FloatArray | None = None
    logits: FloatArray | None = None


def _windows(packed: _Packed, window: int, none_id: int) -> NDArray[np.int64]:
    """``(N, K+1)`` token ids: column ``j`` is the token ``j`` places back (or ``none``)."""
    back = np.arange(window + 1)
    src = np.arange(packed.size)[:, None] - back[None, :]
    inside = packed.pos[:, None] >= back[None, :]
    return np.where(inside, packed.tokens[np.clip(src, 0, None)], none_id)


def _embed(base: BaseModel, win: NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
    """``u`` (window ending here) and ``u_prev`` (window ending one token back)."""
    k = base.config.window
    emb = base.embed_ext[win]  # (N, K+1, d)
    n = win.shape[0]
    return emb[:, :k].reshape(n, -1), emb[:, 1:].reshape(n, -1)


_GELU_K = 1.702  # x * sigmoid(1.702 x) is the sigmoid approximation of GELU


def _sigmoid_k(x: FloatArray) -> FloatArray:
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative x: s = 0
        s: FloatArray = 1.0 / (1.0 + np.exp(-_GELU_K * x))
    return s


def _gelu(x: FloatArray) -> FloatArray:
    """``x * sigmoid(1.702 x)``: GELU's shape at a quarter of the tanh form's cost."""
    return x * _sigmoid_k(x)


def _gelu_grad(x: FloatArray) -> FloatArray:
    """``d/dx [x s(x)] = s (1 + 1.702 x (1 - s))`` with ``s = sigmoid(1.702 x)``."""
    s = _sigmoid_k(x)
    return s * (1.0 + _GELU_K * x * (1.0 - s))


def _attention_groups(lengths: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """Sequences grouped by similar length so that each padded score tensor stays small."""
    order = np.argsort(-lengths, kind="stable")
    groups: list[NDArray[np.int64]] = []
    start = 0
    while start < order.size:
        longest = int(lengths[order[start]])
        size = max(1, _ATTN_BUDGET // max(1, longest * longest))
        groups.append(order[start : start + size])
        start += size
    return groups


def _group_rows(packed: _Packed, group: NDArray[np.int64]) -> tuple[IntArray, NDArray[np.bool_]]:
    """``(G, T)`` packed-row index of each padded cell of the group, and which are real."""
    lengths = packed.lengths[group]
    t = int(lengths.max())
    cols = np.arange(t)
    valid = cols[None, :] < lengths[:, None]
    rows = np.where(valid, packed.offsets[group][:, None] + cols[None, :], 0)
    return rows, valid


def _causal_probs(qp: FloatArray, kp: FloatArray) -> FloatArray:
    """Softmax over ``s <= t`` of ``q_t . k_s / sqrt(d_a)``; padded keys lie in the future."""
    t = qp.shape[1]
    scores = (qp @ kp.transpose(0, 2, 1)) * (1.0 / math.sqrt(qp.shape[2]))
    scores = np.where(np.tri(t, dtype=bool)[None], scores, -np.inf)
    scores -= scores.max(axis=2, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=2, keepdims=True)
    return probs


def _attention(packed: _Packed, q: FloatArray, k: FloatArray, v: FloatArray) -> FloatArray:
    out = np.zeros_like(q)
    for group in _attention_groups(packed.lengths):
        rows, valid = _group_rows(packed, group)
        probs = _causal_probs(q[rows], k[rows])
        out[rows[valid]] = (probs @ v[rows])[valid]
    return out


def _attention_backward(
    packed: _Packed, acts: _Acts, datt: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of ``q, k, v`` from ``d att``; the probabilities are recomputed per group
    (cheaper in memory than keeping every group's ``T x T`` matrix)."""
    dq, dk, dv = np.zeros_like(acts.q), np.zeros_like(acts.k), np.zeros_like(acts.v)
    scale = 1.0 / math.sqrt(acts.q.shape[1])
    for group in _attention_groups(packed.lengths):
        rows, valid = _group_rows(packed, group)
        qp, kp, vp = acts.q[rows], acts.k[rows], acts.v[rows]
        probs = _causal_probs(qp, kp)
        dout = np.where(valid[..., None], datt[rows], 0.0)
        dprobs = dout @ vp.transpose(0, 2, 1)
        dscores = probs * (dprobs - (dprobs * probs).sum(axis=2, keepdims=True)) * scale
        keep = rows[valid]
        dq[keep] = (dscores @ kp)[valid]
        dk[keep] = (dscores.transpose(0, 2, 1) @ qp)[valid]
        dv[keep] = (probs.transpose(0, 2, 1) @ dout)[valid]
    return dq, dk, dv


def _trunk(base: BaseModel, packed: _Packed, plan: _Plan) -> _Acts:
    """Everything up to (not including) the MLP head, at every packed row."""
    win = _windows(packed, base.config.window, base.none_id)
    u, u_prev = _embed(base, win)
    q = _lin(base, u, "wq", plan)
    k = _lin(base, u_prev, "wk", plan)
    v = _lin(base, u, "wv", plan)
    return _Acts(win, u, u_prev, q, k, v, _attention(packed, q, k, v))


def _head(
    base: BaseModel, u: FloatArray, att: FloatArray, plan: _Plan
) -> tuple[FloatArray, FloatArray]:
    """``pre`` and ``logits`` of the MLP head for the given rows."""
    pre = _lin(base, u, "w_in", plan) + _lin(base, att, "wo", plan) + base.weights["b_in"]
    h = _gelu(pre)
    return pre, _lin(base, h, "w_out", plan) + base.weights["b_out"]


def _full_forward(base: BaseModel, packed: _Packed, plan: _Plan) -> _Acts:
    acts = _trunk(base, packed, plan)
    acts.pre = _lin(base, acts.u, "w_in", plan) + _lin(base, acts.att, "wo", plan)
    acts.pre += base.weights["b_in"]
    acts.h = _gelu(acts.pre)
    acts.logits = _lin(base, acts.h, "w_out", plan) + base.weights["b_out"]
    return acts


def _backward(
    base: BaseModel,
    packed: _Packed,
    acts: _Acts,
    rows: IntArray,
    dlogits: FloatArray,
    adapter: Adapter | None,
    base_grads: dict[str, FloatArray] | None = None,
) -> None:
    """Backpropagate ``dlogits`` (given only for ``rows``, the positions with a non-zero
    loss gradient) into the adapter's gradients (and ``base_grads`` if given)."""
    assert acts.h is not None and acts.pre is not None
    full = base_grads is not None
    dh = _lin_backward(base, acts.h[rows], dlogits, "w_out", adapter, base_grads, True)
    assert dh is not None
    dpre = dh * _gelu_grad(acts.pre[rows])
    du_rows = _lin_backward(base, acts.u[rows], dpre, "w_in", adapter, base_grads, full)
    if base_grads is not None:
        base_grads["b_out"] += dlogits.sum(axis=0)
        base_grads["b_in"] += dpre.sum(axis=0)
    needs_attention = full or (adapter is not None and adapter.train_attn)
    if not needs_attention:
        return
    datt_rows = _lin_backward(base, acts.att[rows], dpre, "wo", adapter, base_grads, True)
    datt = np.zeros_like(acts.att)
    datt[rows] = datt_rows
    dq, dk, dv = _attention_backward(packed, acts, datt)
    du = _lin_backward(base, acts.u, dq, "wq", adapter, base_grads, full)
    du_prev = _lin_backward(base, acts.u_prev, dk, "wk", adapter, base_grads, full)
    du_v = _lin_backward(base, acts.u, dv, "wv", adapter, base_grads, full)
    if base_grads is not None:
        assert du is not None and du_prev is not None and du_v is not None
        assert du_rows is not None
        du += du_v
        du[rows] += du_rows
        _embed_backward(base, acts.win, du, du_prev, base_grads)


def _embed_backward(
    base: BaseModel,
    win: NDArray[np.int64],
    du: FloatArray,
    du_prev: FloatArray,
    base_grads: dict[str, FloatArray],
) -> None:
    """Scatter window gradients back to embedding rows (only for base training)."""
    n, k, d = win.shape[0], base.config.window, base.config.d_embed
    grad_ext = np.zeros((base.none_id + 1, d), dtype=du.dtype)
    np.add.at(grad_ext, win[:, :k].ravel(), du.reshape(n * k, d))
    np.add.at(grad_ext, win[:, 1:].ravel(), du_prev.reshape(n * k, d))
    base_grads["embed"] += grad_ext[: base.none_id]


# --------------------------------------------------------------------------------------
# forward / forward_backward
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDatum:
    """One training example: model input ``tokens`` (length ``T``) and loss inputs."""

    tokens: Sequence[int] | IntArray
    loss_fn_inputs: Mapping[str, Any] = field(default_factory=dict)


class ForwardBackwardResult(NamedTuple):
    """Per-datum outputs (``{"logprobs": float32 ...}``) and ``name:reduction`` metrics."""

    loss_fn_outputs: list[dict[str, NDArray[np.float32]]]
    metrics: dict[str, float]


def _check_tokens(base: BaseModel, tokens: Any, what: str) -> NDArray[np.int64]:
    arr = np.asarray(tokens)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D list of token ids")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.size > base.max_context:
        raise ValueError(f"{what} has {arr.size} tokens; the context limit is {base.max_context}")
    if arr.min() < 0 or arr.max() >= base.vocab_size:
        raise ValueError(f"{what} must lie in [0, {base.vocab_size})")
    return arr.astype(np.int64)


def _target_logprobs(
    logits: FloatArray, lse: FloatArray, rows: IntArray, targets: NDArray[np.int64]
) -> FloatArray:
    """``log p(target)`` for the packed rows of one datum; ``targets`` is (T,) or (T, K)."""
    if targets.ndim == 1:
        return logits[rows, targets] - lse[rows]
    return logits[rows[:, None], targets] - lse[rows][:, None]


def _logsumexp(logits: FloatArray) -> FloatArray:
    peak = logits.max(axis=1)
    lse: FloatArray = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
    return lse


def forward(
    base: BaseModel, adapter: Adapter | None, data: Sequence[ModelDatum]
) -> list[NDArray[np.float32]]:
    """Log-probability of each datum's ``target_tokens`` (``(T,)`` or ``(T, K)``).

    ``out[i][t] = log p(target_tokens[t] | tokens[:t+1])``. Other loss inputs are ignored.
    """
    seqs, targets = [], []
    for i, datum in enumerate(data):
        tokens = _check_tokens(base, datum.tokens, f"datum {i}: tokens")
        if "target_tokens" not in datum.loss_fn_inputs:
            raise ValueError(f"datum {i}: loss_fn_inputs needs 'target_tokens' for forward")
        spec = _losses.get_loss_spec("cross_entropy")
        targets.append(
            _losses.check_target_tokens(
                f"datum {i}",
                datum.loss_fn_inputs["target_tokens"],
                tokens.size,
                base.vocab_size,
                spec,
            )
        )
        seqs.append(tokens)
    if base.zero_compute or not seqs:
        return [np.full(t.shape, -math.log(base.vocab_size), np.float32) for t in targets]
    packed = _Packed.of(seqs)
    acts = _full_forward(base, packed, _Plan.uniform(adapter))
    assert acts.logits is not None
    lse = _logsumexp(acts.logits)
    return [
        _target_logprobs(acts.logits, lse, off + np.arange(t.shape[0]), t).astype(np.float32)
        for off, t in zip(packed.offsets, targets, strict=True)
    ]


def forward_backward(
    adapter: Adapter,
    data: Sequence[ModelDatum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None = None,
    *,
    backward: bool = True,
) -> ForwardBackwardResult:
    """Evaluate ``loss_fn`` (formulas in ``_losses``) and add its gradient to ``adapter``.

    Returns ``{"logprobs": (T,) or (T, K) float32}`` per datum (plus ``elementwise_loss``
    for ``cross_entropy``) and ``{"loss:sum": ...}``. ``backward=False`` computes the same
    outputs without touching gradients (the server's ``forward`` with a loss).
    Positions whose loss gradient is zero (prompt tokens with weight 0) are skipped in the
    backward pass.
    """
    base = adapter.base
    config = _losses.resolve_loss_config(loss_fn, loss_fn_config)
    seqs, inputs = _check_batch(base, data, loss_fn)
    if not seqs:
        return ForwardBackwardResult([], {"loss:sum": 0.0})
    if base.zero_compute:
        lps = [np.full(x["target_tokens"].shape, -math.log(base.vocab_size)) for x in inputs]
        return _loss_outputs(loss_fn, lps, inputs, config)[0]
    packed = _Packed.of(seqs)
    acts = _full_forward(base, packed, _Plan.uniform(adapter))
    assert acts.logits is not None
    lse = _logsumexp(acts.logits)
    rows_of = [off + np.arange(n) for off, n in zip(packed.offsets, packed.lengths, strict=True)]
    lps = [
        _target_logprobs(acts.logits, lse, rows, x["target_tokens"])
        for rows, x in zip(rows_of, inputs, strict=True)
    ]
    result, grads = _loss_outputs(loss_fn, lps, inputs, config)
    if backward:
        rows, dlogits = _dlogits(acts.logits, lse, rows_of, inputs, grads)
        if rows.size:
            _backward(base, packed, acts, rows, dlogits.astype(base.dtype), adapter)
    return result


def _check_batch(
    base: BaseModel, data: Sequence[ModelDatum], loss_fn: str
) -> tuple[list[NDArray[np.int64]], list[dict[str, NDArray[Any]]]]:
    seqs, inputs = [], []
    for i, datum in enumerate(data):
        tokens = _check_tokens(base, datum.tokens, f"datum {i}: tokens")
        inputs.append(
            _losses.check_datum_inputs(
                loss_fn, datum.loss_fn_inputs, tokens.size, base.vocab_size, i
            )
        )
        seqs.append(tokens)
    return seqs, inputs


def _loss_outputs(
    loss_fn: str,
    lps: Sequence[FloatArray],
    inputs: Sequence[Mapping[str, NDArray[Any]]],
    config: Mapping[str, float],
) -> tuple[ForwardBackwardResult, list[FloatArray]]:
    outputs: list[dict[str, NDArray[np.float32]]] = []
    grads: list[FloatArray] = []
    total = 0.0
    for lp, x in zip(lps, inputs, strict=True):
        value = _losses.compute_loss(loss_fn, lp, x, config)
        out = {"logprobs": lp.astype(np.float32)}
        if loss_fn == "cross_entropy":
            out["elementwise_loss"] = value.elementwise.astype(np.float32)
        outputs.append(out)
        grads.append(value.grad)
        total += value.total
    return ForwardBackwardResult(outputs, {"loss:sum": total}), grads


def _dlogits(
    logits: FloatArray,
    lse: FloatArray,
    rows_of: Sequence[IntArray],
    inputs: Sequence[Mapping[str, NDArray[Any]]],
    grads: Sequence[FloatArray],
) -> tuple[IntArray, FloatArray]:
    """``dL/dlogits = sum_k g_k (onehot(target_k) - softmax)`` on rows with ``g != 0``."""
    all_rows, all_targets, all_g = [], [], []
    for rows, x, g in zip(rows_of, inputs, grads, strict=True):
        g2 = g.reshape(g.shape[0], -1)
        t2 = x["target_tokens"].reshape(g.shape[0], -1)
        live = np.flatnonzero(np.any(g2 != 0, axis=1))
        all_rows.append(rows[live])
        all_targets.append(t2[live])
        all_g.append(g2[live])
    rows = np.concatenate(all_rows)
    if rows.size == 0:
        return rows, np.zeros((0, logits.shape[1]))
    width = max(t.shape[1] for t in all_targets)
    targets = np.concatenate([_pad_cols(t, width, 0) for t in all_targets])
    g = np.concatenate([_pad_cols(x, width, 0.0) for x in all_g])
    probs = np.exp(logits[rows].astype(np.float64) - lse[rows, None])
    dlogits = -probs * g.sum(axis=1, keepdims=True)
    np.add.at(dlogits, (np.arange(rows.size)[:, None], targets), g)
    return rows, dlogits


def _pad_cols(x: NDArray[Any], width: int, fill: float) -> NDArray[Any]:
    if x.shape[1] == width:
        return x
    pad = np.full((x.shape[0], width - x.shape[1]), fill, dtype=x.dtype)
    return np.concatenate([x, pad], axis=1)


# --------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------


def optim_step(adapter: Adapter, params: Mapping[str, Any] | None = None) -> dict[str, float]:
    """One optimizer step on the adapter's accumulated gradients, then zero them.

    ``params`` are the request's ``adam_params`` or ``optimizer_params``; their family
    (``type``, AdamW when absent) must be the one the model was created with. Returns
    ``grad_norm:mean`` (before clipping) and ``learning_rate:mean``.
    """
    family = str((params or {}).get("type", "adamw"))
    family = "adamw" if family == "adam" else family
    if family != adapter.optimizer:
        raise ValueError(
            f"this model was created with the {adapter.optimizer} optimizer; optim_step "
            f"got {family} parameters"
        )
    grad_norm = math.sqrt(
        sum(float(np.sum(np.square(g, dtype=np.float64))) for g in adapter.grads.values())
    )
    hp = _dimuon_hyperparams(params) if family == "dimuon" else _adam_hyperparams(params)
    adapter.step += 1
    if not adapter.base.zero_compute:
        clip = hp["grad_clip_norm"]
        coef = clip / (grad_norm + 1e-6) if clip > 0 and grad_norm > clip else 1.0
        (_dimuon_update if family == "dimuon" else _adamw_update)(adapter, hp, coef)
    adapter.zero_grad()
    return {"grad_norm:mean": grad_norm, "learning_rate:mean": hp["learning_rate"]}


def _adamw_update(adapter: Adapter, hp: Mapping[str, float], coef: float) -> None:
    """AdamW with ``g`` the gradient (times ``coef``, the clipping factor) and defaults as
    ``tinker.AdamParams``::

        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        p -= lr * (m / (1 - beta1^n)) / (sqrt(v / (1 - beta2^n)) + eps) + lr * wd * p

    (decoupled weight decay, applied to the pre-step ``p``).
    """
    lr, b1, b2, eps, wd = (
        hp[k] for k in ("learning_rate", "beta1", "beta2", "eps", "weight_decay")
    )
    bias1 = 1.0 - b1**adapter.step
    bias2 = 1.0 - b2**adapter.step
    for key, p in adapter.params.items():
        g = adapter.grads[key] * coef
        m, v = adapter.adam_m[key], adapter.adam_v[key]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * g * g
        update = (m / bias1) / (np.sqrt(v / bias2) + eps)
        if wd:
            update += wd * p
        p -= (lr * update).astype(p.dtype)


def _dimuon_update(adapter: Adapter, hp: Mapping[str, float], coef: float) -> None:
    """The local stand-in for the service's Dimuon: a Muon step. Each matrix moves along
    the orthogonalised momentum (Newton-Schulz), scaled to the matrix's shape::

        m = beta1 m + g;   p -= lr * sqrt(max(1, rows / cols)) * orth(m)

    Vectors (none in a LoRA adapter today) take the momentum step itself.
    """
    lr, b1 = hp["learning_rate"], hp["beta1"]
    for key, p in adapter.params.items():
        m = adapter.adam_m[key]
        m *= b1
        m += adapter.grads[key] * coef
        if p.ndim == 2:
            update = _orthogonalised(m) * math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
        else:
            update = m
        p -= (lr * update).astype(p.dtype)


def _orthogonalised(m: FloatArray, steps: int = 5) -> FloatArray:
    """Muon's quintic Newton-Schulz iteration: about U V^T for m = U S V^T."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = m.astype(np.float64)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    out: FloatArray = (x.T if transposed else x).astype(m.dtype)
    return out


def _dimuon_hyperparams(params: Mapping[str, Any] | None) -> dict[str, float]:
    hp = {"learning_rate": 0.02, "beta1": 0.9, "grad_clip_norm": 0.0}
    for key, value in (params or {}).items():
        if key == "type":
            continue
        if key not in hp:
            raise ValueError(f"unknown Dimuon parameter {key!r}; accepted: {sorted(hp)}")
        hp[key] = float(value)
    if hp["learning_rate"] < 0 or not 0 <= hp["beta1"] < 1 or hp["grad_clip_norm"] < 0:
        raise ValueError("need learning_rate >= 0, 0 <= beta1 < 1 and grad_clip_norm >= 0")
    return hp


def _adam_hyperparams(adam_params: Mapping[str, Any] | None) -> dict[str, float]:
    hp = {
        "learning_rate": 1e-4,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-12,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,
    }
    for key, value in (adam_params or {}).items():
        if key not in _ADAM_KEYS:
            raise ValueError(f"unknown Adam parameter {key!r}; accepted: {sorted(_ADAM_KEYS)}")
        if key == "type":
            if value not in ("adam", "adamw"):
                raise ValueError(f"the local model implements only AdamW, not {value!r}")
            continue
        hp[key] = float(value)
    if hp["learning_rate"] < 0 or not 0 <= hp["beta1"] < 1 or not 0 <= hp["beta2"] < 1:
        raise ValueError("need learning_rate >= 0 and 0 <= beta1, beta2 < 1")
    if hp["eps"] < 0 or hp["weight_decay"] < 0:
        raise ValueError("eps and weight_decay must be >= 0")
    return hp


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def save_state(adapter: Adapter, include_optimizer: bool = True) -> bytes:
    """The adapter (and, if asked, its AdamW state) as ``.npz`` bytes with its config."""
    meta = {
        "format": _CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "base_model": adapter.base.name,
        "model_config": asdict(adapter.base.config),
        "rank": adapter.rank,
        "seed": adapter.seed,
        "train_mlp": adapter.train_mlp,
        "train_attn": adapter.train_attn,
        "train_unembed": adapter.train_unembed,
        "has_optimizer": include_optimizer,
        "step": adapter.step if include_optimizer else 0,
        "optimizer": adapter.optimizer,
    }
    arrays: dict[str, NDArray[Any]] = {
        "__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    }
    for key, p in adapter.params.items():
        arrays[f"param/{key}"] = p
        if include_optimizer:
            arrays[f"adam_m/{key}"] = adapter.adam_m[key]
            arrays[f"adam_v/{key}"] = adapter.adam_v[key]
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def checkpoint_info(data: bytes) -> dict[str, Any]:
    """The metadata saved by ``save_state`` (base model, rank, flags, step, ...)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return _read_meta(archive)


def _read_meta(archive: Any) -> dict[str, Any]:
    if "__meta__" not in archive.files:
        raise ValueError("not a tinker-local LoRA checkpoint (no metadata)")
    meta: dict[str, Any] = json.loads(bytes(archive["__meta__"]).decode())
    if meta.get("format") != _CHECKPOINT_FORMAT or meta.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(
            f"unsupported checkpoint format {meta.get('format')}/{meta.get('version')}"
        )
    return meta


def load_state(base: BaseModel, data: bytes, include_optimizer: bool = True) -> Adapter:
    """An adapter rebuilt from ``save_state`` bytes. The AdamW state (and step count) is
    restored only when it was saved and ``include_optimizer`` is true; otherwise fresh."""
    try:
        archive_ctx = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for garbage input
        raise ValueError(f"not a readable checkpoint: {exc}") from None
    with archive_ctx as archive:
        meta = _read_meta(archive)
        saved = ModelConfig(**{**meta["model_config"], "dtype": base.config.dtype})
        if not saved.same_network(base.config):
            raise ValueError(
                f"checkpoint was made for a network of other sizes ({meta['base_model']!r})"
            )
        adapter = Adapter.new(
            base,
            rank=int(meta["rank"]),
            seed=int(meta["seed"]),
            train_mlp=bool(meta["train_mlp"]),
            train_attn=bool(meta["train_attn"]),
            train_unembed=bool(meta["train_unembed"]),
        )
        adapter.optimizer = str(meta.get("optimizer", "adamw"))
        for key in adapter.params:
            adapter.params[key] = archive[f"param/{key}"].astype(base.dtype)
        if include_optimizer and meta.get("has_optimizer"):
            for key in adapter.params:
                adapter.adam_m[key] = archive[f"adam_m/{key}"].astype(base.dtype)
                adapter.adam_v[key] = archive[f"adam_v/{key}"].astype(base.dtype)
            adapter.step = int(meta["step"])
    return adapter


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------

StopReason = Literal["stop", "length"]
StopSpec = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | None


@dataclass(frozen=True)
class SampleRequest:
    """One sampling request (the fields of the official ``SampleRequest`` that matter here).

    ``stop`` takes every official form (``None``, a string, strings, token ids) and also
    token sequences; see ``_sampler``. ``max_tokens=None`` samples until a stop or the
    context limit. ``target_prompt_logprobs`` is a dense ``(len(prompt) - 1, K)`` int array
    with ``-1`` for "nothing here".
    """

    prompt_tokens: Sequence[int] | IntArray
    num_samples: int = 1
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: StopSpec = None
    seed: int | None = None
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0
    prompt_logprobs_last_n: int | None = None
    target_prompt_logprobs: Any = None
    prompt_alt_tokens_k: int = 0
    adapter: Adapter | None = None


@dataclass(frozen=True)
class SampledSequence:
    """Generated tokens (int32), their log-probabilities (float32) and why it stopped.

    ``topk_token_ids`` / ``topk_logprobs`` are ``(n, k)`` when ``topk_sample_logprobs > 0``.
    """

    tokens: NDArray[np.int32]
    logprobs: NDArray[np.float32]
    stop_reason: StopReason
    topk_token_ids: NDArray[np.int32] | None = None
    topk_logprobs: NDArray[np.float32] | None = None


@dataclass(frozen=True)
class SampleResult:
    """Everything a ``SampleResponse`` needs.

    - ``prompt_logprobs``: ``(L,)`` float32, NaN where not computed (always position 0).
    - ``topk_prompt_token_ids`` / ``topk_prompt_logprobs``: ``(L, k)``; row 0 (and rows
      before ``prompt_logprobs_last_n``) hold the sentinel ``(0, MASK_LOGPROB)``.
    - ``target_prompt_logprobs``: ``(L-1, K)`` float32, 0.0 where the request had ``-1``.
    - ``prompt_alt_tokens`` / ``prompt_alt_logprobs``: ``(L-1, k)`` int64 / float32 draws
      at the request's temperature from the distribution over prompt token ``i + 1``.
    """

    sequences: list[SampledSequence]
    prompt_logprobs: NDArray[np.float32] | None = None
    topk_prompt_token_ids: NDArray[np.int32] | None = None
    topk_prompt_logprobs: NDArray[np.float32] | None = None
    target_prompt_logprobs: NDArray[np.float32] | None = None
    prompt_alt_tokens: NDArray[np.int64] | None = None
    prompt_alt_logprobs: NDArray[np.float32] | None = None


@dataclass
class _Job:
    """A validated request plus its decoding bookkeeping."""

    req: SampleRequest
    prompt: NDArray[np.int64]
    max_new: int
    stops: _sampler.StopSeqs
    rng: np.random.Generator
    wants_prompt_scores: bool


def sample(
    base: BaseModel,
    adapter: Adapter | None,
    prompt_tokens: Sequence[int] | IntArray,
    num_samples: int = 1,
    max_tokens: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = -1,
    stop: StopSpec = None,
    seed: int | None = None,
    include_prompt_logprobs: bool = False,
    topk_prompt_logprobs: int = 0,
    topk_sample_logprobs: int = 0,
    **extra: Any,
) -> SampleResult:
    """Sample ``num_samples`` continuations of one prompt (see ``SampleRequest``)."""
    request = SampleRequest(
        prompt_tokens=prompt_tokens,
        num_samples=num_samples,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop,
        seed=seed,
        prompt_logprobs=include_prompt_logprobs,
        topk_prompt_logprobs=topk_prompt_logprobs,
        topk_sample_logprobs=topk_sample_logprobs,
        adapter=adapter,
        **extra,
    )
    return sample_many(base, [request])[0]


def sample_many(base: BaseModel, requests: Sequence[SampleRequest]) -> list[SampleResult]:
    """Serve several independent requests as one batch: one prefill for all prompts, then
    one decode step per token for every live sequence of every request (each with its own
    adapter, temperature, top-k/top-p, stops and RNG). A request's result depends only on
    itself and its seed, not on what else shares the batch (up to float rounding)."""
    jobs = [_make_job(base, i, r) for i, r in enumerate(requests)]
    if not jobs:
        return []
    if base.zero_compute:
        return [_zero_compute_result(base, job) for job in jobs]
    prompt_results, last_logits, kv = _prefill(base, jobs)
    sequences = _decode(base, jobs, last_logits, kv)
    return [
        SampleResult(sequences=seqs, **fields)
        for seqs, fields in zip(sequences, prompt_results, strict=True)
    ]


def _make_job(base: BaseModel, index: int, req: SampleRequest) -> _Job:
    where = f"sample request {index}"
    prompt = _check_tokens(base, req.prompt_tokens, f"{where}: prompt")
    if req.num_samples < 1:
        raise ValueError(f"{where}: num_samples must be >= 1")
    if req.temperature < 0 or not math.isfinite(req.temperature):
        raise ValueError(f"{where}: temperature must be a finite number >= 0")
    if not 0 < req.top_p <= 1:
        raise ValueError(f"{where}: top_p must be in (0, 1]")
    if req.top_k < -1:
        raise ValueError(f"{where}: top_k must be -1 (no limit) or >= 0")
    for name in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
        if getattr(req, name) < 0:
            raise ValueError(f"{where}: {name} must be >= 0")
    room = base.max_context - prompt.size
    if req.max_tokens is not None and req.max_tokens < 0:
        raise ValueError(f"{where}: max_tokens must be >= 0")
    max_new = room if req.max_tokens is None else min(req.max_tokens, room)
    last_n = req.prompt_logprobs_last_n
    if last_n is not None and not 1 <= last_n <= prompt.size - 1:
        raise ValueError(f"{where}: prompt_logprobs_last_n must be in [1, len(prompt) - 1]")
    if req.adapter is not None and req.adapter.base is not base:
        raise ValueError(f"{where}: the adapter belongs to another base model")
    stops = _sampler.normalize_stop(
        req.stop, lambda s: base.tokenizer.encode(s, add_special_tokens=False), EOS_ID
    )
    wants = bool(
        req.prompt_logprobs
        or req.topk_prompt_logprobs
        or req.target_prompt_logprobs is not None
        or req.prompt_alt_tokens_k
    )
    return _Job(req, prompt, max_new, stops, np.random.default_rng(req.seed), wants)


def _zero_compute_result(base: BaseModel, job: _Job) -> SampleResult:
    n = job.max_new
    const = np.float32(-math.log(base.vocab_size))
    seqs = []
    for i in range(job.req.num_samples):
        tokens = (ord("a") + (np.arange(n) + i) % 26).astype(np.int32)
        k = job.req.topk_sample_logprobs
        seqs.append(
            SampledSequence(
                tokens,
                np.full(n, const, np.float32),
                "length",
                np.repeat(tokens[:, None], k, axis=1) if k else None,
                np.full((n, k), const, np.float32) if k else None,
            )
        )
    length = job.prompt.size
    fields = _prompt_fields(job, np.full((length, base.vocab_size), const), base.vocab_size)
    return SampleResult(sequences=seqs, **fields)


def _adapter_index(jobs: Sequence[_Job]) -> tuple[tuple[Adapter, ...], NDArray[np.int64]]:
    """The distinct adapters of the jobs, and each job's index into them (-1: base only)."""
    adapters: list[Adapter] = []
    ids = []
    for job in jobs:
        a = job.req.adapter
        index = next((i for i, x in enumerate(adapters) if x is a), None)
        if a is not None and index is None:
            adapters.append(a)
            index = len(adapters) - 1
        ids.append(-1 if index is None else index)
    return tuple(adapters), np.array(ids, dtype=np.int64)


def _job_plan(jobs: Sequence[_Job], rows_per_job: NDArray[np.int64]) -> _Plan:
    """Rows laid out job by job, each row served by its job's adapter."""
    adapters, ids = _adapter_index(jobs)
    return _Plan(adapters, np.repeat(ids, rows_per_job))


def _prefill(
    base: BaseModel, jobs: Sequence[_Job]
) -> tuple[list[dict[str, Any]], FloatArray, tuple[_Packed, FloatArray, FloatArray]]:
    """Run every prompt once: keys/values for the cache, the logits of each prompt's last
    position, and the prompt log-probability fields that were asked for."""
    packed = _Packed.of([job.prompt for job in jobs])
    plan = _job_plan(jobs, packed.lengths)
    acts = _trunk(base, packed, plan)
    scored = [
        np.arange(off, off + n) if job.wants_prompt_scores else np.array([off + n - 1])
        for job, off, n in zip(jobs, packed.offsets, packed.lengths, strict=True)
    ]
    rows = np.concatenate(scored)
    _, logits = _head(base, acts.u[rows], acts.att[rows], plan.subset(rows))
    logits = logits.astype(np.float64)
    last = np.cumsum([s.size for s in scored]) - 1
    fields = []
    start = 0
    for job, s in zip(jobs, scored, strict=True):
        fields.append(_prompt_fields(job, logits[start : start + s.size], base.vocab_size))
        start += s.size
    return fields, logits[last], (packed, acts.k, acts.v)


def _prompt_fields(job: _Job, logits: FloatArray, vocab: int) -> dict[str, Any]:
    """Prompt scores from the logits at every prompt position (row ``i`` predicts ``i+1``)."""
    req, prompt = job.req, job.prompt
    if not job.wants_prompt_scores:
        return {}
    length = prompt.size
    logp = _sampler.log_softmax(logits[: length - 1])  # distributions over tokens 1..L-1
    first = length - (req.prompt_logprobs_last_n or length - 1)  # first scored position
    out: dict[str, Any] = {}
    if req.prompt_logprobs:
        lp = np.full(length, np.nan, dtype=np.float32)
        lp[1:] = logp[np.arange(length - 1), prompt[1:]]
        lp[:first] = np.nan
        out["prompt_logprobs"] = lp
    if req.topk_prompt_logprobs:
        k = req.topk_prompt_logprobs
        ids = np.zeros((length, k), np.int32)
        vals = np.full((length, k), MASK_LOGPROB, np.float32)
        ids[1:], vals[1:] = _sampler.top_k_rows(logp, k)
        ids[:first], vals[:first] = 0, MASK_LOGPROB
        out["topk_prompt_token_ids"], out["topk_prompt_logprobs"] = ids, vals
    if req.target_prompt_logprobs is not None:
        out["target_prompt_logprobs"] = _target_prompt_scores(req, logp, length, vocab)
    if req.prompt_alt_tokens_k:
        out["prompt_alt_tokens"], out["prompt_alt_logprobs"] = _alt_tokens(job, logits, length)
    return out


def _target_prompt_scores(
    req: SampleRequest, logp: FloatArray, length: int, vocab: int
) -> NDArray[np.float32]:
    ids = np.asarray(req.target_prompt_logprobs)
    if ids.ndim != 2 or ids.shape[0] != length - 1:
        raise ValueError(
            f"target_prompt_logprobs must have shape [len(prompt) - 1, K] = [{length - 1}, K], "
            f"got {list(ids.shape)}"
        )
    if ids.size and (ids.min() < -1 or ids.max() >= vocab):
        raise ValueError(f"target_prompt_logprobs ids must be -1 or in [0, {vocab})")
    asked = ids >= 0
    scores = np.take_along_axis(logp, np.where(asked, ids, 0), axis=1)
    return np.where(asked, scores, 0.0).astype(np.float32)


def _alt_tokens(
    job: _Job, logits: FloatArray, length: int
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """``k`` independent draws per prompt position at the request's temperature."""
    k = job.req.prompt_alt_tokens_k
    rows = np.repeat(logits[: length - 1], k, axis=0)
    n = int(rows.shape[0])
    temp = np.full(n, job.req.temperature)
    tokens, logp = _sampler.choose_tokens(rows, temp, np.full(n, -1), np.ones(n), job.rng.random(n))
    chosen = logp[np.arange(n), tokens]
    return tokens.reshape(length - 1, k), chosen.reshape(length - 1, k).astype(np.float32)


@dataclass
class _Rows:
    """Live decoding rows (one per sample still generating), compacted as rows finish."""

    job: NDArray[np.int64]  # which job
    adapter: NDArray[np.int64]  # index into the batch's adapters (-1: base only)
    length: NDArray[np.int64]  # tokens in the context so far (prompt + fed samples)
    hist: NDArray[np.int64]  # (R, cap + 1) token history
    keys: FloatArray  # (R, cap, d_a)
    values: FloatArray

    def keep(self, mask: NDArray[np.bool_]) -> _Rows:
        return _Rows(
            self.job[mask],
            self.adapter[mask],
            self.length[mask],
            self.hist[mask],
            self.keys[mask],
            self.values[mask],
        )


def _decode(
    base: BaseModel,
    jobs: Sequence[_Job],
    first_logits: FloatArray,
    kv: tuple[_Packed, FloatArray, FloatArray],
) -> list[list[SampledSequence]]:
    """The batched autoregressive loop: one network step per token for all live rows."""
    counts = np.array([job.req.num_samples for job in jobs])
    job_of = np.repeat(np.arange(len(jobs)), counts)
    max_new = np.array([job.max_new for job in jobs])
    steps = int(max_new.max())
    total = int(counts.sum())
    # Per-row sampling parameters and the uniforms that drive every draw, fixed up front
    # from each request's own RNG so that results do not depend on the batch.
    temp = np.array([job.req.temperature for job in jobs], dtype=np.float64)[job_of]
    top_k = np.array([job.req.top_k for job in jobs], dtype=np.int64)[job_of]
    top_p = np.array([job.req.top_p for job in jobs], dtype=np.float64)[job_of]
    uniforms = np.zeros((total, max(steps, 1)))
    start = 0
    for job, c in zip(jobs, counts, strict=True):
        uniforms[start : start + c, : job.max_new] = job.rng.random((c, job.max_new))
        start += c
    stop_table, multi_stops = _stop_tables(jobs, base.vocab_size)
    k_top = np.array([job.req.topk_sample_logprobs for job in jobs], dtype=np.int64)[job_of]
    kmax = int(k_top.max())

    gen = np.zeros((total, max(steps, 1)), dtype=np.int64)
    gen_lp = np.zeros((total, max(steps, 1)), dtype=np.float32)
    gen_topk = (
        (np.zeros((total, steps, kmax), np.int32), np.zeros((total, steps, kmax), np.float32))
        if kmax
        else None
    )
    n_out = np.zeros(total, dtype=np.int64)
    reason: list[StopReason] = ["length"] * total

    rows = _init_rows(base, jobs, kv, job_of, steps)
    adapters, _ = _adapter_index(jobs)
    row_id = np.arange(total)  # original index of each live row
    logits = first_logits[job_of]
    live = max_new[job_of] > 0
    if not live.all():
        rows, row_id, logits = rows.keep(live), row_id[live], logits[live]
    for step in range(steps):
        if row_id.size == 0:
            break
        tokens, logp = _sampler.choose_tokens(
            logits, temp[row_id], top_k[row_id], top_p[row_id], uniforms[row_id, step]
        )
        gen[row_id, step] = tokens
        gen_lp[row_id, step] = logp[np.arange(tokens.size), tokens]
        if gen_topk is not None:
            ids, vals = _sampler.top_k_rows(logp, kmax)
            gen_topk[0][row_id, step], gen_topk[1][row_id, step] = ids, vals
        n_out[row_id] = step + 1
        stopped = _stopped(rows, tokens, gen, row_id, step, stop_table, multi_stops)
        for r in row_id[stopped]:
            reason[r] = "stop"
        done = stopped | (step + 1 >= max_new[rows.job])
        if done.any():
            keep = ~done
            rows, row_id = rows.keep(keep), row_id[keep]
            tokens = tokens[keep]
        if row_id.size == 0:
            break
        logits = _decode_step(base, _Plan(adapters, rows.adapter), rows, tokens)
    return _collect(jobs, counts, gen, gen_lp, gen_topk, k_top, n_out, reason)


def _init_rows(
    base: BaseModel,
    jobs: Sequence[_Job],
    kv: tuple[_Packed, FloatArray, FloatArray],
    job_of: NDArray[np.int64],
    steps: int,
) -> _Rows:
    """Copy each prompt's keys/values and tokens into the rows of its samples."""
    packed, keys, values = kv
    lengths = packed.lengths[job_of]
    cap = int((lengths + steps).max())
    total = job_of.size
    d_a = base.config.d_attn
    hist = np.zeros((total, cap + 1), dtype=np.int64)
    kc = np.zeros((total, cap, d_a), dtype=base.dtype)
    vc = np.zeros((total, cap, d_a), dtype=base.dtype)
    for j, job in enumerate(jobs):
        mine = np.flatnonzero(job_of == j)
        n = job.prompt.size
        span = slice(int(packed.offsets[j]), int(packed.offsets[j]) + n)
        hist[mine, :n] = job.prompt
        kc[mine, :n] = keys[span]
        vc[mine, :n] = values[span]
    _, adapter_of_job = _adapter_index(jobs)
    return _Rows(job_of.copy(), adapter_of_job[job_of], lengths.copy(), hist, kc, vc)


def _decode_step(
    base: BaseModel, plan: _Plan, rows: _Rows, tokens: NDArray[np.int64]
) -> FloatArray:
    """Feed each live row its newest token; return the logits for the next one."""
    r = np.arange(tokens.size)
    pos = rows.length  # position of the new token
    rows.hist[r, pos] = tokens
    back = np.arange(base.config.window + 1)
    src = pos[:, None] - back[None, :]
    win = np.where(src >= 0, rows.hist[r[:, None], np.clip(src, 0, None)], base.none_id)
    u, u_prev = _embed(base, win)
    q = _lin(base, u, "wq", plan)
    rows.keys[r, pos] = _lin(base, u_prev, "wk", plan)
    rows.values[r, pos] = _lin(base, u, "wv", plan)
    rows.length += 1
    span = int(rows.length.max())
    scores = (q[:, None, :] @ rows.keys[:, :span].transpose(0, 2, 1))[:, 0, :]
    scores *= 1.0 / math.sqrt(q.shape[1])
    scores = np.where(np.arange(span)[None, :] < rows.length[:, None], scores, -np.inf)
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=1, keepdims=True)
    att = (probs[:, None, :] @ rows.values[:, :span])[:, 0, :]
    _, logits = _head(base, u, att, plan)
    return logits.astype(np.float64)


def _stop_tables(
    jobs: Sequence[_Job], vocab: int
) -> tuple[NDArray[np.bool_], list[list[tuple[int, ...]]]]:
    """Single-token stops as a ``(jobs, V)`` lookup table; longer ones listed per job."""
    table = np.zeros((len(jobs), vocab + 1), dtype=bool)
    multi: list[list[tuple[int, ...]]] = []
    for j, job in enumerate(jobs):
        longer = []
        for seq in job.stops:
            if len(seq) == 1:
                if 0 <= seq[0] < vocab:
                    table[j, seq[0]] = True
            else:
                longer.append(seq)
        multi.append(longer)
    return table, multi


def _stopped(
    rows: _Rows,
    tokens: NDArray[np.int64],
    gen: NDArray[np.int64],
    row_id: NDArray[np.int64],
    step: int,
    table: NDArray[np.bool_],
    multi: Sequence[Sequence[tuple[int, ...]]],
) -> NDArray[np.bool_]:
    """Which live rows just completed one of their stop sequences."""
    stopped = table[rows.job, tokens]
    for j in np.unique(rows.job):
        for seq in multi[j]:
            m = len(seq)
            if m > step + 1:
                continue
            mine = np.flatnonzero(rows.job == j)
            tail = gen[row_id[mine], step + 1 - m : step + 1]
            stopped[mine] |= np.all(tail == np.array(seq), axis=1)
    return stopped


def _collect(
    jobs: Sequence[_Job],
    counts: NDArray[np.int64],
    gen: NDArray[np.int64],
    gen_lp: NDArray[np.float32],
    gen_topk: tuple[NDArray[np.int32], NDArray[np.float32]] | None,
    k_top: NDArray[np.int64],
    n_out: NDArray[np.int64],
    reason: Sequence[StopReason],
) -> list[list[SampledSequence]]:
    out: list[list[SampledSequence]] = []
    row = 0
    for _job, c in zip(jobs, counts, strict=True):
        seqs = []
        for _ in range(c):
            n, k = int(n_out[row]), int(k_top[row])
            topk = (
                (gen_topk[0][row, :n, :k].copy(), gen_topk[1][row, :n, :k].copy())
                if gen_topk is not None and k
                else (None, None)
            )
            seqs.append(
                SampledSequence(
                    gen[row, :n].astype(np.int32),
                    gen_lp[row, :n].copy(),
                    reason[row],
                    *topk,
                )
            )
            row += 1
        out.append(seqs)
    return out
