"""Fault injection: make the next matching requests fail, stall or lose their connection.

Rules are added from any thread (usually the test thread, while the server runs in its
own) and consumed by a middleware on the server's loop; one lock guards them. A rule
matches by a regular expression searched in the request path (``re.search``) and an
optional method. Rules are tried in the order they were added; the first one that
matches *and fires* handles the request.

::

    srv.faults.add(r"/asample$", status=429, retry_after=0.2, count=3)
    srv.faults.add(r"/retrieve_future$", delay_s=2.0)          # slow, then normal
    srv.faults.add(r"/forward_backward$", drop_connection=True)
    srv.faults.add(r"", status=503, count=None, rate=0.1)       # 10% of everything, forever
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fault", "FaultInjector", "FaultRule"]


@dataclass(frozen=True)
class Fault:
    """What to do to one request (a snapshot of the rule that fired)."""

    status: int | None
    retry_after: float | None
    delay_s: float
    drop_connection: bool
    body: Mapping[str, Any] | None
    headers: Mapping[str, str]

    def response_body(self) -> dict[str, Any]:
        """The JSON body of an injected status."""
        if self.body is not None:
            return dict(self.body)
        return {"detail": f"Injected fault: HTTP {self.status}"}

    def response_headers(self) -> dict[str, str]:
        """Headers of an injected status (``Retry-After`` plus any extras)."""
        headers = dict(self.headers)
        if self.retry_after is not None:
            # Whole seconds are written as integers, as RFC 9110 expects; fractions are kept
            # because the official SDK (and ours) accept them and tests want short waits.
            value = self.retry_after
            headers["Retry-After"] = str(int(value)) if float(value).is_integer() else f"{value:g}"
        return headers


@dataclass(eq=False)
class FaultRule:
    """One registered rule. ``remaining`` is ``None`` for a rule that never runs out."""

    pattern: re.Pattern[str]
    method: str | None
    fault: Fault
    remaining: int | None
    rate: float
    hits: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to this request (ignoring its budget and rate)."""
        if self.method is not None and self.method != method.upper():
            return False
        return self.pattern.search(path) is not None


class FaultInjector:
    """The server's fault rules. Every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(
        self,
        path_pattern: str,
        status: int | None = None,
        count: int | None = 1,
        retry_after: float | None = None,
        delay_s: float = 0.0,
        drop_connection: bool = False,
        body: Mapping[str, Any] | None = None,
        method: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        rate: float = 1.0,
        seed: int | None = None,
    ) -> FaultRule:
        """Inject a fault into the next ``count`` matching requests.

        - ``status``: answer with this status and ``body`` (default ``{"detail": ...}``),
          plus ``Retry-After: retry_after`` when given and any extra ``headers``.
        - ``delay_s``: wait this long first (alone: then handle the request normally).
        - ``drop_connection``: close the connection without any response (after the delay).
        - ``count``: how many requests get the fault; ``None`` means until removed.
        - ``rate``: probability that a matching request gets it (``seed`` makes it
          reproducible); requests that escape do not use up ``count``.
        - ``method``: only this HTTP method (case-insensitive).

        Returns the rule, whose ``hits`` counts the requests it affected.
        """
        if status is None and not drop_connection and delay_s <= 0:
            raise ValueError("a fault needs a status, a delay or drop_connection")
        if status is not None and drop_connection:
            raise ValueError("status and drop_connection are exclusive")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None for unlimited)")
        if not 0.0 < rate <= 1.0:
            raise ValueError("rate must be in (0, 1]")
        fault = Fault(
            status=status,
            retry_after=retry_after,
            delay_s=max(0.0, delay_s),
            drop_connection=drop_connection,
            body=dict(body) if body is not None else None,
            headers=dict(headers or {}),
        )
        rule = FaultRule(
            pattern=re.compile(path_pattern),
            method=method.upper() if method else None,
            fault=fault,
            remaining=count,
            rate=rate,
            _rng=random.Random(seed),
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        """Drop one rule (no error if it is already spent or removed)."""
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        """Drop every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[FaultRule]:
        """The rules still active, in order."""
        with self._lock:
            return list(self._rules)

    def take(self, method: str, path: str) -> Fault | None:
        """The fault for this request, if a rule fires; spends one unit of its budget."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path):
                    continue
                if rule.rate < 1.0 and rule._rng.random() >= rule.rate:
                    continue
                rule.hits += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                return rule.fault
        return None
