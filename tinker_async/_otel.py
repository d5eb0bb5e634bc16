"""OpenTelemetry for sampling, when ``opentelemetry-api`` is importable (``tinker-async[otel]``).

Nothing is imported until the program itself has imported ``opentelemetry`` (no provider
or exporter can be configured before that); without the package the library works the
same and this module does nothing. With it:

- **Metrics** (meter ``tinker_async``), observed at collection time from every live
  sampling target, so they cost nothing per request: the counters
  ``tinker_async.sampling.requests`` (submits sent), ``.completed``, ``.failed``,
  ``.rate_limited`` (429 answers), ``.retries``, ``.timeouts``, and the gauges
  ``.in_flight``, ``.queued``, ``.limit``, each with the attribute
  ``tinker.sampling_session_id``. Two histograms are recorded per sample (only while a
  meter provider is configured): ``tinker_async.sampling.duration`` (admission to result)
  and ``tinker_async.sampling.queue_wait`` (seconds in the client's admission queue).
- **A span per sample** (tracer ``tinker_async``), ``tinker_async.sample``, from the call
  to its result, only while a tracer provider is configured: attributes
  ``tinker.sampling_session_id``, ``tinker.queue_wait_s``, ``tinker.rate_limited`` (429s
  this call met) and ``tinker.outcome``; error status on failure.

The API alone exports nothing: data leaves the process only through the SDK and the
exporter the program configured itself.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from ._version import __version__

__all__ = ["Source", "Telemetry", "get", "register"]

#: how often the "is a provider configured?" answer is looked at again (seconds)
_RECHECK_S = 1.0
_COUNTERS = ("requests", "completed", "failed", "rate_limited", "retries", "timeouts")
_GAUGES = ("in_flight", "queued", "limit")


class Source(Protocol):
    """Something whose counters become metrics (a sampling target)."""

    def otel_attributes(self) -> dict[str, str]: ...

    def otel_values(self) -> dict[str, int]: ...


_sources: weakref.WeakSet[Any] = weakref.WeakSet()


def register(source: Source) -> None:
    """Observe ``source``'s counters while it lives."""
    _sources.add(source)


class Telemetry:
    """The OpenTelemetry instruments of this library (made once, on first use)."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace

        self._trace = trace
        self._metrics = metrics
        self.tracer = trace.get_tracer("tinker_async", __version__)
        meter = metrics.get_meter("tinker_async", __version__)
        for name in _COUNTERS:
            meter.create_observable_counter(
                f"tinker_async.sampling.{name}", callbacks=[self._observer(name)],
                description=f"sampling {name.replace('_', ' ')} (cumulative)")
        for name in _GAUGES:
            meter.create_observable_gauge(
                f"tinker_async.sampling.{name}", callbacks=[self._observer(name)],
                description=f"sampling calls {name.replace('_', ' ')} now")
        self.duration = meter.create_histogram(
            "tinker_async.sampling.duration", unit="s",
            description="time from admission to the sample's result")
        self.queue_wait = meter.create_histogram(
            "tinker_async.sampling.queue_wait", unit="s",
            description="time a sample waited in the client's admission queue")
        self._checked_at = -1e9
        self._tracing = False
        self._metering = False

    def _observer(self, name: str) -> Any:
        Observation = self._metrics.Observation

        def observe(_options: Any) -> Iterator[Any]:
            for source in list(_sources):
                yield Observation(source.otel_values()[name], source.otel_attributes())

        return observe

    def _recheck(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < _RECHECK_S:
            return
        self._checked_at = now
        trace, metrics = self._trace, self._metrics
        self._tracing = not isinstance(trace.get_tracer_provider(),
                                       (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
        provider = type(metrics.get_meter_provider()).__name__
        self._metering = provider not in ("_ProxyMeterProvider", "NoOpMeterProvider")

    @property
    def active(self) -> bool:
        """Whether a tracer or meter provider is configured (so per-sample work is due)."""
        self._recheck()
        return self._tracing or self._metering

    def start_span(self, attributes: dict[str, str]) -> Any:
        """A started span for one sample, or None while no tracer provider is configured."""
        if not self._tracing:
            return None
        return self.tracer.start_span("tinker_async.sample",
                                      kind=self._trace.SpanKind.CLIENT, attributes=attributes)

    def finish(self, span: Any, attributes: dict[str, str], outcome: str, queue_wait: float,
               duration: float | None, rate_limited: int, error: BaseException | None) -> None:
        """End one sample's span and record its histograms."""
        if self._metering:
            self.queue_wait.record(queue_wait, attributes)
            if duration is not None:
                self.duration.record(duration, attributes)
        if span is None:
            return
        span.set_attribute("tinker.outcome", outcome)
        span.set_attribute("tinker.queue_wait_s", queue_wait)
        span.set_attribute("tinker.rate_limited", rate_limited)
        if error is not None:
            span.record_exception(error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error)[:200]))
        span.end()


_telemetry: Telemetry | None = None
_missing = False


def get() -> Telemetry | None:
    """The instruments, once the program has imported ``opentelemetry`` (nothing can be
    configured before that, so until then this costs a dict lookup and imports nothing);
    None while it has not, or when the package is missing."""
    global _telemetry, _missing
    if _telemetry is not None or _missing:
        return _telemetry
    if "opentelemetry" not in sys.modules:
        return None
    try:
        _telemetry = Telemetry()
    except ImportError:
        _missing = True
    return _telemetry


def sources() -> Iterable[Any]:
    """The registered sources (for tests and debugging)."""
    return list(_sources)
