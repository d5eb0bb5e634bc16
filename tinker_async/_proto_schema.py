"""The Tinker protobuf schema: one table per message, the only place field numbers live.

These mirror ``tinker_public.proto`` (package ``tinker_public``, proto3) as the official SDK
0.38 generates it (``tinker.proto.tinker_public_pb2``), for the three messages that travel as
protobuf and everything they contain: a ``ForwardBackwardRequest`` (sent by the client),
a ``ForwardBackwardOutput`` and a ``SampleResponse`` (sent by servers). The reader
(:func:`tinker_async._proto_wire.decode`) walks these tables; the writers in
:mod:`tinker_async._proto` and :mod:`tinker_async.local._proto_server` take every key from
them (``TENSOR["dense"]``); ``tests/test_proto_schema.py`` checks them against the official
descriptors field by field. A new field is one row here, then its conversion to and from
our types in the codec.

Every ``bytes`` array is little-endian and row-major: tokens and token ids int32, logprobs
float32, offsets and CSR indices int64, tensor data as its ``DType`` says.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from ._proto_wire import (
    BOOL,
    BYTES,
    DOUBLE,
    ENUM,
    INT32,
    INT64,
    MAP,
    MESSAGE,
    STRING,
    UINT32,
    Field,
    Message,
    map_entry,
)

__all__ = [
    "ARRAY_RECORD",
    "BATCHED_TENSOR",
    "CHUNK",
    "DATUM",
    "DMEL_CHUNK",
    "ENCODED_TEXT_CHUNK",
    "FORWARD_BACKWARD_OUTPUT",
    "FORWARD_BACKWARD_REQUEST",
    "IMAGE_CHUNK",
    "IMAGE_DIMENSIONS",
    "LOSS_CONFIG_VALUE",
    "MESSAGES",
    "PROMPT_ALT_TOKENS",
    "PROMPT_PROVENANCE_SPAN",
    "PROVENANCE_SPAN",
    "SAMPLED_PROVENANCE_SPAN",
    "SAMPLED_SEQUENCE",
    "SAMPLE_RESPONSE",
    "SPARSE_CSR",
    "TENSOR",
    "TOPK_LOGPROBS",
    "DType",
    "StopReasonCode",
]


class DType(IntEnum):
    """``tinker_public.DType``: the element type of a ``Tensor`` or ``BatchedTensor``."""

    UNSPECIFIED = 0
    FLOAT32 = 1
    INT64 = 2
    INT32 = 3
    BFLOAT16 = 4


class StopReasonCode(IntEnum):
    """``tinker_public.StopReason``: why a sampled sequence ended."""

    STOP = 0
    LENGTH = 1


# --- ForwardBackwardRequest -----------------------------------------------------------------

ENCODED_TEXT_CHUNK: Final = Message("EncodedTextChunk", [Field(1, "tokens", BYTES)])  # int32
IMAGE_DIMENSIONS: Final = Message(
    "ImageDimensions", [Field(1, "width", UINT32), Field(2, "height", UINT32)]
)
IMAGE_CHUNK: Final = Message(
    "ImageChunk",
    [
        Field(1, "data", BYTES),
        Field(2, "format", STRING),
        Field(3, "expected_tokens", INT32, optional=True),
        # Read and ignored: the SDK's types have no counterpart.
        Field(4, "override_dimensions", MESSAGE, message=IMAGE_DIMENSIONS, optional=True),
    ],
)
DMEL_CHUNK: Final = Message("DmelChunk", [Field(1, "dmel", BYTES)])
CHUNK: Final = Message(
    "Chunk",
    [
        Field(1, "encoded_text", MESSAGE, message=ENCODED_TEXT_CHUNK, oneof="chunk"),
        Field(2, "image", MESSAGE, message=IMAGE_CHUNK, oneof="chunk"),
        Field(3, "dmel", MESSAGE, message=DMEL_CHUNK, oneof="chunk"),
    ],
)

SPARSE_CSR: Final = Message(
    "SparseCsr",
    [
        Field(1, "values", BYTES),
        Field(2, "crow_indices", BYTES),  # int64
        Field(3, "col_indices", BYTES),  # int64
    ],
)
TENSOR: Final = Message(
    "Tensor",
    [
        Field(1, "dense", BYTES, oneof="encoding"),
        Field(2, "sparse_csr", MESSAGE, message=SPARSE_CSR, oneof="encoding"),
        Field(3, "dtype", ENUM),  # DType
        Field(4, "shape", INT64, repeated=True),
    ],
)


def _span_arm(name: str) -> Message:
    return Message(
        name, [Field(1, "sequence_id", STRING), Field(2, "offset", INT64), Field(3, "length", INT64)]
    )


PROMPT_PROVENANCE_SPAN: Final = _span_arm("PromptProvenanceSpan")
SAMPLED_PROVENANCE_SPAN: Final = _span_arm("SampledProvenanceSpan")
PROVENANCE_SPAN: Final = Message(
    "ProvenanceSpan",
    [
        Field(1, "prompt_tokens", MESSAGE, message=PROMPT_PROVENANCE_SPAN, oneof="span"),
        Field(2, "sampled_tokens", MESSAGE, message=SAMPLED_PROVENANCE_SPAN, oneof="span"),
    ],
)

DATUM: Final = Message(
    "Datum",
    [
        Field(1, "model_input", MESSAGE, repeated=True, message=CHUNK),
        Field(2, "loss_fn_inputs", MAP, message=map_entry("LossFnInputsEntry", MESSAGE, TENSOR)),
        Field(3, "model_input_spans", MESSAGE, repeated=True, message=PROVENANCE_SPAN),
        Field(4, "loss_fn_input_spans", MESSAGE, repeated=True, message=PROVENANCE_SPAN),
    ],
)
LOSS_CONFIG_VALUE: Final = Message(
    "LossConfigValue",
    [Field(1, "number", DOUBLE, oneof="value"), Field(2, "text", STRING, oneof="value")],
)
FORWARD_BACKWARD_REQUEST: Final = Message(
    "ForwardBackwardRequest",
    [
        Field(1, "model_id", STRING),
        Field(2, "seq_id", INT32),
        Field(3, "data", MESSAGE, repeated=True, message=DATUM),
        Field(4, "loss_fn", STRING),
        Field(5, "loss_fn_config", MAP, message=map_entry("LossFnConfigEntry", DOUBLE)),  # legacy
        Field(6, "forward_only", BOOL),
        Field(
            7,
            "loss_fn_config_v2",
            MAP,
            message=map_entry("LossFnConfigV2Entry", MESSAGE, LOSS_CONFIG_VALUE),
        ),
    ],
)

# --- ForwardBackwardOutput ------------------------------------------------------------------

BATCHED_TENSOR: Final = Message(
    "BatchedTensor",
    [
        Field(1, "data", BYTES),  # every datum's array, concatenated
        Field(2, "offsets", BYTES),  # int64 byte offsets into data, one per datum and one more
        Field(3, "dtype", ENUM),  # DType
        Field(4, "trailing_shape", INT64, repeated=True),
    ],
)
ARRAY_RECORD: Final = Message(
    "ArrayRecord",
    [
        Field(1, "type_tag", STRING),
        Field(2, "fields", MAP, message=map_entry("FieldsEntry", MESSAGE, BATCHED_TENSOR)),
        Field(3, "num_datums", INT64),
    ],
)
FORWARD_BACKWARD_OUTPUT: Final = Message(
    "ForwardBackwardOutput",
    [
        Field(1, "loss_fn_output_type", STRING),
        Field(2, "loss_fn_outputs", MESSAGE, repeated=True, message=ARRAY_RECORD),
        Field(3, "metrics", MAP, message=map_entry("MetricsEntry", DOUBLE)),
    ],
)

# --- SampleResponse -------------------------------------------------------------------------

TOPK_LOGPROBS: Final = Message(
    "TopkLogprobs",
    [
        Field(1, "token_ids", BYTES),  # int32, length x k
        Field(2, "logprobs", BYTES),  # float32, length x k
        Field(3, "k", UINT32),
        Field(4, "length", UINT32),
    ],
)
SAMPLED_SEQUENCE: Final = Message(
    "SampledSequence",
    [
        Field(1, "stop_reason", ENUM),  # StopReasonCode
        Field(2, "tokens", BYTES),  # int32
        Field(3, "logprobs", BYTES, optional=True),  # float32
        Field(4, "topk_sampled_logprobs", MESSAGE, message=TOPK_LOGPROBS, optional=True),
    ],
)
PROMPT_ALT_TOKENS: Final = Message(
    "PromptAltTokens",
    [
        Field(1, "tokens", MESSAGE, message=TENSOR),
        Field(2, "logprobs", MESSAGE, message=TENSOR),
    ],
)
SAMPLE_RESPONSE: Final = Message(
    "SampleResponse",
    [
        Field(1, "sequences", MESSAGE, repeated=True, message=SAMPLED_SEQUENCE),
        Field(2, "prompt_logprobs", BYTES, optional=True),  # float32
        Field(3, "topk_prompt_logprobs", MESSAGE, message=TOPK_LOGPROBS, optional=True),
        Field(4, "prompt_cache_hit_tokens", INT32),
        Field(5, "target_prompt_logprobs", MESSAGE, message=TENSOR, optional=True),
        Field(6, "prompt_alt_tokens", MESSAGE, message=PROMPT_ALT_TOKENS, optional=True),
    ],
)

# Every message above (map entries are reached through their fields).
MESSAGES: Final[tuple[Message, ...]] = (
    ENCODED_TEXT_CHUNK, IMAGE_DIMENSIONS, IMAGE_CHUNK, DMEL_CHUNK, CHUNK, SPARSE_CSR, TENSOR,
    PROMPT_PROVENANCE_SPAN, SAMPLED_PROVENANCE_SPAN, PROVENANCE_SPAN, DATUM, LOSS_CONFIG_VALUE,
    FORWARD_BACKWARD_REQUEST, BATCHED_TENSOR, ARRAY_RECORD, FORWARD_BACKWARD_OUTPUT,
    TOPK_LOGPROBS, SAMPLED_SEQUENCE, PROMPT_ALT_TOKENS, SAMPLE_RESPONSE,
)
