"""Download a checkpoint's files to a directory: the logic behind
``RestClient.download_checkpoint(_async)`` and ``tinker-async checkpoint download``.

It does what the official CLI 0.38 does, and more:

- An ``external_weights`` checkpoint is fetched file by file from the signed URLs of
  ``get_external_weights_urls``. A ``weights`` (training) checkpoint is first exported:
  a training client is created from it, ``save_weights_external("download",
  ttl_seconds=3600)`` writes the export, its files are fetched, and the export is deleted
  (a failed delete only logs a warning: the export expires within the hour). Sampler
  checkpoints cannot be downloaded (the server keeps them in its own format).
- URLs are re-signed when they are within 5 minutes of expiry, or when a file URL is
  refused (403/404/410) as an expired one would be; for the temporary export each re-sign
  also renews its TTL, as the official CLI does.
- A file name that would land outside the destination is refused before anything is
  written.

Better than the official CLI: several files at once (bounded), streamed with aiohttp on
the client's own connection pool; each file goes to ``<name>.part`` and is renamed only
once complete and of the announced size; a dropped connection resumes with an HTTP
``Range`` request (and an ``If-Range`` validator), within the call and, for an
``external_weights`` checkpoint, across calls (a partial download is kept; calling again
resumes it). A training checkpoint is exported afresh by each call, so a second call
starts its files over. ``progress(bytes_done, bytes_total, file_name)`` reports progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from .errors import APIError, ClientClosedError, InvalidRequestError, status_error_class
from .paths import parse_checkpoint_path

if TYPE_CHECKING:
    from ._transport import Transport
    from .rest import RestClient
    from .service import ServiceClient

__all__ = [
    "DownloadError",
    "DownloadResult",
    "DownloadedFile",
    "ProgressCallback",
    "download_checkpoint",
    "target_dir_name",
]

log = logging.getLogger("tinker_async")

#: ``progress(bytes_done, bytes_total, file_name)``: bytes on disk so far for the whole
#: checkpoint, and its total size (``None`` while it is unknown; it becomes exact once
#: every file has started). ``file_name`` is the file that just moved.
ProgressCallback = Callable[[int, "int | None", str], None]

STATE_FILE = ".tinker-download.json"
PART_SUFFIX = ".part"
DEFAULT_PARALLEL = 4
DEFAULT_RETRIES = 5
_CHUNK = 256 * 1024
_RESIGN_MARGIN = dt.timedelta(minutes=5)
#: the official CLI's temporary export: its name and TTL (renewed at each re-sign)
EXPORT_NAME = "download"
EXPORT_TTL_S = 3600
_REFUSED_URL = frozenset({401, 403, 404, 410})  # what an expired signed URL answers
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(APIError):
    """A checkpoint file could not be downloaded (after the retries), came back with the
    wrong size, or the checkpoint's file list was unsafe. Partial files are kept."""



def _transport_of(rest: RestClient) -> Transport:
    from .rest import transport_of  # rest imports this module: resolved at call time

    return transport_of(rest)

@dataclass(frozen=True)
class DownloadedFile:
    """One file of a finished download."""

    name: str
    size_bytes: int
    #: bytes that were already on disk (from an interrupted attempt) and not fetched again
    resumed_bytes: int = 0


@dataclass(frozen=True)
class DownloadResult:
    """What :func:`download_checkpoint` wrote."""

    checkpoint_path: str
    destination: Path
    files: tuple[DownloadedFile, ...]

    @property
    def size_bytes(self) -> int:
        """Total size of the files."""
        return sum(f.size_bytes for f in self.files)


def target_dir_name(checkpoint_path: str) -> str:
    """The official CLI's directory name for a checkpoint: the path without its scheme,
    with ``/`` as ``_`` (``tinker://run-1/weights/final`` -> ``run-1_weights_final``)."""
    return checkpoint_path.split("://", 1)[-1].replace("/", "_")


# ------------------------------------------------------------------------------ state


class _State:
    """The destination's bookkeeping file: which checkpoint it holds, and per file the
    announced size and validator (``ETag``), so that a later call can resume safely."""

    def __init__(self, directory: Path, checkpoint: str) -> None:
        self.path = directory / STATE_FILE
        self.checkpoint = checkpoint
        self.files: dict[str, dict[str, Any]] = {}

    @classmethod
    def read(cls, directory: Path) -> _State | None:
        try:
            data = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("checkpoint"), str):
            return None
        state = cls(directory, data["checkpoint"])
        files = data.get("files")
        if isinstance(files, dict):
            state.files = {k: v for k, v in files.items() if isinstance(v, dict)}
        return state

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"checkpoint": self.checkpoint, "files": self.files}),
                       encoding="utf-8")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _prepare(dest: Path, checkpoint: str, force: bool) -> tuple[_State, bool]:
    """Make ``dest`` ready: (its state, whether this call created it).

    An existing directory is used if it is empty or holds an unfinished download of the
    same checkpoint (that is resumed); anything else needs ``force``, which deletes it
    first, as the official CLI's ``--force`` does.
    """
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a directory")
    if dest.is_dir() and force:
        shutil.rmtree(dest)
    if dest.is_dir():
        previous = _State.read(dest)
        if previous is not None and previous.checkpoint == checkpoint:
            return previous, False
        if any(dest.iterdir()):
            raise FileExistsError(
                f"Target directory already exists: {dest}. Use --force (force=True) to "
                "overwrite it, or choose another output directory."
            )
        created = False
    else:
        dest.mkdir(parents=True)
        created = True
    state = _State(dest, checkpoint)
    state.save()
    return state, created


def _has_data(dest: Path) -> bool:
    return any(p.is_file() and p.name != STATE_FILE and p.stat().st_size > 0
               for p in dest.rglob("*"))


def _destinations(dest: Path, names: list[str]) -> dict[str, Path]:
    """Where each file goes; any name that would escape ``dest`` is refused."""
    base = dest.resolve()
    out: dict[str, Path] = {}
    for name in names:
        pure = PurePosixPath(name)
        target = (dest / name).resolve()
        if (not name or pure.is_absolute() or ".." in pure.parts or "\\" in name
                or not target.is_relative_to(base) or target == base
                or pure.name == STATE_FILE or name.endswith(PART_SUFFIX)):
            raise DownloadError(
                f"Unsafe file path in checkpoint: {name!r}; nothing was downloaded (the "
                "checkpoint may be corrupted or malicious)"
            )
        out[name] = target
    return out


# --------------------------------------------------------------------------- progress


class _Progress:
    """Adds up the bytes of every file and calls the user's callback."""

    def __init__(self, callback: ProgressCallback | None, names: list[str],
                 hint: int | None) -> None:
        self.callback = callback
        self.sizes: dict[str, int | None] = dict.fromkeys(names)
        self.done: dict[str, int] = dict.fromkeys(names, 0)
        self.hint = hint

    def total(self) -> int | None:
        if all(size is not None for size in self.sizes.values()):
            return sum(size or 0 for size in self.sizes.values())
        return self.hint

    def update(self, name: str, done: int, size: int | None = None) -> None:
        if size is not None:
            self.sizes[name] = size
        self.done[name] = done
        if self.callback is not None:
            self.callback(sum(self.done.values()), self.total(), name)


# ---------------------------------------------------------------------------- signing


class _Signer:
    """The current signed URLs, re-signed near expiry or after a refusal (once for all
    the files that saw the same refused generation)."""

    def __init__(self, rest: RestClient, path: str, renew_ttl_s: int | None) -> None:
        self.rest = rest
        self.path = path
        self.renew_ttl_s = renew_ttl_s
        self.urls: dict[str, str] = {}
        self.expires = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        self.generation = 0
        self._lock = asyncio.Lock()

    async def sign(self) -> None:
        answer = await self.rest.get_external_weights_urls_async(self.path)
        if self.renew_ttl_s is not None:
            await self.rest.set_checkpoint_ttl_from_tinker_path_async(self.path, self.renew_ttl_s)
        expires = answer.expires
        self.expires = expires if expires.tzinfo else expires.replace(tzinfo=dt.timezone.utc)
        self.urls = dict(answer.urls)
        self.generation += 1

    async def url(self, name: str) -> tuple[str, int]:
        if dt.datetime.now(dt.timezone.utc) >= self.expires - _RESIGN_MARGIN:
            async with self._lock:
                if dt.datetime.now(dt.timezone.utc) >= self.expires - _RESIGN_MARGIN:
                    await self.sign()
        if name not in self.urls:
            raise DownloadError(f"the server no longer lists {name!r} in {self.path}")
        return self.urls[name], self.generation

    async def refused(self, generation: int) -> None:
        async with self._lock:
            if generation == self.generation:
                await self.sign()


# --------------------------------------------------------------------------- one file


class _Retry(Exception):
    """This attempt failed in a way another attempt (resuming) may fix."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, complete length) of a ``Content-Range`` header, when given."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


class _Fetcher:
    """Downloads the files of one export, sharing the signer, state and progress."""

    def __init__(self, rest: RestClient, signer: _Signer, state: _State, progress: _Progress,
                 retries: int, http: aiohttp.ClientSession) -> None:
        self.rest = rest
        #: a pool of its own: signed URLs need no credential, and the client's pool would
        #: send its default headers (which may carry one) to the storage host
        self.http = http
        self.signer = signer
        self.state = state
        self.progress = progress
        self.retries = retries
        #: files whose bytes from before this call were thrown away (the file changed)
        self.discarded: set[str] = set()

    async def fetch(self, name: str, target: Path, resume: bool) -> DownloadedFile:
        part = target.with_name(target.name + PART_SUFFIX)
        entry = self.state.files.get(name, {})
        if resume and entry.get("done") and _size(target) == entry.get("size"):
            size = _size(target) or 0
            self.progress.update(name, size, size)
            return DownloadedFile(name, size, size)
        if not resume:
            entry = {}
            _remove(part, target)
        _mkdir(target.parent)
        resumed = _size(part) or 0
        if resumed:
            self.progress.update(name, resumed, entry.get("size"))
        failures = 0
        while True:
            try:
                size = await self._attempt(name, part, entry)
            except (_Retry, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(
                        exc, (ConnectionError, TimeoutError, aiohttp.ClientError)):
                    raise  # a local disk problem: retrying will not help
                failures += 1
                have = _size(part) or 0
                if failures > self.retries:
                    raise DownloadError(
                        f"downloading {name} failed after {failures} attempts ({_describe(exc)});"
                        f" {have} bytes are kept in {part.name}: run the download again to "
                        "resume", method="GET") from None
                log.info("download of %s interrupted at %d bytes (%s); resuming",
                         name, have, _describe(exc))
                await asyncio.sleep(min(0.25 * 2 ** (failures - 1), 8.0))
                continue
            os.replace(part, target)
            self.state.files[name] = {**entry, "size": size, "done": True}
            self.state.save()
            kept = 0 if name in self.discarded else min(resumed, size)
            return DownloadedFile(name, size, kept)

    async def _attempt(self, name: str, part: Path, entry: dict[str, Any]) -> int:
        """One GET of ``name`` into ``part``, resuming from what it holds; the final size."""
        if _transport_of(self.rest).closed:
            raise ClientClosedError("The RestClient was closed during the download.")
        have = _size(part) or 0
        url, generation = await self.signer.url(name)
        # identity: sizes and ranges must be those of the file itself, never of an encoding
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if entry.get("etag"):
                headers["If-Range"] = entry["etag"]
        async with self.http.get(url, headers=headers, allow_redirects=True) as resp:
            if await self._check_status(resp, name, part, have, generation):
                return have
            have, mode, total = self._start(resp, name, part, entry, have)
            have = await self._receive(resp, name, part, mode, have)
        if total is not None and have != total:
            raise _Retry(f"got {have} of {total} bytes")
        return have

    async def _check_status(self, resp: aiohttp.ClientResponse, name: str, part: Path,
                            have: int, generation: int) -> bool:
        """Raise for an answer that carries no bytes to keep (``_Retry`` when another try
        may work); True when a 416 says the ``.part`` already holds the whole file."""
        if resp.status in _REFUSED_URL:
            await self.signer.refused(generation)
            raise _Retry(f"HTTP {resp.status} from the signed URL (expired?)")
        if resp.status == 416 and have:
            _, total = _content_range(resp.headers.get("Content-Range"))
            if total == have:  # the .part already holds the whole file
                self.progress.update(name, have, have)
                return True
            self._discard(name, part)
            raise _Retry("the server no longer has the range we had (file changed?)")
        if resp.status in _RETRY_STATUS:
            raise _Retry(f"HTTP {resp.status}")
        if resp.status >= 400:
            body = (await resp.read())[:500]
            raise status_error_class(resp.status)(
                f"{resp.status} downloading {name}: "
                f"{body.decode('utf-8', 'replace') or resp.reason}",
                status_code=resp.status, method="GET")
        return False

    def _start(self, resp: aiohttp.ClientResponse, name: str, part: Path,
               entry: dict[str, Any], have: int) -> tuple[int, str, int | None]:
        """Check a 206 continues the file we had part of (a 200 starts over), and record
        its size and ETag; gives (bytes kept, file mode, total size or None)."""
        etag = resp.headers.get("ETag")
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have or (entry.get("etag") and etag and etag != entry["etag"]):
                self._discard(name, part)  # another file than the one we had part of
                raise _Retry("the file changed since the interrupted attempt")
            mode = "ab"
        else:  # 200: the whole file (no range asked, or the server ignored it)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if have:
                self.discarded.add(name)
            have, mode = 0, "wb"
        entry.update({"size": total, "etag": etag})
        self.state.files[name] = dict(entry)
        self.state.save()
        self.progress.update(name, have, total)
        return have, mode, total

    async def _receive(self, resp: aiohttp.ClientResponse, name: str, part: Path, mode: str,
                       have: int) -> int:
        """Write the body to ``part`` as it arrives; gives the bytes it then holds."""
        # File writes go to a worker thread: the loop may be the caller's own.
        handle = await asyncio.to_thread(open, part, mode)
        pending = bytearray()  # written in blocks; what arrived before a drop is kept
        try:
            async for data in resp.content.iter_any():
                pending += data
                if len(pending) >= _CHUNK:
                    await asyncio.to_thread(handle.write, bytes(pending))
                    have += len(pending)
                    pending.clear()
                    self.progress.update(name, have)
        finally:
            if pending:
                await asyncio.to_thread(handle.write, bytes(pending))
                have += len(pending)
                self.progress.update(name, have)
            await asyncio.to_thread(handle.close)
        return have

    def _discard(self, name: str, part: Path) -> None:
        self.discarded.add(name)
        _remove(part)
        self.progress.update(name, 0)


def _size(path: Path) -> int | None:
    """The size of a file, None if there is none (metadata only: cheap enough inline)."""
    try:
        return path.stat().st_size if path.is_file() else None
    except FileNotFoundError:
        return None


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, _Retry) else f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------------------- the call


async def _size_hint(rest: RestClient, path: str) -> int | None:
    """The checkpoint's listed size, for progress before every file has started."""
    parsed = parse_checkpoint_path(path)
    try:
        listed = await rest.list_checkpoints_async(parsed.training_run_id)
    except APIError:
        return None
    for ckpt in listed.checkpoints:
        if ckpt.tinker_path == path or ckpt.checkpoint_id == parsed.checkpoint_id:
            return ckpt.size_bytes
    return None


async def _fetch_export(
    rest: RestClient, path: str, dest: Path, state: _State, *, resume: bool,
    progress: ProgressCallback | None, parallel: int, retries: int, renew_ttl_s: int | None,
) -> list[DownloadedFile]:
    signer = _Signer(rest, path, renew_ttl_s)
    await signer.sign()
    if not signer.urls:
        raise DownloadError(f"External weights checkpoint has no files: {path}")
    targets = _destinations(dest, sorted(signer.urls))
    tracker = _Progress(progress, list(targets), await _size_hint(rest, path))
    limit = asyncio.Semaphore(max(1, parallel))
    timeout = aiohttp.ClientTimeout(total=None, connect=_transport_of(rest).config.connect_timeout,
                                    sock_read=_transport_of(rest).config.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        fetcher = _Fetcher(rest, signer, state, tracker, retries, http)

        async def one(name: str) -> DownloadedFile:
            async with limit:
                return await fetcher.fetch(name, targets[name], resume)

        tasks = [asyncio.ensure_future(one(name)) for name in targets]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one file failed: stop the others (their .part files stay for a resume)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _service_for(rest: RestClient) -> ServiceClient:
    """A ServiceClient on the same server with the same settings, for the export."""
    from .service import ServiceClient

    config = _transport_of(rest).config
    return ServiceClient(
        base_url=config.base_url,
        api_key=config.api_key.get() or None,
        dialect=config.dialect,
        route_prefix=config.route_prefix,
        timeout=config.timeout,
        default_headers_overrides=config.default_headers,
        tags=["checkpoint-download"],
    )


async def download_checkpoint(
    rest: RestClient,
    path: str,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: ProgressCallback | None = None,
    parallel: int = DEFAULT_PARALLEL,
    retries: int = DEFAULT_RETRIES,
    service_client: ServiceClient | None = None,
) -> DownloadResult:
    """Download the files of checkpoint ``path`` into the directory ``dest``.

    See :meth:`tinker_async.RestClient.download_checkpoint_async` for the arguments.
    Must run on ``rest``'s home loop (the method takes care of that).
    """
    parsed = parse_checkpoint_path(path)
    if parsed.checkpoint_type == "sampler":
        raise InvalidRequestError(
            f"Sampler checkpoints cannot be downloaded: {path}. Only training "
            "(tinker://<run>/weights/<name>) and external weights "
            "(tinker://<run>/external_weights/<name>) checkpoints can."
        )
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise InvalidRequestError(f"parallel must be an int >= 1, got {parallel!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidRequestError(f"retries must be an int >= 0, got {retries!r}")
    target = Path(dest)
    state, created = _prepare(target, path, force)
    external = parsed.checkpoint_type == "external"
    try:
        if external:
            files = await _fetch_export(
                rest, path, target, state, resume=True, progress=progress,
                parallel=parallel, retries=retries, renew_ttl_s=None)
        else:
            files = await _download_training(
                rest, path, target, state, progress=progress, parallel=parallel,
                retries=retries, service_client=service_client)
    except BaseException:
        # Keep what a later call can resume (an external_weights checkpoint's files); a
        # directory this call made and nothing can resume goes, as with the official CLI.
        if created and (not external or not _has_data(target)):
            shutil.rmtree(target, ignore_errors=True)
        raise
    state.remove()
    return DownloadResult(checkpoint_path=path, destination=target, files=tuple(files))


async def _download_training(
    rest: RestClient, path: str, dest: Path, state: _State, *,
    progress: ProgressCallback | None, parallel: int, retries: int,
    service_client: ServiceClient | None,
) -> list[DownloadedFile]:
    """Export a training checkpoint as temporary external weights, fetch, delete."""
    service = service_client if service_client is not None else _service_for(rest)
    status: Literal["success", "errored", "interrupted"] = "errored"
    try:
        training = await service.create_training_client_from_state_async(
            path, user_metadata={"created_by": "tinker-async checkpoint download"})
        saved = await training.save_weights_external_async(EXPORT_NAME, ttl_seconds=EXPORT_TTL_S)
        export_path = (await saved).path
        try:
            files = await _fetch_export(
                rest, export_path, dest, state, resume=False, progress=progress,
                parallel=parallel, retries=retries, renew_ttl_s=EXPORT_TTL_S)
        finally:
            try:
                await rest.delete_checkpoint_from_tinker_path_async(export_path)
            except APIError as exc:
                log.warning("could not delete the temporary export %s (%s); it expires in "
                            "%d seconds", export_path, exc, EXPORT_TTL_S)
        status = "success"
        return files
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    finally:
        if service_client is None:
            await service.close_async(status)

