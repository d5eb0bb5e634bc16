"""Shared by the examples: use the server in TINKER_BASE_URL, or start the embedded one.

``server_target()`` (async) and ``server_target_sync()`` (for sync scripts; the embedded
server then runs in its own thread with ``LocalServer().in_thread()``) both yield a
``Target``: the URL, the API key, the base model to train and whether the server is the
embedded one. ``TINKER_BASE_MODEL`` picks the base model on a remote server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import NamedTuple

DEFAULT_MODEL = "local/byte-lm"


class Target(NamedTuple):
    base_url: str
    api_key: str
    base_model: str
    embedded: bool


def _remote_target(base_model: str) -> Target | None:
    url = os.environ.get("TINKER_BASE_URL")
    if not url:
        return None
    key = os.environ.get("TINKER_API_KEY", "")
    model = os.environ.get("TINKER_BASE_MODEL", base_model)
    print(f"using the server at {url} (model {model})")
    return Target(url, key, model, embedded=False)


@contextlib.asynccontextmanager
async def server_target(
    base_model: str = DEFAULT_MODEL, *, zero_compute: bool = False
) -> AsyncIterator[Target]:
    """The server to talk to: ``TINKER_BASE_URL``/``TINKER_API_KEY`` if set, else a local one.

    ``zero_compute`` starts the embedded server in zero-compute mode (instant, well-formed
    results: for measuring the client); it does not apply to a remote server.
    """
    remote = _remote_target(base_model)
    if remote is not None:
        if zero_compute:
            print("(zero-compute mode applies only to the embedded server; ignored)")
        yield remote
        return
    from tinker_async.local import LocalServer

    async with LocalServer(zero_compute=zero_compute) as srv:
        mode = " in zero-compute mode" if zero_compute else ""
        print(f"started the embedded server at {srv.url}{mode}")
        yield Target(srv.url, srv.api_key, base_model, embedded=True)


@contextlib.contextmanager
def server_target_sync(base_model: str = DEFAULT_MODEL) -> Iterator[Target]:
    """Like :func:`server_target`, for sync code: the embedded server runs in a thread."""
    remote = _remote_target(base_model)
    if remote is not None:
        yield remote
        return
    from tinker_async.local import LocalServer

    with LocalServer().in_thread() as srv:
        print(f"started the embedded server at {srv.url} (in a background thread)")
        yield Target(srv.url, srv.api_key, base_model, embedded=True)


def bar(fraction: float, width: int = 20) -> str:
    """A text bar for a value in [0, 1]: ``[#####...............]``."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Stopwatch:
    """Seconds since creation: ``sw()``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


# Public-domain text for the supervised examples (sl_loop.py, sync_script.py): the opening
# of Lewis Carroll's "Alice's Adventures in Wonderland" (1865). The embedded server's base
# model never saw it (it was pretrained on Aesop's fables and a few US founding texts), so
# its loss starts high and falls as the LoRA learns it.
SFT_TEXT = """\
Alice was beginning to get very tired of sitting by her sister on the bank, and of having \
nothing to do: once or twice she had peeped into the book her sister was reading, but it \
had no pictures or conversations in it, "and what is the use of a book," thought Alice \
"without pictures or conversations?"

So she was considering in her own mind (as well as she could, for the hot day made her \
feel very sleepy and stupid), whether the pleasure of making a daisy-chain would be worth \
the trouble of getting up and picking the daisies, when suddenly a White Rabbit with pink \
eyes ran close by her.

There was nothing so very remarkable in that; nor did Alice think it so very much out of \
the way to hear the Rabbit say to itself, "Oh dear! Oh dear! I shall be late!" (when she \
thought it over afterwards, it occurred to her that she ought to have wondered at this, \
but at the time it all seemed quite natural); but when the Rabbit actually took a watch \
out of its waistcoat-pocket, and looked at it, and then hurried on, Alice started to her \
feet, for it flashed across her mind that she had never before seen a rabbit with either \
a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran \
across the field after it, and fortunately was just in time to see it pop down a large \
rabbit-hole under the hedge.
"""


def sft_arguments(description: str) -> argparse.ArgumentParser:
    """The flags of the two SFT examples (sl_loop.py and its sync twin)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="windows per batch (default 16)")
    parser.add_argument("--window", type=int, default=64, help="tokens per window (default 64)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def checked_sft_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.window) < 1:
        parser.error("--steps, --batch-size and --window must be positive")
    return args
