"""Behaviour of ``tinker_async.types`` through its public API, and compatibility with the
official ``tinker.types`` (skipped when the official SDK is not installed)."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import types as pytypes
from datetime import datetime, timezone
from typing import Any

import msgspec
import numpy as np
import pytest

import tinker_async
import tinker_async.types as T
from tinker_async.types import tensor_data as tensor_data_module
from tinker_async.types._wire import (
    decode_forward_backward_output_json,
    decode_json,
    decode_sample_response_json,
    encode_json,
    from_builtins,
    to_builtins,
)


def body(obj: Any) -> dict[str, Any]:
    """The JSON object ``obj`` encodes to."""
    result: dict[str, Any] = json.loads(encode_json(obj))
    return result


def tokens_input(*tokens: int) -> T.ModelInput:
    return T.ModelInput.from_ints(list(tokens))


# --- model input -------------------------------------------------------------------------


def test_model_input_helpers_return_new_instances() -> None:
    mi = T.ModelInput.from_ints([1, 2, 3])
    longer = mi.append_int(4)
    assert mi.to_ints() == [1, 2, 3]
    assert longer.to_ints() == [1, 2, 3, 4]
    assert longer.length == 4 and mi.length == 3
    assert T.ModelInput.empty().length == 0
    with_image = mi.append(T.ImageChunk(data=b"png", format="png", expected_tokens=5))
    assert with_image.length == 8
    assert mi.chunks[0].type == "encoded_text"


def test_to_ints_refuses_non_text_chunks() -> None:
    mi = T.ModelInput(chunks=[T.ImageAssetPointerChunk(format="png", location="s3://x")])
    with pytest.raises(ValueError, match="EncodedTextChunk"):
        mi.to_ints()


def test_image_length_needs_expected_tokens() -> None:
    with pytest.raises(ValueError, match="expected_tokens"):
        _ = T.ImageChunk(data=b"x", format="jpeg").length


def test_chunks_encode_with_their_type_tag() -> None:
    mi = T.ModelInput(
        chunks=[
            T.EncodedTextChunk(tokens=[1, 2]),
            T.ImageChunk(data=b"\x89PNG", format="png"),
            T.DmelChunk(dmel=bytes([1, 2, 3, 0])),
        ]
    )
    assert body(mi) == {
        "chunks": [
            {"type": "encoded_text", "tokens": [1, 2]},
            {"type": "image", "data": "iVBORw==", "format": "png"},
            {"type": "dmel", "dmel": "AQIDAA=="},
        ]
    }
    assert decode_json(encode_json(mi), T.ModelInput) == mi


def test_bare_chunks_decode_by_their_keys() -> None:
    raw = b'{"chunks": [{"tokens": [5, 6]}, {"data": "aGk=", "format": "png"}]}'
    mi = decode_json(raw, T.ModelInput)
    assert isinstance(mi.chunks[0], T.EncodedTextChunk)
    assert mi.chunks[0].tokens == [5, 6]
    assert isinstance(mi.chunks[1], T.ImageChunk) and mi.chunks[1].data == b"hi"
    assert T.ModelInput.model_validate({"chunks": [{"tokens": [7]}]}).to_ints() == [7]
    # Also nested deep in a request body.
    req = decode_json(
        b'{"type": "sample", "prompt": {"chunks": [{"tokens": [1]}]},'
        b' "sampling_params": {"max_tokens": 3}}',
        T.SampleRequest,
    )
    assert req.prompt.to_ints() == [1]


def test_lenient_decoding_does_not_hide_real_errors() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_json(b'{"chunks": [{"tokens": ["a"]}]}', T.ModelInput)
    with pytest.raises(msgspec.ValidationError):
        decode_json(b'{"chunks": [{"type": "video", "tokens": [1]}]}', T.ModelInput)


def test_image_chunk_accepts_base64_text_like_the_sdk() -> None:
    assert T.ImageChunk(data="aGk=", format="png").data == b"hi"  # type: ignore[arg-type]


def test_dmel_length_reads_the_container_header() -> None:
    # optional marker 254, dtype byte, varint ndim=2, dims 300 (varint 0xAC 0x02) and 4
    assert T.DmelChunk(dmel=bytes([254, 3, 2, 0xAC, 0x02, 4])).length == 300
    with pytest.raises(ValueError, match="empty"):
        _ = T.DmelChunk(dmel=b"").length


# --- requests on the wire ------------------------------------------------------------------


def test_default_sample_request_sends_only_what_it_must() -> None:
    req = T.SampleRequest(
        prompt=tokens_input(1, 2),
        sampling_params=T.SamplingParams(max_tokens=8),
        sampling_session_id="s",
        seq_id=0,
        record_stability_info=False,
    )
    assert body(req) == {
        "type": "sample",
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": 8, "temperature": 1.0, "top_k": -1, "top_p": 1.0},
        "num_samples": 1,
        "sampling_session_id": "s",
        "seq_id": 0,
    }


def test_non_default_sample_options_are_sent() -> None:
    target = T.TensorData(data=[3, -1], dtype="int64", shape=[2, 1])
    req = T.SampleRequest(
        prompt=tokens_input(1, 2, 3),
        sampling_params=T.SamplingParams(stop=[7, 8], seed=1),
        num_samples=4,
        topk_sample_logprobs=5,
        prompt_alt_tokens_k=2,
        record_stability_info=True,
        prompt_logprobs=False,
        target_prompt_logprobs=target,  # type: ignore[arg-type]
    )
    sent = body(req)
    assert sent["num_samples"] == 4
    assert sent["topk_sample_logprobs"] == 5 and sent["prompt_alt_tokens_k"] == 2
    assert sent["record_stability_info"] is True and sent["prompt_logprobs"] is False
    assert sent["sampling_params"]["stop"] == [7, 8]
    assert sent["target_prompt_logprobs"] == {"data": [3, -1], "dtype": "int64", "shape": [2, 1]}
    assert "topk_prompt_logprobs" not in sent


def test_optimizer_and_kind_defaults_are_left_out() -> None:
    create = T.CreateModelRequest(
        session_id="s",
        model_seq_id=0,
        base_model="m",
        lora_config=T.LoraConfig(rank=8),
        optimizer_config=T.AdamOptimizerConfig(),
    )
    assert body(create) == {
        "type": "create_model",
        "session_id": "s",
        "model_seq_id": 0,
        "base_model": "m",
        "lora_config": {"rank": 8, "train_unembed": True, "train_mlp": True, "train_attn": True},
    }
    create_dimuon = create.model_copy(update={"optimizer_config": T.DimuonOptimizerConfig()})
    assert body(create_dimuon)["optimizer_config"] == {"type": "dimuon", "version": 1}
    save = T.SaveWeightsForSamplerRequest(model_id="m", path="p", seq_id=3)
    assert body(save) == {
        "type": "save_weights_for_sampler",
        "model_id": "m",
        "path": "p",
        "seq_id": 3,
    }
    inflight = T.SaveWeightsForSamplerRequest(
        model_id="m", sampling_session_seq_id=1, kind="inflight"
    )
    assert body(inflight)["kind"] == "inflight"


def test_optim_step_wire_names() -> None:
    adam = T.OptimStepRequest(optim_params=T.AdamParams(learning_rate=1e-3), model_id="m", seq_id=2)
    assert body(adam) == {
        "type": "optim_step",
        "adam_params": {
            "learning_rate": 1e-3,
            "beta1": 0.9,
            "beta2": 0.95,
            "eps": 1e-12,
            "weight_decay": 0.0,
            # grad_clip_norm at 0 (no clipping) is left out: several servers'
            # AdamParams predate it, some with extra="forbid".
        },
        "model_id": "m",
        "seq_id": 2,
    }
    clipped = T.OptimStepRequest(
        optim_params=T.AdamParams(learning_rate=1e-3, grad_clip_norm=1.0), model_id="m")
    assert body(clipped)["adam_params"]["grad_clip_norm"] == 1.0
    dimuon = T.OptimStepRequest(optim_params=T.DimuonParams(learning_rate=0.02), model_id="m")  # type: ignore[arg-type]
    assert body(dimuon)["optimizer_params"] == {
        "type": "dimuon",
        "learning_rate": 0.02,
        "grad_clip_norm": 0.0,
        "beta1": 0.9,
    }
    assert isinstance(dimuon.params, T.DimuonParams) and "adam_params" not in body(dimuon)
    assert decode_json(encode_json(adam), T.OptimStepRequest) == adam
    with pytest.raises(ValueError, match="optim_params"):
        T.OptimStepRequest(model_id="m")


def test_request_tags_are_readable_and_always_sent() -> None:
    hb = T.SessionHeartbeatRequest(session_id="s")
    assert hb.type == "session_heartbeat"
    assert body(hb) == {"type": "session_heartbeat", "session_id": "s"}
    assert body(T.TryAgainResponse(request_id="r"))["type"] == "try_again"
    assert body(
        T.FuturesRetrieveRequest(target=T.SamplingSessionFuturesTarget(sampling_session_id="x"))
    ) == {
        "target": {"type": "sampling_session", "sampling_session_id": "x", "cloned_sampler_id": 0},
        "prev_cursor": 0,
        "retrieved_request_ids": [],  # sent even when empty, as the SDK sends it
    }
    assert body(T.FutureRetrieveRequest(request_id="r")) == {
        "request_id": "r", "allow_metadata_only": False}
    finish = T.FinishSessionRequest(reason=T.ClientSessionFinishSuccess())
    assert body(finish) == {"reason": {"type": "success"}, "detail": None}


# --- responses ------------------------------------------------------------------------------


def test_responses_ignore_unknown_fields_and_default_missing_ones() -> None:
    info = decode_json(
        b'{"model_data": {"model_id": "m", "model_name": "Q", "created_at": "x"}}',
        T.GetInfoResponse,
    )
    assert info.model_data.model_name == "Q" and info.model_id == ""
    assert isinstance(info.optimizer_config, T.AdamOptimizerConfig)
    cfg = decode_json(
        b'{"fwdbwd_max_chunk_len": 7, "brand_new_flag": true}', T.ClientConfigResponse
    )
    assert cfg.fwdbwd_max_chunk_len == 7
    assert cfg.sample_max_concurrent_requests == 2000
    assert cfg.fwdbwd_max_chunk_bytes_count == 5_000_000
    dyn = decode_json(b"{}", T.ClientDynamicConfigResponse)
    assert (
        dyn.refresh_interval_sec,
        dyn.sample_cancel_enabled,
        dyn.sample_cancel_max_batch_size,
    ) == (
        300,
        False,
        64,
    )
    again = decode_json(b'{"type": "try_again"}', T.TryAgainResponse)
    assert again.queue_state == "active"
    failed = decode_json(b'{"error": "boom", "category": "user"}', T.RequestFailedResponse)
    assert failed.category is T.RequestErrorCategory.User and str(failed.category) == "user"


def test_server_variants_decode() -> None:
    caps = decode_json(
        b'{"supported_models": ["A", {"model_name": "B"}], "max_batch_size": 256}',
        T.GetServerCapabilitiesResponse,
    )
    assert [m.model_name for m in caps.supported_models] == ["A", "B"]
    assert caps.max_batch_size == 256
    assert decode_json(b'{"status": "healthy", "version": "1"}', T.HealthResponse).is_healthy
    assert decode_json(b'{"status": "ok"}', T.HealthStatus).is_healthy
    assert not T.HealthResponse(status="degraded").is_healthy
    weights = decode_json(
        b'{"base_model": "Q", "lora_rank": 32, "exists": true}', T.WeightsInfoResponse
    )
    assert weights.is_lora and weights.lora_rank == 32
    ckpt = decode_json(
        b'{"checkpoint_id": "weights/a", "checkpoint_type": "training",'
        b' "time": "2025-01-09T10:00:00Z", "twinkle_path": "twinkle://r/weights/a"}',
        T.Checkpoint,
    )
    assert ckpt.tinker_path == "twinkle://r/weights/a"
    assert ckpt.time == datetime(2025, 1, 9, 10, tzinfo=timezone.utc)
    assert decode_json(b'{"cleaned_count": 15}', T.CleanupFuturesResponse).cleaned_count == 15
    cap = decode_json(b'{"max_loras": 4, "used_loras": 1, "free_loras": 3}', T.CapacityInfo)
    assert (cap.max_loras, cap.used_loras, cap.free_loras) == (4, 1, 3)
    path = decode_json(
        b'{"path": "/ckpt/a", "twinkle_path": "twinkle://r/weights/a"}', T.CheckpointPath
    )
    assert path.path == "/ckpt/a" and path.tinker_path is None
    saved = decode_json(
        b'{"path": "/data/m/step", "tinker_path": "tinker://m/weights/step"}', T.SaveWeightsResponse
    )
    assert saved.tinker_path == "tinker://m/weights/step"


def test_tagged_unions_decode() -> None:
    done = decode_json(
        b'{"completions": [{"state": "finished", "request_id": "a"}, {"state": "failed", "request_id": "b"}],'
        b' "cursor": 9}',
        T.FuturesRetrieveResponse,
    )
    assert [type(c) for c in done.completions] == [T.FutureFinished, T.FutureFailed]
    assert done.completions[0].state == "finished"
    usage = decode_json(
        b'{"data": [{"bucket_start": "2025-01-01T00:00:00Z", "bucket_end": "2025-01-01T01:00:00Z",'
        b' "event_info": {"type": "storage", "gigabyte_hours": 2.5}}]}',
        T.BillingUsageResponse,
    )
    info = usage.data[0].event_info
    assert isinstance(info, T.StorageBillingEvent) and info.gigabyte_hours == 2.5 and not info.free
    summary = decode_json(
        b'{"session_id": "s", "created_at": "2025-01-01T00:00:00Z", "owner": "o", "project_id": "p",'
        b' "checkpoints_count": 1, "status": {"type": "client_finished", "reason": {"type": "success"}}}',
        T.SessionSummary,
    )
    assert isinstance(summary.status, T.ClientSessionFinished)
    assert isinstance(summary.status.reason, T.ClientSessionFinishSuccess)


def test_pydantic_surface() -> None:
    params = T.SamplingParams(max_tokens=4, temperature=0.5)
    assert params.model_dump() == {
        "max_tokens": 4,
        "seed": None,
        "stop": None,
        "temperature": 0.5,
        "top_k": -1,
        "top_p": 1.0,
    }
    assert params.model_dump(exclude_none=True, exclude_defaults=True) == {
        "max_tokens": 4,
        "temperature": 0.5,
    }
    copy = params.model_copy(update={"seed": 3})
    assert copy.seed == 3 and params.seed is None
    assert T.SamplingParams.model_validate(params.model_dump()) == params
    assert T.SamplingParams.model_validate_json(params.model_dump_json()) == params
    assert T.EncodedTextChunk(tokens=[1]).model_dump() == {"type": "encoded_text", "tokens": [1]}
    assert T.ImageChunk(data=b"hi", format="png").model_dump(mode="json")["data"] == "aGk="
    assert T.LoraConfig.model_validate({"rank": "8"}).rank == 8  # lax, as pydantic is
    with pytest.raises(T.ValidationError, match="rank"):
        T.LoraConfig.model_validate({"rank": "eight"})
    with pytest.raises(AttributeError):
        params.max_tokens = 5  # type: ignore[misc]


# --- kinds of types -----------------------------------------------------------------------


def test_dataclass_and_struct_kinds_match_the_sdk() -> None:
    for cls in (
        T.Datum,
        T.TensorData,
        T.SampleResponse,
        T.SampledSequence,
        T.ForwardBackwardOutput,
        T.PromptProvenanceSpan,
        T.SampledProvenanceSpan,
        T.PromptAltTokens,
    ):
        assert dataclasses.is_dataclass(cls), cls
    for cls in (
        T.ModelInput,
        T.EncodedTextChunk,
        T.SamplingParams,
        T.AdamParams,
        T.LoraConfig,
        T.OptimStepResponse,
    ):
        assert not dataclasses.is_dataclass(cls) and issubclass(cls, msgspec.Struct), cls


def test_public_names_are_the_same_objects_everywhere() -> None:
    assert tinker_async.EncodedTextChunk is T.EncodedTextChunk
    assert tinker_async.ParsedCheckpointTinkerPath is T.ParsedCheckpointTinkerPath
    assert tensor_data_module.TensorData is T.TensorData
    for name in T.__all__:
        assert getattr(T, name) is not None, name


# --- TensorData ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        (np.arange(6, dtype=np.int32).reshape(2, 3), "int64"),
        (np.arange(4, dtype=np.uint8), "int64"),
        (np.linspace(0, 1, 6, dtype=np.float64).reshape(3, 2), "float32"),
        (np.ones((2, 2, 2), dtype=np.float16), "float32"),
    ],
)
def test_tensor_numpy_round_trip(array: np.ndarray, dtype: str) -> None:
    td = T.TensorData.from_numpy(array)
    assert td.dtype == dtype and td.shape == list(array.shape)
    out = td.to_numpy()
    assert out.dtype == np.dtype(dtype) and out.shape == array.shape
    np.testing.assert_allclose(out, array.astype(dtype), rtol=1e-6)
    assert td.data == array.astype(dtype).ravel().tolist()
    assert td.tolist() == array.astype(dtype).tolist()
    back = decode_json(encode_json(td), T.TensorData)
    np.testing.assert_array_equal(back.to_numpy(), out)


@pytest.mark.parametrize("array", [np.array([True, False]), np.array([1 + 2j]), np.array(["a"])])
def test_tensor_rejects_other_dtypes(array: np.ndarray) -> None:
    with pytest.raises(ValueError, match="Unsupported numpy dtype"):
        T.TensorData.from_numpy(array)


def test_tensor_constructor_rules() -> None:
    with pytest.raises(TypeError, match="dtype"):
        T.TensorData(data=[1, 2])
    with pytest.raises(ValueError, match="'int64' or 'float32'"):
        T.TensorData(data=[1], dtype="int32")  # type: ignore[arg-type]
    td = T.TensorData(data=[1, 2, 3, 4], dtype="float32", shape=[2, 2])
    assert td.to_numpy().shape == (2, 2) and td.data == [1.0, 2.0, 3.0, 4.0]
    assert T.TensorData(dtype="int64").data == []
    frozen = np.arange(3)
    frozen.flags.writeable = False
    assert T.TensorData.from_numpy(frozen).to_numpy().flags.writeable


def test_tensor_json_leaves_out_none_fields_and_reads_null_as_nan() -> None:
    assert body(T.TensorData(data=[1.5], dtype="float32")) == {"data": [1.5], "dtype": "float32"}
    td = decode_json(b'{"data": [1.0, null], "dtype": "float32"}', T.TensorData)
    assert td.data[0] == 1.0 and math.isnan(td.data[1])


def test_tensor_sparse_csr_round_trip() -> None:
    dense = np.full((4, 6), -1, dtype=np.int64)
    dense[0, 2], dense[2, 5], dense[3, 0] = 10, 11, 12
    td = T.TensorData.from_numpy_sparse(dense, pad_value=-1)
    assert td.is_sparse
    assert td.sparse_crow_indices == [0, 1, 1, 2, 3]
    assert td.sparse_col_indices == [2, 5, 0]
    assert td.data == [10, 11, 12] and td.shape == [4, 6]
    np.testing.assert_array_equal(td.to_numpy(pad_value=-1), dense)
    zero_padded = td.to_numpy()
    assert zero_padded[1].tolist() == [0] * 6 and zero_padded[0, 2] == 10
    wire = body(td)
    assert wire["sparse_crow_indices"] == [0, 1, 1, 2, 3]
    np.testing.assert_array_equal(decode_json(encode_json(td), T.TensorData).to_numpy(-1), dense)
    with pytest.raises(TypeError, match="pad_value"):
        td.to_numpy(pad_value=0.5)  # type: ignore[arg-type]


def test_sparse_falls_back_to_dense_when_not_smaller() -> None:
    assert not T.TensorData.from_numpy_sparse(np.arange(1, 7).reshape(2, 3)).is_sparse
    assert not T.TensorData.from_numpy_sparse(np.zeros(5)).is_sparse


def test_invalid_csr_is_refused_clearly() -> None:
    bad = T.TensorData(
        data=[1, 2],
        dtype="int64",
        shape=[2, 2],
        sparse_crow_indices=[0, 1],
        sparse_col_indices=[0, 1],
    )
    with pytest.raises(ValueError, match="nrows"):
        bad.to_numpy()
    with pytest.raises(ValueError, match="shape"):
        T.TensorData(data=[1], dtype="int64", sparse_crow_indices=[0, 1], sparse_col_indices=[0])


def test_torch_conversions_say_how_to_install_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed")
    td = T.TensorData(data=[1], dtype="int64")
    with pytest.raises(T.TorchNotInstalledError, match=r"tinker-async\[torch\]"):
        td.to_torch()
    with pytest.raises(ImportError):
        T.TensorData.from_torch(object())  # type: ignore[arg-type]


def test_tensor_pickles_and_replaces() -> None:
    td = T.TensorData.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    back = pickle.loads(pickle.dumps(td))
    np.testing.assert_array_equal(back.to_numpy(), td.to_numpy())
    reshaped = dataclasses.replace(td, shape=[3, 2])
    assert reshaped.to_numpy().shape == (3, 2) and reshaped.data == td.data


# --- Datum --------------------------------------------------------------------------------


def test_datum_converts_lists_by_key_and_by_value() -> None:
    datum = T.Datum(
        model_input=tokens_input(1, 2, 3),
        loss_fn_inputs={
            "target_tokens": [2, 3, 4],
            "weights": [1, 1, 0],
            "advantages": [1, 2, 3],
            "my_mask": [1, 0, 1],
            "my_scale": [0.5, 1],
            "grid": [[1, 2], [3, 4]],
            "arr": np.array([1.0, 2.0]),
        },
    )
    dtypes = {k: (v.dtype, v.shape) for k, v in datum.loss_fn_inputs.items()}
    assert dtypes == {
        "target_tokens": ("int64", [3]),
        "weights": ("float32", [3]),
        "advantages": ("float32", [3]),
        "my_mask": ("int64", [3]),
        "my_scale": ("float32", [2]),
        "grid": ("int64", [2, 2]),
        "arr": ("float32", [2]),
    }
    assert datum.loss_fn_inputs["target_tokens"].data == [2, 3, 4]


def test_datum_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"'target_tokens'.*ragged"):
        T.Datum(model_input=tokens_input(1), loss_fn_inputs={"target_tokens": [[1, 2], [3]]})
    with pytest.raises(ValueError, match=r"'labels'.*numbers"):
        T.Datum(model_input=tokens_input(1), loss_fn_inputs={"labels": ["a", "b"]})
    with pytest.raises(TypeError, match="'weights'"):
        T.Datum(model_input=tokens_input(1), loss_fn_inputs={"weights": 3.0})  # type: ignore[dict-item]


def test_datum_replace_converts_again() -> None:
    datum = T.Datum(model_input=tokens_input(1, 2), loss_fn_inputs={"target_tokens": [2, 3]})
    replaced = dataclasses.replace(datum, loss_fn_inputs={"weights": np.ones(2)})
    assert isinstance(replaced.loss_fn_inputs["weights"], T.TensorData)
    assert replaced.model_input is datum.model_input
    with pytest.raises(dataclasses.FrozenInstanceError):
        datum.model_input = tokens_input(9)  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(datum)).loss_fn_inputs["target_tokens"].data == [2, 3]


def test_datum_provenance() -> None:
    datum = T.Datum(model_input=tokens_input(1, 2, 3), loss_fn_inputs={"target_tokens": [2, 3, 4]})
    spans_in: T.ProvenanceSpans = [
        T.PromptProvenanceSpan(sequence_id="a", length=2),
        T.SampledProvenanceSpan(sequence_id="b", offset=0, length=1),
    ]
    spans_out: T.ProvenanceSpans = [T.SampledProvenanceSpan(sequence_id="b", length=3)]
    with_spans = datum.with_provenance(model_input=spans_in, loss_fn_inputs=spans_out)
    assert with_spans.model_input_spans == spans_in
    assert datum.model_input_spans is None
    with pytest.raises(ValueError, match="cover 2 positions"):
        datum.with_provenance(model_input=spans_in[:1], loss_fn_inputs=spans_out)
    with pytest.raises(ValueError, match="pair"):
        T.Datum(model_input=tokens_input(1), model_input_spans=spans_in)
    with pytest.raises(ValueError, match="non-empty"):
        T.PromptProvenanceSpan(sequence_id="", length=1)
    with pytest.raises(ValueError, match=">= 0"):
        T.SampledProvenanceSpan(sequence_id="x", length=-1)
    sent = body(with_spans)
    assert sent["model_input_spans"][0] == {"prompt_tokens": {"sequence_id": "a", "length": 2}}
    assert decode_json(encode_json(with_spans), T.Datum).loss_fn_input_spans == spans_out
    assert "model_input_spans" not in body(datum)


def test_forward_backward_request_json_forms() -> None:
    datum = T.Datum(model_input=tokens_input(1, 2), loss_fn_inputs={"target_tokens": [2, 3]})
    request = T.ForwardBackwardRequest(
        forward_backward_input=T.ForwardBackwardInput(
            data=[datum], loss_fn="ppo", loss_fn_config={"clip_low_threshold": 0.8}
        ),
        model_id="m",
        seq_id=1,
    )
    sent = body(request)
    assert set(sent) == {"forward_backward_input", "model_id", "seq_id"}
    assert sent["forward_backward_input"]["loss_fn"] == "ppo"
    back = decode_json(encode_json(request), T.ForwardBackwardRequest)
    assert back.forward_backward_input.data[0].loss_fn_inputs["target_tokens"].data == [2, 3]
    flat = (
        b'{"model_id": "m", "loss_fn": "cross_entropy", "data": [{"model_input": {"chunks":'
        b' [{"tokens": [1, 2]}]}, "loss_fn_inputs": {"target_tokens": {"data": [2, 3], "dtype": "int64"}}}]}'
    )
    forward = decode_json(flat, T.ForwardRequest)
    assert forward.forward_input.loss_fn == "cross_entropy"
    assert forward.forward_input.data[0].model_input.to_ints() == [1, 2]


# --- sampling results --------------------------------------------------------------------


def test_sampled_sequence_from_lists_and_from_arrays() -> None:
    seq = T.SampledSequence(stop_reason="stop", tokens=[1, 2], logprobs=[-0.5, -1.0])
    assert seq.tokens == [1, 2] and seq.logprobs == [-0.5, -1.0]
    assert seq.tokens_np is not None and seq.tokens_np.dtype == np.int32
    np.testing.assert_allclose(seq.logprobs_np, [-0.5, -1.0])  # type: ignore[arg-type]
    assert seq.topk_logprobs is None and seq.sequence_id is None
    from_np = T.SampledSequence(
        stop_reason="length",
        sequence_id="s1",
        tokens_np=np.array([3, 4], dtype=np.int32),
        logprobs_np=np.array([-1.0, -2.0], dtype=np.float32),
    )
    assert from_np.tokens == [3, 4] and from_np.logprobs == [-1.0, -2.0]
    legacy = T.SampledSequence(stop_reason="stop", sequence_id="x", _tokens_list=[7])
    assert legacy.tokens == [7]


def test_sequence_id_is_the_only_settable_field() -> None:
    seq = T.SampledSequence(stop_reason="stop", tokens=[1])
    seq.sequence_id = "abc"
    assert seq.sequence_id == "abc"
    with pytest.raises(dataclasses.FrozenInstanceError):
        seq.stop_reason = "length"  # type: ignore[misc]
    stamped = dataclasses.replace(seq, sequence_id="def")
    assert stamped.sequence_id == "def" and stamped.tokens == [1] and seq.sequence_id == "abc"


def test_topk_lists_and_matrices_agree() -> None:
    rows = [[(5, -0.1), (6, -2.0)], None, [(7, -0.3)]]
    seq = T.SampledSequence(stop_reason="stop", tokens=[5, 9, 7], topk_logprobs=rows)  # type: ignore[arg-type]
    topk = seq.topk_logprobs_np
    assert topk is not None and topk.token_ids.shape == (3, 2)
    assert topk.token_ids[1].tolist() == [0, 0] and topk.logprobs[2, 1] == -99999.0
    from_np = T.SampledSequence(stop_reason="stop", tokens=[5, 9, 7], topk_logprobs_np=topk)
    assert from_np.topk_logprobs == [
        [(5, pytest.approx(-0.1)), (6, -2.0)],
        None,
        [(7, pytest.approx(-0.3))],
    ]


def test_sample_response_prompt_logprobs_views() -> None:
    resp = T.SampleResponse(
        sequences=[], prompt_logprobs_np=np.array([np.nan, -0.5], dtype=np.float32)
    )
    assert resp.prompt_logprobs == [None, -0.5]
    from_list = T.SampleResponse(sequences=[], prompt_logprobs=[None, -0.25])
    np.testing.assert_array_equal(from_list.prompt_logprobs_np, [np.nan, -0.25])  # type: ignore[arg-type]
    assert T.SampleResponse(sequences=[]).prompt_logprobs is None
    assert pickle.loads(pickle.dumps(from_list)).prompt_logprobs == [None, -0.25]


def test_sample_response_json_from_other_servers() -> None:
    raw = (
        b'{"sequences": [{"tokens": [4, 5], "logprobs": [-1.2, -0.8], "finish_reason": "stop"},'
        b' {"tokens": [6], "stop_reason": "length", "sequence_id": "q:1"},'
        b' {"tokens": [], "finish_reason": "max_tokens"}],'
        b' "prompt_logprobs": [null, -0.5], "prompt_cache_hit_tokens": 3, "unknown": 1}'
    )
    resp = decode_sample_response_json(raw)
    assert [s.stop_reason for s in resp.sequences] == ["stop", "length", "length"]
    assert [s.sequence_id for s in resp.sequences] == [None, "q:1", None]
    assert resp.sequences[0].tokens == [4, 5] and resp.sequences[1].logprobs is None
    assert resp.prompt_logprobs == [None, -0.5] and resp.prompt_cache_hit_tokens == 3
    again = decode_sample_response_json(encode_json(resp))
    assert again == resp
    assert body(resp)["sequences"][1] == {
        "tokens": [6],
        "stop_reason": "length",
        "sequence_id": "q:1",
    }
    nulls = decode_sample_response_json(b'{"sequences": [{"tokens": [1], "logprobs": [null]}]}')
    # A null (NaN on the JSON wire) stays None in the list view and is NaN in the array.
    assert nulls.sequences[0].logprobs == [None]
    assert np.isnan(nulls.sequences[0].logprobs_np).all()  # type: ignore[arg-type]


def test_sample_response_extras_round_trip() -> None:
    alt = T.PromptAltTokens(
        tokens=T.TensorData.from_numpy(np.array([[1, 2]])),
        logprobs=T.TensorData.from_numpy(np.array([[-0.1, -0.2]], dtype=np.float32)),
    )
    resp = T.SampleResponse(
        sequences=[T.SampledSequence(stop_reason="stop", tokens=[1])],
        target_prompt_logprobs=T.TensorData(data=[-0.5], dtype="float32", shape=[1, 1]),
        prompt_alt_tokens=alt,
        topk_prompt_logprobs=[None, [(3, -0.5)]],
    )
    back = decode_sample_response_json(encode_json(resp))
    assert back.prompt_alt_tokens is not None
    assert back.prompt_alt_tokens.tokens.tolist() == [[1, 2]]
    assert back.target_prompt_logprobs is not None and back.target_prompt_logprobs.shape == [1, 1]
    assert back.topk_prompt_logprobs == [None, [(3, -0.5)]]


def test_forward_backward_output_json() -> None:
    raw = (
        b'{"loss_fn_outputs": [{"logprobs": {"data": [-2.0, -1.5], "dtype": "float32"}}],'
        b' "metrics": {"loss:sum": 3.5, "nan:mean": null}}'
    )
    out = decode_forward_backward_output_json(raw)
    assert out.loss_fn_output_type == ""
    assert out.loss_fn_outputs[0]["logprobs"].tolist() == [-2.0, -1.5]
    assert out.metrics["loss:sum"] == 3.5 and math.isnan(out.metrics["nan:mean"])
    again = decode_forward_backward_output_json(encode_json(out))
    assert again.loss_fn_outputs[0]["logprobs"].data == [-2.0, -1.5]
    replaced = dataclasses.replace(out, metrics={})
    assert replaced.metrics == {} and replaced.loss_fn_outputs is out.loss_fn_outputs


def test_to_builtins_and_from_builtins() -> None:
    datum = T.Datum(model_input=tokens_input(1), loss_fn_inputs={"weights": [1.0]})
    envelope = {"status": "completed", "result": [datum], "n": np.int64(3)}
    built = to_builtins(envelope)
    assert built["n"] == 3
    assert built["result"][0]["loss_fn_inputs"]["weights"] == {
        "data": [1.0],
        "dtype": "float32",
        "shape": [1],
    }
    back = from_builtins(built["result"][0], T.Datum)
    assert back.loss_fn_inputs["weights"].data == [1.0]
    assert from_builtins({"chunks": [{"tokens": [1]}]}, T.ModelInput).to_ints() == [1]
    assert json.loads(encode_json({"a": np.arange(3), "b": np.float32(0.5)})) == {
        "a": [0, 1, 2],
        "b": 0.5,
    }


# --- compatibility with the official SDK ------------------------------------------------------

# Public names of ``tinker.types`` that are not types of the API.
_NOT_API_NAMES = {
    "annotations",  # the `from __future__ import annotations` feature object
}


def _official() -> pytypes.ModuleType:
    return pytest.importorskip("tinker.types")


def test_every_official_type_name_exists() -> None:
    official = _official()
    names = {
        n
        for n in dir(official)
        if not n.startswith("_") and not isinstance(getattr(official, n), pytypes.ModuleType)
    }
    missing = names - _NOT_API_NAMES - set(T.__all__)
    assert not missing


def _struct_fields(cls: type[msgspec.Struct]) -> set[str]:
    config = cls.__struct_config__
    return set(cls.__struct_fields__) | ({config.tag_field} if config.tag_field else set())


def test_field_names_cover_the_official_ones() -> None:
    official = _official()
    import pydantic

    for name in T.__all__:
        theirs, ours = getattr(official, name, None), getattr(T, name)
        if isinstance(theirs, type) and issubclass(theirs, pydantic.BaseModel):
            assert set(theirs.model_fields) <= _struct_fields(ours), name
        elif isinstance(theirs, type) and dataclasses.is_dataclass(theirs):
            theirs_fields = {f.name for f in dataclasses.fields(theirs)} - {"_numpy"}
            assert theirs_fields <= {f.name for f in dataclasses.fields(ours)}, name  # type: ignore[arg-type]


def _official_bodies() -> list[tuple[Any, type]]:
    o = _official()
    mi = o.ModelInput(
        chunks=[
            o.EncodedTextChunk(tokens=[1, 2]),
            o.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=4),
        ]
    )
    return [
        (
            o.SampleRequest(
                prompt=mi,
                sampling_params=o.SamplingParams(max_tokens=5, stop=["x"], temperature=0.7),
                num_samples=2,
                sampling_session_id="ss",
                seq_id=3,
                prompt_logprobs=True,
                topk_prompt_logprobs=2,
            ),
            T.SampleRequest,
        ),
        (
            o.CreateModelRequest(
                session_id="s",
                model_seq_id=0,
                base_model="Qwen/Qwen3-8B",
                lora_config=o.LoraConfig(rank=16, seed=3),
                user_metadata={"a": 1},
            ),
            T.CreateModelRequest,
        ),
        (
            o.OptimStepRequest(
                optim_params=o.AdamParams(learning_rate=2e-4), model_id="m", seq_id=4
            ),
            T.OptimStepRequest,
        ),
        (
            o.OptimStepRequest(optim_params=o.DimuonParams(learning_rate=0.1), model_id="m"),
            T.OptimStepRequest,
        ),
        (
            o.SaveWeightsRequest(model_id="m", path="p", seq_id=5, ttl_seconds=3600),
            T.SaveWeightsRequest,
        ),
        (
            o.SaveWeightsForSamplerRequest(model_id="m", sampling_session_seq_id=1, seq_id=6),
            T.SaveWeightsForSamplerRequest,
        ),
        (
            o.LoadWeightsRequest(
                session_id="s", model_seq_id=1, path="tinker://r/weights/a", optimizer=True
            ),
            T.LoadWeightsRequest,
        ),
        (
            o.CreateSessionRequest(tags=["t"], user_metadata=None, sdk_version="0.38.0"),
            T.CreateSessionRequest,
        ),
        (
            o.CreateSamplingSessionRequest(
                session_id="s", sampling_session_seq_id=0, base_model="b"
            ),
            T.CreateSamplingSessionRequest,
        ),
        (
            o.FuturesRetrieveRequest(
                target=o.SamplingSessionFuturesTarget(sampling_session_id="x"), timeout=5.0
            ),
            T.FuturesRetrieveRequest,
        ),
        (
            o.FutureRetrieveRequest(request_id="r", allow_metadata_only=True),
            T.FutureRetrieveRequest,
        ),
        (
            o.CopyWeightsRequest(source_path="tinker://r/weights/a", destination_project_id="p"),
            T.CopyWeightsRequest,
        ),
        (
            o.Checkpoint(
                checkpoint_id="weights/a",
                checkpoint_type="training",
                time=datetime(2025, 1, 1, tzinfo=timezone.utc),
                tinker_path="tinker://r/weights/a",
                size_bytes=10,
            ),
            T.Checkpoint,
        ),
        (
            o.GetInfoResponse(
                model_data=o.ModelData(model_name="Q"), model_id="m", is_lora=True, lora_rank=8
            ),
            T.GetInfoResponse,
        ),
        (o.WeightsInfoResponse(base_model="Q", is_lora=True, lora_rank=8), T.WeightsInfoResponse),
        (o.UntypedAPIFuture(request_id="r", sample_sequence_ids=["a", "b"]), T.UntypedAPIFuture),
        (o.ClientConfigResponse(), T.ClientConfigResponse),
        (
            o.SessionSearchRequest(
                statuses=[o.ClientFinishedSessionStatusQuery(reasons=["success"])], limit=10
            ),
            T.SessionSearchRequest,
        ),
    ]


def test_official_json_bodies_decode_into_our_types() -> None:
    for theirs, our_type in _official_bodies():
        sent = theirs.model_dump(exclude_none=True, mode="json")
        ours = decode_json(json.dumps(sent).encode(), our_type)
        our_body = body(ours)
        # We send a subset (defaults left out), and every value we send is theirs.
        for key, value in our_body.items():
            assert key in sent, (our_type.__name__, key)
            assert value == sent[key], (our_type.__name__, key)
        # What we leave out is at its default.
        for key in set(sent) - set(our_body):
            default = type(theirs).model_fields[key].get_default(call_default_factory=True)
            if hasattr(default, "model_dump"):
                default = default.model_dump(mode="json")
            assert sent[key] == default, (our_type.__name__, key)


def test_datum_and_tensors_match_the_official_dataclasses() -> None:
    o = _official()
    inputs = {"target_tokens": [1, 2, 3], "weights": np.array([0.0, 1.0, 1.0])}
    theirs = o.Datum(model_input=o.ModelInput.from_ints([4, 5, 6]), loss_fn_inputs=dict(inputs))
    ours = T.Datum(model_input=T.ModelInput.from_ints([4, 5, 6]), loss_fn_inputs=dict(inputs))
    for key, td in theirs.loss_fn_inputs.items():
        assert ours.loss_fn_inputs[key].dtype == td.dtype
        assert ours.loss_fn_inputs[key].shape == td.shape
        np.testing.assert_array_equal(ours.loss_fn_inputs[key].to_numpy(), td.to_numpy())
        assert ours.loss_fn_inputs[key].data == td.data


def test_constructor_signatures_accept_the_official_keywords() -> None:
    import inspect

    o = _official()
    for name in (
        "SampledSequence",
        "SampleResponse",
        "TensorData",
        "Datum",
        "ForwardBackwardOutput",
    ):
        theirs = set(inspect.signature(getattr(o, name)).parameters)
        ours = set(inspect.signature(getattr(T, name)).parameters)
        assert theirs <= ours, name


def test_token_arrays_are_checked_and_compare_like_lists() -> None:
    array = T.EncodedTextChunk(tokens=np.array([1, 2, 3], dtype=np.int64))
    assert array == T.EncodedTextChunk(tokens=[1, 2, 3])
    assert hash(array) == hash(T.EncodedTextChunk(tokens=[1, 2, 3]))
    assert array != T.EncodedTextChunk(tokens=[1, 2])
    assert array.length == 3
    for bad, why in [(np.zeros((2, 2), dtype=np.int32), "1-D"),
                     (np.array([1.5]), "1-D integers"),
                     (np.array([2**31]), "int32"),
                     (np.array(7), "1-D")]:
        with pytest.raises(ValueError, match=why):
            T.EncodedTextChunk(tokens=bad)
