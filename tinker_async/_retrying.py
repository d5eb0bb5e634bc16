"""The retry state of one logical request: how many attempts, how long to wait, until when.

:class:`Attempts` is what ``Transport.request``'s loop asks before each attempt (how long
may it wait for an answer?) and after each failure (retry, after how long, or give up?).
It draws on the call's budget (``_budget``) and on the caller's own deadline, so that no
retry policy outlives the limits of the call it serves. The WARNING lines of retries
(:class:`RetryLog`) and the reading of ``Retry-After`` live here too.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Iterator, Mapping

import aiohttp
import backoff

from . import _budget
from ._budget import Limit
from ._config import ClientConfig, RetryPolicy
from .errors import APIError, APITimeoutError, RateLimitError

__all__ = ["Attempts", "retry_after", "retry_log", "should_retry_header"]

log = logging.getLogger("tinker_async")


class Attempts:
    """Counts, back-off and time limits of one logical request (see the module docstring).

    ``read_timeout`` is the per-attempt ``aiohttp.ClientTimeout`` when no limit is closer.
    """

    __slots__ = ("_waits", "budget", "call_limit", "count", "deadline", "endpoint",
                 "last_answer", "method", "policy", "progress", "read_s", "read_timeout",
                 "replayed", "started", "throttled")

    def __init__(self, method: str, endpoint: str, config: ClientConfig, policy: RetryPolicy,
                 read_s: float, read_timeout: aiohttp.ClientTimeout,
                 deadline: Limit | None) -> None:
        self.method = method
        self.endpoint = endpoint
        self.policy = policy
        self.deadline = deadline
        budget = self.budget = _budget.current()
        self.call_limit = None if budget is None else budget.limit(config)
        work = budget is not None and budget.work
        #: a work call fails after this long with no answer from the server
        self.progress = config.progress_timeout if work else None
        self.read_s = read_s
        self.read_timeout = read_timeout
        self.started = self.last_answer = time.monotonic()
        self.count = 0
        self.throttled = 0
        self.replayed = False  # a 401 invalid_token is answered with a new JWT once
        self._waits: Iterator[float] | None = None  # made on the first retry

    @property
    def what(self) -> str | None:
        return None if self.budget is None else self.budget.what

    def timeout(self, error: APIError | None) -> tuple[aiohttp.ClientTimeout, Limit | None]:
        """The next attempt's timeout, and the limit that set it (None: its own).

        Raises the limit's :class:`APITimeoutError` when no time is left (``error`` is the
        last attempt's, for the message)."""
        closest = self.call_limit
        if self.deadline is not None and (closest is None or self.deadline.at < closest.at):
            closest = self.deadline
        progress_at = None if self.progress is None else self.last_answer + self.progress
        at = closest.at if closest is not None else None
        if progress_at is not None and (at is None or progress_at < at):
            at, closest = progress_at, None
        if at is None:
            return self.read_timeout, None
        remaining = at - time.monotonic()
        if remaining >= self.read_s:
            return self.read_timeout, None  # the common case: nothing more to build
        if closest is None:
            closest = Limit(at, "progress_timeout", "no answer from the server for {:g} s (the "
                            "progress_timeout of {})", self.progress, self.what)
        if remaining <= 0:
            raise self.limit_error(closest, error)
        return aiohttp.ClientTimeout(total=remaining, connect=min(
            self.read_timeout.connect or remaining, remaining)), closest

    def answered(self, status: int) -> None:
        if status < 500:  # an answer, a 429 included, shows the server is alive
            self.last_answer = time.monotonic()

    def next_delay(self, error: APIError, retry_after: float | None) -> float:
        """How long to wait before the next attempt; raises ``error`` if there is none."""
        policy = self.policy
        self.count += 1
        if self.budget is not None:
            self.budget.retries += 1
        if isinstance(error, RateLimitError):
            self.throttled += 1
            if self.throttled > policy.max_429_retries:
                raise error
        elif self.count - self.throttled > policy.max_retries:
            raise error
        if retry_after is None:
            if self._waits is None:
                self._waits = backoff.expo(base=2, factor=policy.base_delay,
                                           max_value=policy.max_delay)
                next(self._waits)  # backoff.expo's first value is a priming None
            retry_after = backoff.full_jitter(next(self._waits))
        now = time.monotonic()
        if now - self.started + retry_after > policy.deadline:
            raise error
        for limit in (self.call_limit, self.deadline):
            if limit is not None and now + retry_after >= limit.at:
                raise error  # no time left for another attempt: the last error stands
        return retry_after


    def limit_error(self, limit: Limit, last: APIError | None) -> APITimeoutError:
        """The error of a request that ran out of ``limit``: which limit, how to change it."""
        cause = f"the last attempt: {last}" if last is not None else "no time left to try"
        return APITimeoutError(
            f"{self.method} /{self.endpoint} stopped: {limit.reason} ({cause}). If the "
            f"server is only slow, give the client a larger {limit.option}=...",
            method=self.method,
            url=last.url if last is not None else None,
        )


class RetryLog:
    """One WARNING line per retry after a timeout, a dropped connection or a 5xx (INFO for
    429s, which are flow control); at most one a second per endpoint, counting the rest."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}
        self._quiet: dict[tuple[str, str], int] = {}

    def retrying(self, method: str, endpoint: str, attempts: Attempts, delay: float,
                 error: APIError) -> None:
        level = logging.INFO if isinstance(error, RateLimitError) else logging.WARNING
        if not log.isEnabledFor(level):
            return
        key = (method, endpoint)
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < 1.0:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        what = attempts.what
        log.log(level, "%s%s /%s: attempt %d failed after %.1f s (%s); retrying in %.2f s%s",
                f"{what}: " if what else "", method, endpoint, attempts.count,
                now - attempts.started, error, delay,
                f" ({quiet} more retries of this endpoint not shown)" if quiet else "")


retry_log = RetryLog()


def retry_after(headers: Mapping[str, str], cap: float) -> float | None:
    """The server's requested wait, from ``retry-after-ms`` or ``Retry-After``, if sane."""
    value = headers.get("retry-after-ms")
    seconds: float | None = None
    if value is not None:
        try:
            seconds = float(value) / 1000
        except ValueError:
            seconds = None
    if seconds is None and (value := headers.get("Retry-After")) is not None:
        try:
            seconds = float(value)
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(value) if value else None
            except (TypeError, ValueError):  # neither seconds nor an HTTP date
                parsed = None
            seconds = parsed.timestamp() - time.time() if parsed else None
    if seconds is None or seconds < 0 or seconds > cap:
        return None
    return seconds


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    """What the server's ``x-should-retry`` header says (None: it says nothing)."""
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None
