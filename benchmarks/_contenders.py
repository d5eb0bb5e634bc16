"""The contenders: one way each of sampling (and training) against the benchmark server.

Every contender runs in a fresh subprocess (``benchmarks/_worker.py``), so imports, RSS,
threads and CPU are its own. Libraries are imported inside the functions, never at module
level, so a worker only loads what its contender needs.

- ``floor``: raw aiohttp, the same HTTP exchanges as a client (``POST asample``, then
  ``POST retrieve_future`` with ``Accept: application/x-protobuf``), no decoding, no
  library around it. The lower bound of client CPU per request.
- ``ours``: ``tinker_async``, async forms on the caller's loop: ``await sc.sample_async()``.
- ``ours_plain``: ``tinker_async`` used as cookbook code uses the official SDK: plain
  methods awaited in async code (``await sc.sample()``), which makes the background loop
  the client's home and hops there and back for every call.
- ``ours_sync``: ``tinker_async`` sync forms from a pool of threads: ``sc.sample()``
  returns an APIFuture, ``.result()`` blocks the thread.
- ``official``: the ``tinker`` 0.38 SDK, plain methods awaited in async code, as the
  cookbook does (``await sampling_client.sample(...)``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

BASE_MODEL = "local/byte-lm"
PROMPT_TOKENS = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 32, 84, 104,
                 105, 115, 32, 105, 115, 32, 97, 32, 112, 114, 111, 109, 112, 116, 46, 32]
MAX_TOKENS = 16

ASYNC_CONTENDERS = ("floor", "ours", "ours_plain", "official")
SYNC_CONTENDERS = ("ours_sync",)
ALL_CONTENDERS = ("floor", "ours", "ours_plain", "ours_sync", "official")

LABELS = {
    "floor": "raw aiohttp floor",
    "ours": "tinker_async async",
    "ours_plain": "tinker_async plain-awaited",
    "ours_sync": "tinker_async sync+threads",
    "official": "official tinker 0.38",
    "ours_np": "tinker_async, numpy tokens",
}


# ------------------------------------------------------------------------------- sampling


class AsyncSampler:
    """``sample()`` is one full sample (submit, wait, result) as a coroutine."""

    sample: Callable[[], Awaitable[Any]]

    async def close(self) -> None:  # pragma: no cover - overridden
        pass


class FloorSampler(AsyncSampler):
    """Raw aiohttp: a session, a sampling session, then asample + retrieve_future."""

    def __init__(self, url: str, api_key: str, connections: int) -> None:
        self.url = url.rstrip("/") + "/api/v1/"
        self.api_key = api_key
        self.connections = connections
        self.seq = 0
        self.session_id = ""
        self.sampling_session_id = ""

    async def start(self) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, limit_per_host=0),
            headers={"X-API-Key": self.api_key},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
        )
        body: dict[str, Any] = {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0",
                                "type": "create_session"}
        self.session_id = (await self._post_json("create_session", body))["session_id"]
        body = {"session_id": self.session_id, "sampling_session_seq_id": 0,
                "base_model": BASE_MODEL, "type": "create_sampling_session"}
        answer = await self._post_json("create_sampling_session", body)
        self.sampling_session_id = answer["sampling_session_id"]
        self._json_headers = {"Content-Type": "application/json"}
        self._proto_headers = {"Content-Type": "application/json",
                               "Accept": "application/x-protobuf"}
        self.sample = self._sample

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        async with self.http.post(self.url + path, data=json.dumps(body),
                                  headers={"Content-Type": "application/json"}) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def _sample(self) -> bytes:
        seq = self.seq
        self.seq += 1
        body = json.dumps({
            "num_samples": 1,
            "prompt": {"chunks": [{"tokens": PROMPT_TOKENS, "type": "encoded_text"}]},
            "sampling_params": {"temperature": 1.0, "top_k": -1, "top_p": 1.0,
                                "max_tokens": MAX_TOKENS},
            "type": "sample",
            "sampling_session_id": self.sampling_session_id,
            "seq_id": seq,
        })
        async with self.http.post(self.url + "asample", data=body,
                                  headers=self._json_headers) as resp:
            request_id = json.loads(await resp.read())["request_id"]
        poll = json.dumps({"request_id": request_id, "allow_metadata_only": False})
        while True:
            async with self.http.post(self.url + "retrieve_future", data=poll,
                                      headers=self._proto_headers) as resp:
                payload = await resp.read()
                if resp.content_type == "application/x-protobuf":
                    return payload
                if resp.status >= 400 and resp.status != 408:
                    raise RuntimeError(f"retrieve_future: HTTP {resp.status} {payload[:200]!r}")
            # a JSON try_again (or 408): poll again

    async def heartbeat_forever(self, interval: float = 10.0) -> None:
        """What a minimal client does while idle: a heartbeat every ``interval`` s."""
        import asyncio

        while True:
            await asyncio.sleep(interval)
            await self._post_json("session_heartbeat",
                                  {"session_id": self.session_id, "type": "session_heartbeat"})

    async def close(self) -> None:
        await self.http.close()


def _ours_params() -> tuple[Any, Any]:
    import tinker_async as tinker

    return tinker.ModelInput.from_ints(PROMPT_TOKENS), tinker.SamplingParams(
        max_tokens=MAX_TOKENS, temperature=1.0)


class OursSampler(AsyncSampler):
    """tinker_async, async forms, on the running loop."""

    def __init__(self, url: str, api_key: str, **client_kwargs: Any) -> None:
        import tinker_async as tinker

        self.service = tinker.ServiceClient(base_url=url, api_key=api_key, **client_kwargs)

    async def start(self) -> None:
        self.sc = await self.service.create_sampling_client_async(base_model=BASE_MODEL)
        prompt, params = _ours_params()
        sample_async = self.sc.sample_async

        async def sample() -> Any:
            return await sample_async(prompt, 1, params)

        self.sample = sample

    async def close(self) -> None:
        await self.service.close_async()


class OursPlainSampler(AsyncSampler):
    """tinker_async, cookbook style: plain methods, awaited in async code."""

    def __init__(self, url: str, api_key: str, **client_kwargs: Any) -> None:
        import tinker_async as tinker

        self.service = tinker.ServiceClient(base_url=url, api_key=api_key, **client_kwargs)

    async def start(self) -> None:
        self.sc = await self.service.create_sampling_client(base_model=BASE_MODEL)
        prompt, params = _ours_params()
        plain = self.sc.sample

        async def sample() -> Any:
            return await plain(prompt, 1, params)

        self.sample = sample

    async def close(self) -> None:
        await self.service.close()


class OfficialSampler(AsyncSampler):
    """The official SDK 0.38, cookbook style: ``await sampling_client.sample(...)``."""

    def __init__(self, url: str, api_key: str) -> None:
        import tinker

        self.service = tinker.ServiceClient(base_url=url, api_key=api_key)

    async def start(self) -> None:
        import tinker

        self.sc = await self.service.create_sampling_client(base_model=BASE_MODEL)
        prompt = tinker.ModelInput.from_ints(PROMPT_TOKENS)
        params = tinker.SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0)
        plain = self.sc.sample

        async def sample() -> Any:
            return await plain(prompt=prompt, num_samples=1, sampling_params=params)

        self.sample = sample

    async def close(self) -> None:
        import asyncio

        fut = self.service.close("success")
        await asyncio.wait_for(asyncio.wrap_future(fut.future()), 10)


async def make_async_sampler(name: str, url: str, api_key: str, connections: int,
                             client_kwargs: dict[str, Any] | None = None) -> AsyncSampler:
    """A started sampler. ``client_kwargs`` go to tinker_async's ServiceClient (for what-if
    runs such as ``{"connection_limit": 256}``; the suite itself passes none)."""
    sampler: Any
    if name == "floor":
        sampler = FloorSampler(url, api_key, connections)
    elif name == "ours":
        sampler = OursSampler(url, api_key, **(client_kwargs or {}))
    elif name == "ours_plain":
        sampler = OursPlainSampler(url, api_key, **(client_kwargs or {}))
    elif name == "official":
        sampler = OfficialSampler(url, api_key)
    else:
        raise ValueError(f"not an async contender: {name}")
    await sampler.start()
    started: AsyncSampler = sampler
    return started


class OursSyncSampler:
    """tinker_async sync forms: ``submit()`` -> APIFuture (``.result()`` blocks)."""

    def __init__(self, url: str, api_key: str, **client_kwargs: Any) -> None:
        import tinker_async as tinker

        self.service = tinker.ServiceClient(base_url=url, api_key=api_key, **client_kwargs)
        self.sc = self.service.create_sampling_client(base_model=BASE_MODEL).result()
        prompt, params = _ours_params()
        plain = self.sc.sample
        self.submit: Callable[[], Any] = lambda: plain(prompt, 1, params)

    def close(self) -> None:
        self.service.close().result(10)


# ------------------------------------------------------------------------------- training


def datum_inputs(n: int, tokens: int, numpy_tokens: bool = False) -> list[tuple[Any, Any, Any]]:
    """What a training loop has before it makes datums: per datum the input tokens (a list,
    or an int32 array with ``numpy_tokens``), the int64 targets and the float32 weights."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        toks = rng.integers(0, 256, size=tokens + 1)
        inputs = toks[:-1].astype(np.int32) if numpy_tokens else toks[:-1].tolist()
        out.append((inputs, toks[1:].astype(np.int64), np.ones(tokens, dtype=np.float32)))
    return out


def build_datums(lib: Any, inputs: list[tuple[Any, Any, Any]]) -> list[Any]:
    """Datums made the usual way with ``lib``'s types: ``ModelInput.from_ints`` for token
    lists (an ``EncodedTextChunk`` of the array for numpy tokens, which only tinker_async's
    types accept), tensors with ``TensorData.from_numpy``."""
    out = []
    for tokens, targets, weights in inputs:
        if isinstance(tokens, list):
            model_input = lib.ModelInput.from_ints(tokens)
        else:
            model_input = lib.ModelInput(chunks=[lib.EncodedTextChunk(tokens=tokens)])
        out.append(lib.Datum(
            model_input=model_input,
            loss_fn_inputs={"target_tokens": lib.TensorData.from_numpy(targets),
                            "weights": lib.TensorData.from_numpy(weights)},
        ))
    return out


def make_datums(lib: Any, n: int, tokens: int, numpy_tokens: bool = False) -> list[Any]:
    """``n`` datums of ``tokens`` tokens each (see :func:`build_datums`)."""
    return build_datums(lib, datum_inputs(n, tokens, numpy_tokens))


def encoder(name: str) -> tuple[Any, Callable[[list[Any]], bytes]]:
    """(types module, encode(datums) -> bytes): each library's forward_backward encoder,
    for one request holding every datum (objects -> protobuf bytes)."""
    lib: Any
    if name in ("ours", "ours_np"):
        import tinker_async as lib
        from tinker_async import _proto

        def encode(data: list[Any]) -> bytes:
            return _proto.encode_forward_backward_request("model:train:0", 1, data,
                                                          "cross_entropy")

        return lib, encode
    if name == "official":
        import tinker as lib
        from tinker.proto.request_conv import forward_backward_request_to_proto

        def encode(data: list[Any]) -> bytes:
            request = lib.types.ForwardBackwardRequest(
                forward_backward_input=lib.types.ForwardBackwardInput(
                    data=data, loss_fn="cross_entropy"),
                model_id="model:train:0", seq_id=1)
            return bytes(forward_backward_request_to_proto(request).SerializeToString())

        return lib, encode
    raise ValueError(f"no encoder for {name}")


async def training_client(name: str, url: str, api_key: str) -> tuple[Any, Any, Any]:
    """(service, training client, types module) for ``ours`` or ``official``."""
    lib: Any
    if name == "ours":
        import tinker_async as lib

        service = lib.ServiceClient(base_url=url, api_key=api_key)
        tc = await service.create_lora_training_client_async(BASE_MODEL, rank=8)
        return service, tc, lib
    import tinker as lib

    service = lib.ServiceClient(base_url=url, api_key=api_key)
    tc = await service.create_lora_training_client(base_model=BASE_MODEL, rank=8)
    return service, tc, lib


async def forward_backward(name: str, tc: Any, data: list[Any]) -> tuple[float, Any]:
    """One forward_backward with the plain form in both libraries (it starts the call and
    returns a future at once): (seconds until the call returned, result)."""
    started = time.perf_counter()
    fut = tc.forward_backward(data, "cross_entropy")
    returned = time.perf_counter() - started
    return returned, await fut
