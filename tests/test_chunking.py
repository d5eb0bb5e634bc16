"""Chunk splitting and result merging, checked against the official SDK's own helpers.

The official SDK (Python 3.11+) is only needed for the comparisons: those tests take the
``official`` fixture and skip without it; the rest run everywhere (Python 3.10 included).
"""

from __future__ import annotations

import math
import struct
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tinker_async import types as T
from tinker_async._chunking import (
    DEFAULT_MAX_CHUNK_BYTES,
    DEFAULT_MAX_CHUNK_LEN,
    combine_forward_backward_outputs,
    estimate_datum_bytes,
    split_datums,
)


@pytest.fixture(scope="module")
def official() -> SimpleNamespace:
    """The official SDK's types and chunking helpers (skips the test without the SDK)."""
    pytest.importorskip("tinker")
    from tinker import types
    from tinker.lib.chunked_fwdbwd_helpers import combine_fwd_bwd_output_results
    from tinker.lib.public_interfaces.training_client import TrainingClient

    return SimpleNamespace(types=types, combine=combine_fwd_bwd_output_results,
                           TrainingClient=TrainingClient)


# ---------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------


def _rand_datum_pair(rng: np.random.Generator, OT: Any) -> tuple[Any, Any]:
    """The same random datum as one of ours and one official one."""
    chunk_specs: list[tuple[str, Any]] = []
    for _ in range(int(rng.integers(0, 4))):
        r = rng.random()
        if r < 0.6:
            chunk_specs.append(
                ("text", rng.integers(0, 1000, int(rng.choice([0, 3, 500, 4000]))).tolist())
            )
        elif r < 0.75:
            chunk_specs.append(("image", rng.bytes(int(rng.integers(0, 50_000)))))
        elif r < 0.9:
            chunk_specs.append(("pointer", f"s3://bucket/{'x' * int(rng.integers(0, 100))}.png"))
        else:
            chunk_specs.append(("dmel", rng.bytes(int(rng.integers(0, 20_000)))))
    tensor_specs: dict[str, dict[str, Any]] = {}
    for name in rng.choice(
        ["target_tokens", "weights", "advantages"], int(rng.integers(0, 3)), replace=False
    ):
        dtype = "int64" if name == "target_tokens" else "float32"
        if rng.random() < 0.3:
            nrows, ncols = int(rng.integers(1, 50)), int(rng.integers(1, 50))
            mask = rng.random((nrows, ncols)) < 0.2
            tensor_specs[str(name)] = {
                "data": np.ones(int(mask.sum()), dtype=dtype),
                "dtype": dtype,
                "shape": [nrows, ncols],
                "sparse_crow_indices": [0, *np.cumsum(mask.sum(1)).tolist()],
                "sparse_col_indices": np.nonzero(mask)[1].tolist(),
            }
        else:
            n = int(rng.choice([0, 10, 1000, 100_000]))
            tensor_specs[str(name)] = {
                "data": np.zeros(n, dtype=dtype),
                "dtype": dtype,
                "shape": [n],
            }

    def build(M: Any) -> Any:
        chunks = []
        for kind, value in chunk_specs:
            if kind == "text":
                chunks.append(M.EncodedTextChunk(tokens=value))
            elif kind == "image":
                chunks.append(M.ImageChunk(data=value, format="png"))
            elif kind == "pointer":
                chunks.append(M.ImageAssetPointerChunk(location=value, format="png"))
            else:
                chunks.append(M.DmelChunk(dmel=value))
        return M.Datum(
            model_input=M.ModelInput(chunks=chunks),
            loss_fn_inputs={k: M.TensorData(**v) for k, v in tensor_specs.items()},
        )

    return build(T), build(OT)


def _official_split(
    official: SimpleNamespace, data: list[Any], max_len: int, max_bytes: int
) -> list[tuple[int, int]]:
    holder = SimpleNamespace(
        _client_config=SimpleNamespace(
            fwdbwd_max_chunk_len=max_len, fwdbwd_max_chunk_bytes_count=max_bytes
        )
    )
    chunks = official.TrainingClient._chunked_requests_generator(
        SimpleNamespace(holder=holder), data)
    return [(len(c.data), c.estimated_bytes_count) for c in chunks]


@pytest.mark.parametrize("seed", range(4))
def test_split_matches_official(official: SimpleNamespace, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(25):
        pairs = [_rand_datum_pair(rng, official.types)
                 for _ in range(int(rng.choice([0, 1, 5, 40, 120])))]
        ours_data = [p[0] for p in pairs]
        off_data = [p[1] for p in pairs]
        max_len = int(rng.choice([1, 3, 16, DEFAULT_MAX_CHUNK_LEN]))
        max_bytes = int(rng.choice([1, 10_000, 200_000, DEFAULT_MAX_CHUNK_BYTES]))
        ours = split_datums(ours_data, max_len, max_bytes)
        assert [(len(c.data), c.estimated_bytes) for c in ours] == _official_split(
            official, off_data, max_len, max_bytes
        )
        assert [d for c in ours for d in c.data] == ours_data  # order kept, nothing lost


def test_split_defaults() -> None:
    datum = T.Datum(model_input=T.ModelInput(chunks=[T.EncodedTextChunk(tokens=[1] * 10)]))
    assert estimate_datum_bytes(datum) == 40
    chunks = split_datums([datum] * 2049)
    assert [len(c.data) for c in chunks] == [1024, 1024, 1]

    def weights(n: int) -> Any:
        return T.Datum(
            model_input=T.ModelInput(chunks=[]),
            loss_fn_inputs={"w": T.TensorData.from_numpy(np.zeros(n, np.float32))},
        )

    # one datum over the limit still gets a chunk of its own; 4.8 MB + 40 B fit in 5 MB
    chunks = split_datums([weights(3_000_000), weights(1_200_000), datum])
    assert [(len(c.data), c.estimated_bytes) for c in chunks] == [(1, 12_000_000), (2, 4_800_040)]
    with pytest.raises(ValueError):
        split_datums([datum], max_chunk_len=0)


# ---------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------

_REDUCTIONS = ["mean", "sum", "min", "max", "slack", "hash2", "unique", "p99"]


def _rand_results(rng: np.random.Generator, M: Any) -> list[Any]:
    keys = [f"m{i}:{rng.choice(_REDUCTIONS)}" for i in range(int(rng.integers(0, 8)))]
    results = []
    for _ in range(int(rng.integers(1, 5))):
        metrics: dict[str, float] = {}
        for key in keys:
            if rng.random() < 0.1:
                continue  # a key missing from some chunk is dropped
            if key.endswith("hash2"):
                metrics[key] = float(rng.integers(-(2**52), 2**52))
            else:
                metrics[key] = float(rng.standard_normal() * 10)
        n = int(rng.integers(1, 6))
        outputs = [
            {"logprobs": M.TensorData.from_numpy(rng.standard_normal(3).astype(np.float32))}
            for _ in range(n)
        ]
        results.append(
            M.ForwardBackwardOutput(
                loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics=metrics
            )
        )
    return results


def _same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("seed", range(4))
def test_merge_matches_official(official: SimpleNamespace, seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    for _ in range(50):
        state = rng.bit_generator.state
        ours_in = _rand_results(rng, T)
        rng.bit_generator.state = state  # the same random contents, as official types
        off_in = _rand_results(rng, official.types)
        ours = combine_forward_backward_outputs(ours_in)
        theirs = official.combine(off_in)
        assert ours.loss_fn_output_type == theirs.loss_fn_output_type
        assert list(ours.metrics) == list(theirs.metrics)  # same keys, same order
        for key, value in theirs.metrics.items():
            assert type(ours.metrics[key]) is type(value)
            assert _same_float(ours.metrics[key], value), key
        assert len(ours.loss_fn_outputs) == len(theirs.loss_fn_outputs)
        flat_in = [o for r in ours_in for o in r.loss_fn_outputs]
        assert all(a is b for a, b in zip(ours.loss_fn_outputs, flat_in, strict=True))


def test_merge_reductions_by_hand() -> None:
    def out(n: int, **metrics: float) -> Any:
        return T.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=[{} for _ in range(n)],
            metrics={k.replace("__", ":"): v for k, v in metrics.items()},
        )

    merged = combine_forward_backward_outputs(
        [
            out(1, a__mean=1.0, b__unique=5.0, c__hash2=-1.0),
            out(3, a__mean=3.0, b__unique=6.0, c__hash2=2.0),
        ]
    )
    assert merged.metrics == {"a:mean": 2.5, "b:unique": 5.0, "b:unique_1": 6.0, "c:hash2": 1}
    assert combine_forward_backward_outputs([]).loss_fn_output_type == ""


def test_merge_keys_without_one_colon_keep_the_first_value() -> None:
    """The official helper raises ValueError on these keys; we keep the first chunk's value."""
    results = [
        T.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=[{}],
            metrics={"loss": float(i), "a:b:mean": 10.0 + i, "x:sum": 1.0},
        )
        for i in range(3)
    ]
    merged = combine_forward_backward_outputs(results)
    assert merged.metrics == {"loss": 0.0, "a:b:mean": 10.0, "x:sum": 3.0}


def test_official_merge_raises_on_keys_without_one_colon(official: SimpleNamespace) -> None:
    """Why we differ above: the official helper refuses such keys outright."""
    results = [
        official.types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=[{}], metrics={"loss": 1.0}
        )
    ]
    with pytest.raises(ValueError):
        official.combine(results)


def test_merge_mean_over_empty_chunks() -> None:
    """All-empty chunks give weight 0; the official np.average raises, we take the plain mean."""
    results = [
        T.ForwardBackwardOutput(
            loss_fn_output_type="X", loss_fn_outputs=[], metrics={"a:mean": v, "a:slack": v}
        )
        for v in (1.0, 2.0)
    ]
    assert combine_forward_backward_outputs(results).metrics == {"a:mean": 1.5, "a:slack": 0.5}
