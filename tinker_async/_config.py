"""Settings: base URL, API key, project, timeouts and the retry policy, in one place.

Values come from arguments first, then the environment (``TINKER_BASE_URL``,
``TINKER_API_KEY``, ``TINKER_PROJECT_ID``; ``TWINKLE_SERVER_URL`` / ``TWINKLE_SERVER_TOKEN``
for Twinkle servers), then defaults. Everything is checked here, before any request, so a
bad setting is a :class:`ConfigurationError` that says what to fix, not a late 401.

The API key is held in a :class:`Secret`: its ``repr`` is masked and it refuses to be
pickled, so it cannot leak through a log line, a traceback or a pickled client.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from .errors import ConfigurationError, InsecureTransportWarning

DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
#: The official SDK version whose wire protocol we speak; servers choose flags by it.
PROTOCOL_SDK_VERSION = "0.38.0"

#: Defaults, all in one place (openai-python's ``_constants.py`` habit).
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_RETRIES = 4
DEFAULT_RETRY_BASE_DELAY = 0.25
DEFAULT_RETRY_MAX_DELAY = 8.0
DEFAULT_RETRY_AFTER_CAP = 60.0
DEFAULT_CALL_DEADLINE = 300.0
DEFAULT_HEARTBEAT_INTERVAL = 10.0
DEFAULT_POLL_TIMEOUT = 45.0
#: whole-call limit of control calls (handshake, REST, sessions): they fail in seconds
DEFAULT_CONTROL_TIMEOUT = 30.0
#: work calls fail when the server shows no sign of life for this long
DEFAULT_PROGRESS_TIMEOUT = 120.0
#: Connections to the server. More sockets than this buy nothing (the server and the loop
#: are the limit) and cost memory and CPU: measured at c=2048, 256 used 15-18% less client
#: CPU per sample than 4096, and about 40% less memory per in-flight sample.
DEFAULT_CONNECTION_LIMIT = 256
DEFAULT_KEEPALIVE = 30.0
#: the largest answer read (after decompression): a server cannot make us buffer more
DEFAULT_MAX_RESPONSE_BYTES = 1 << 30

_OFFICIAL_HOST_SUFFIX = ".thinkingmachines.dev"
KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: must fit in a header


class Secret:
    """A string that never shows itself: masked ``repr``/``str``, and not picklable."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret value itself. Call it only where the value is sent."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "API keys are never pickled; the unpickling process reads TINKER_API_KEY (or "
            "TINKER_CREDENTIAL_CMD, or tinker_async.configure(api_key=...)) itself"
        )


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry.

    Retried: connection errors, timeouts, 408, 409 (lock timeouts), 429 and 5xx. The wait
    is exponential from ``base_delay`` with full jitter, capped at ``max_delay``; a
    ``Retry-After`` / ``retry-after-ms`` header up to ``retry_after_cap`` replaces it.
    No attempt starts after ``deadline`` seconds from the first one.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    #: 429s are flow control, not failure: they have their own, larger budget
    max_429_retries: int = 16
    base_delay: float = DEFAULT_RETRY_BASE_DELAY
    max_delay: float = DEFAULT_RETRY_MAX_DELAY
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP
    deadline: float = DEFAULT_CALL_DEADLINE
    #: statuses that are retried (by default 408, 409, 429 and every 5xx); a policy built
    #: with other statuses retries exactly those
    retry_statuses: frozenset[int] = frozenset({408, 409, 429, *range(500, 600)})

    def __post_init__(self) -> None:
        # Any collection of statuses will do; a frozenset keeps the policy hashable.
        object.__setattr__(self, "retry_statuses", frozenset(self.retry_statuses))

    def should_retry_status(self, status: int) -> bool:
        return status in self.retry_statuses

    def replace(self, **changes: Any) -> RetryPolicy:
        return dataclasses.replace(self, **changes)


NO_RETRY = RetryPolicy(max_retries=0)


@dataclasses.dataclass(frozen=True)
class PollTuning:
    """How pending results are waited for (``ServiceClient(polling=PollTuning(...))``).

    The defaults suit the official service and the servers in ``interop/``; change them
    to trade requests for latency, or in tests to force one way of waiting.
    """

    #: with at most this many samples of one sampling session in flight, each is fetched
    #: with a held poll of its own (two round trips); above it they share the session's
    #: batch long-poll (``retrieve_futures``, when the server offers it)
    direct_fetch_max: int = 4
    #: under load, the batch long-poll waits before it asks again, long enough (at the
    #: rate completions arrive) to collect about this many per answer...
    batch_target: int = 12
    #: ...but within these bounds (seconds)
    rearm_min_s: float = 0.005
    rearm_max_s: float = 0.05
    #: pause (seconds) between polls while the server cannot be reached
    outage_pause_s: float = 1.0
    #: how one poll request retries transport failures (patiently: the work is on the
    #: server); the call's progress_timeout still bounds it
    poll_retry: RetryPolicy = RetryPolicy(max_retries=8, base_delay=0.25, max_delay=5.0,
                                          deadline=600.0)
    #: per-request polls in flight at once, across a client family
    max_concurrent_polls: int = 1024

    def replace(self, **changes: Any) -> PollTuning:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, repr=False)
class ClientConfig:
    """Resolved settings for one client (and the clients it creates)."""

    base_url: str
    api_key: Secret
    project_id: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retry: RetryPolicy = RetryPolicy()
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    poll_timeout: float = DEFAULT_POLL_TIMEOUT
    #: whole-call limit of control calls, retries included (``_budget``)
    control_timeout: float = DEFAULT_CONTROL_TIMEOUT
    #: whole-call limit of work calls (sampling, training, checkpoints); None: no limit
    call_timeout: float | None = None
    #: work calls fail after this long with no answer of any kind from the server
    progress_timeout: float = DEFAULT_PROGRESS_TIMEOUT
    #: a call still waiting after this long logs a WARNING (and again at each doubling)
    waiting_log_after: float = 60.0
    #: how pending results are polled (:class:`PollTuning`)
    polling: PollTuning = PollTuning()
    connection_limit: int = DEFAULT_CONNECTION_LIMIT
    default_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    dialect: str | None = None
    route_prefix: str | None = None
    #: a shell command that prints the credential (TINKER_CREDENTIAL_CMD); JWT mode only
    credential_cmd: str | None = None
    #: TLS: a CA bundle file to verify the server with (else TINKER_CA_BUNDLE, else the
    #: system's); ``verify_tls=False`` turns verification off (never do it with a real key)
    ca_bundle: str | None = None
    verify_tls: bool = True
    #: answers larger than this (bytes, after decompression) are refused
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __repr__(self) -> str:
        return (
            f"ClientConfig(base_url={self.base_url!r}, api_key=***, "
            f"project_id={self.project_id!r}, dialect={self.dialect!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled without the key; the other process resolves it from its environment.
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del state["api_key"]
        return (_unpickle_config, (state,))

    def replace(self, **changes: Any) -> ClientConfig:
        return dataclasses.replace(self, **changes)


def _unpickle_config(state: dict[str, Any]) -> ClientConfig:
    # The key comes from this process (configure(), its environment, a credential
    # command). With none yet, the config is made all the same: the first request made
    # with it looks again and, still finding none, fails saying how to give one
    # (``_auth.Credentials.prepare``). Unpickling never fails for a missing key.
    key, command = credential_sources(
        None, state["base_url"], state.get("dialect"), state.pop("credential_cmd", None))
    key = "" if not key else check_api_key(key, state["base_url"])
    return ClientConfig(api_key=Secret(key), credential_cmd=command, **state)


def credential_sources(
    api_key: str | None, base_url: str, dialect: str | None, command: str | None = None
) -> tuple[str | None, str | None]:
    """(key, credential command) in the official SDK's order, unchecked: the argument,
    the key given to ``tinker_async.configure()``, ``TINKER_API_KEY`` (or
    ``TWINKLE_SERVER_TOKEN``), ``command`` or ``TINKER_CREDENTIAL_CMD``, then the default
    key stored by its CLI."""
    from ._configure import configured_api_key  # it imports this module

    key = api_key if api_key is not None else (
        configured_api_key() or _env("TINKER_API_KEY") or _env("TWINKLE_SERVER_TOKEN")
    )
    command = command or (None if key else _env("TINKER_CREDENTIAL_CMD"))
    if not key and not command:
        key = _stored_key(base_url, dialect)
    return key, command


def credentials_file() -> Path:
    """Where ``tinker auth login`` stores keys: ``~/.tinker/credentials.json``."""
    return Path.home() / ".tinker" / "credentials.json"


def _stored_key(base_url: str, dialect: str | None) -> str | None:
    """The default key of the official CLI's credentials file, for the official service.

    ``{"version": 1, "default": id, "keys": {id: {"key": ...}}}``. It is a key for the
    Tinker service, so it is never sent anywhere else (a self-hosted or Twinkle server
    gets its key from the argument or the environment). An unreadable or malformed file is
    reported, not skipped silently: the user meant it to be used.
    """
    host = urlsplit(base_url).hostname or ""
    if dialect == "twinkle" or not host.endswith(_OFFICIAL_HOST_SUFFIX):
        return None
    path = credentials_file()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("default") is None:
            return None
        key = data["keys"][data["default"]]["key"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"{path} has no readable default key ({type(exc).__name__}); fix or remove "
            "it, or pass api_key=... / set TINKER_API_KEY"
        ) from None
    return key if isinstance(key, str) and key.strip() else None


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def check_base_url(url: str) -> str:
    """Validate a base URL and return it without a trailing slash."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            "The base URL is empty. Pass base_url=... or set TINKER_BASE_URL, "
            "e.g. http://127.0.0.1:8000"
        )
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"The base URL {url!r} is not an http(s) URL with a host; "
            "expected something like http://127.0.0.1:8000 or https://host/prefix"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"The base URL {url!r} must not contain a query or fragment"
        )
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ConfigurationError(f"The base URL {url!r} has an invalid port") from None
    return url.rstrip("/")


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_warned_plain_http: set[str] = set()


def _warn_if_plain_http(url: str) -> None:
    """Warn (once per host) before a key goes over plain HTTP off this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or _is_loopback(host) or host in _warned_plain_http:
        return
    _warned_plain_http.add(host)
    warnings.warn(
        f"The API key will be sent over plain HTTP to {host}, where anyone on the path "
        "can read it; use an https:// base URL (plain HTTP is fine for this machine's "
        "own addresses, such as 127.0.0.1).",
        InsecureTransportWarning,
        stacklevel=4,
    )


def check_api_key(key: str, base_url: str) -> str:
    """Validate an API key's form (never its value: that is the server's job)."""
    if not isinstance(key, str) or not key.strip():
        raise ConfigurationError(
            "No API key. Pass api_key=... or set TINKER_API_KEY (or TINKER_CREDENTIAL_CMD; "
            "a key stored by `tinker auth login` is used for the Tinker service only); for "
            "the embedded server, use LocalServer().api_key."
        )
    key = key.strip()
    if not KEY_CHARS.match(key):
        raise ConfigurationError(
            "The API key contains spaces or non-ASCII/control characters, so it cannot be "
            "sent in a header; check for a stray newline or quote around it."
        )
    host = urlsplit(base_url).hostname or ""
    if host.endswith(_OFFICIAL_HOST_SUFFIX) and not key.startswith(("tml-", "eyJ")):
        raise ConfigurationError(
            "Tinker API keys start with 'tml-' (or are JWTs starting 'eyJ'); the key given "
            "does not. Copy it again from the Tinker console."
        )
    return key


def resolve_config(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    project_id: str | None = None,
    dialect: str | None = None,
    **options: Any,
) -> ClientConfig:
    """Build a :class:`ClientConfig` from arguments, then the environment, then defaults."""
    twinkle_env = _env("TWINKLE_SERVER_URL")
    url = base_url if base_url is not None else (
        _env("TINKER_BASE_URL") or twinkle_env or DEFAULT_BASE_URL
    )
    if dialect is None and base_url is None and not _env("TINKER_BASE_URL") and twinkle_env:
        dialect = "twinkle"
    url = check_base_url(url)
    key, command = credential_sources(api_key, url, dialect, options.pop("credential_cmd", None))
    from ._configure import credentials_deferred  # it imports this module

    if not key and not command and credentials_deferred():
        key = ""  # a copy joining a session: its first call reports the missing key (_auth)
    else:
        key = "" if command and not key else check_api_key(key or "", url)
    max_retries = options.pop("max_retries", None)
    if max_retries is not None:
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an int >= 0, got {max_retries!r}")
        # The convenience form bounds every kind of retry, 429s included.
        options["retry"] = (options.get("retry") or RetryPolicy()).replace(
            max_retries=max_retries, max_429_retries=max_retries
        )
    unknown = set(options) - {f.name for f in dataclasses.fields(ClientConfig)}
    if unknown:
        raise ConfigurationError(f"Unknown client option(s): {', '.join(sorted(unknown))}")
    ca_bundle = options.get("ca_bundle") or _env("TINKER_CA_BUNDLE")
    if ca_bundle is not None:
        if not Path(ca_bundle).is_file():
            raise ConfigurationError(
                f"The CA bundle {ca_bundle!r} (ca_bundle= or TINKER_CA_BUNDLE) is not a "
                "readable file; give the path of a PEM file of CA certificates")
        options["ca_bundle"] = ca_bundle
    limit = options.get("max_response_bytes")
    if limit is not None and not (isinstance(limit, int) and limit > 0):
        raise ConfigurationError(f"max_response_bytes must be a positive int, got {limit!r}")
    if key:
        _warn_if_plain_http(url)
    for name in ("timeout", "connect_timeout", "heartbeat_interval", "poll_timeout",
                 "control_timeout", "call_timeout", "progress_timeout", "waiting_log_after"):
        value = options.get(name)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return ClientConfig(
        base_url=url,
        api_key=Secret(key),
        credential_cmd=command,
        project_id=project_id or _env("TINKER_PROJECT_ID"),
        dialect=dialect,
        **{k: v for k, v in options.items() if v is not None},
    )
