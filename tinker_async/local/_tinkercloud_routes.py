"""tinkercloud's routes beyond the official protocol (seed ``004``): ``delete_model``,
``GET get_tokenizer`` and ``create_sampling_client`` (an alias of
``create_sampling_session``). Mounted only in the tinkercloud dialect."""

from __future__ import annotations

import msgspec
from aiohttp import web

from .. import types as t
from ._errors import json_response, not_found
from ._models import registry
from ._routing import Route, context, route
from ._session_routes import create_sampling_session
from ._tokenizer import SPECIAL_TOKENS, VOCAB_SIZE, ByteTokenizer
from ._validate import convert_query, read_request

__all__ = ["ROUTES"]


class _TokenizerQuery(msgspec.Struct, kw_only=True, frozen=True):
    """``GET get_tokenizer?model_id=`` (a query string: converted by ``convert_query``)."""

    model_id: str


async def delete_model(request: web.Request) -> web.Response:
    """``POST delete_model {"model_id"}``: free the model; later calls on it are 404s."""
    ctx = context(request)
    body = await read_request(request, t.DeleteModelRequest, strict=ctx.dialect.strict_fields)
    model_id = body.model_id
    ctx.state.get_run(model_id)  # 404 for an unknown model
    registry(ctx).delete_model(model_id)
    return json_response({"status": "deleted", "model_id": model_id})


async def get_tokenizer(request: web.Request) -> web.Response:
    """``GET get_tokenizer?model_id=``: the tokenizer's configuration as JSON."""
    ctx = context(request)
    model_id = convert_query(request.query, _TokenizerQuery).model_id
    ctx.state.get_run(model_id)
    if registry(ctx).is_deleted(model_id):
        raise not_found(f"Model {model_id} was deleted")
    tokenizer = ByteTokenizer()
    return json_response({
        "name_or_path": tokenizer.name_or_path,
        "model": {"type": "ByteLevel", "vocab_size": VOCAB_SIZE},
        "added_tokens": [{"id": i, "content": text, "special": True}
                         for i, text in SPECIAL_TOKENS.items()],
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "model_max_length": tokenizer.model_max_length,
    })


def _tinkercloud(dialect: object) -> bool:
    return getattr(dialect, "future_shape", None) == "tinkercloud"


ROUTES: tuple[Route, ...] = (
    route("POST", "/delete_model", delete_model, when=_tinkercloud),
    route("GET", "/get_tokenizer", get_tokenizer, when=_tinkercloud),
    route("POST", "/create_sampling_client", create_sampling_session, when=_tinkercloud),
)
