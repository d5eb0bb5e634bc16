"""One sampling limit shared by many processes on Ray (the optional ``tinker-async[ray]``).

Each process's SamplingClients already queue their calls under an admission limit of
their own (``tinker_async._admission``). N rollout workers that each learn the server's
capacity alone still overshoot it together, N times over in the worst case. A
:class:`SharedLimit` is one small Ray actor that holds the limit of each sampling target
for all of them; every process takes a share of it::

    import ray
    from tinker_async.ray import SharedLimit

    limit = SharedLimit.create(max_concurrency=64)    # or SharedLimit.create(): adaptive

    @ray.remote
    class Rollouts:
        async def run(self, sampler, limit):
            limit.attach(sampler)                       # this process takes a share
            ...                                         # sample as usual

How the limit is shared, and why this way:

- **Shares, not a permit per call.** Each process keeps its own FIFO queue (a
  :class:`RayLimiter`, plugged in with ``SamplingClient.set_limiter``) under a *share* of
  the limit, and tells the actor every 0.1 s while it works (at once when a call waits
  for a share) how many calls it has in flight and queued, and what the server said:
  completions, 429s, paused answers. The actor answers with its new share. A call costs
  no round trip to the actor; the actor costs a few calls a second per process.
- **Shares never add up to more than the limit.** Shares go max-min fair by demand (in
  flight + queued; what no one needs goes to those with demand). A share taken from
  one process is given to another only once the first has reported its calls back under
  it, so the processes' calls in flight together stay under the limit while it moves.
  Limitation: with fewer slots than processes, a process may get none for a while.
- **The limit** is ``max_concurrency`` when given (a quota you know), else it adapts as
  the single-process limiter does, from everybody's signals together: slow start (+1 per
  completion while it is in use), then additive increase, and one multiplicative
  decrease (x0.9, to at most what is in flight) per round trip on a 429 or a paused
  answer from any process.
- A process that stops reporting (it died) loses its share after 5 s.

``key``: targets are told apart by their sampling session id by default; pass ``key=`` to
:meth:`SharedLimit.attach` to put several samplers under one limit (say, one per base
model when the server's capacity is per model).

Import this module only where Ray is installed; it imports ``ray``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any

try:
    import ray
except ImportError as exc:  # the optional extra
    raise ImportError("tinker_async.ray needs Ray: pip install 'tinker-async[ray]' "
                      "(or pip install ray)") from exc

from ._admission import Outcome, Permit, QueueLimiter, Signal

if TYPE_CHECKING:
    from .sampling import SamplingClient

__all__ = ["RayLimiter", "SharedLimit"]

log = logging.getLogger("tinker_async")

#: how often a working process reports (and gets its share); an idle one, less often
SYNC_INTERVAL_S = 0.1
IDLE_SYNC_INTERVAL_S = 0.5
#: at most one report per this long, however many calls wait
_MIN_SYNC_GAP_S = 0.01
#: a process silent for this long loses its share
MEMBER_TTL_S = 5.0
_SYNC_TIMEOUT_S = 30.0


# ------------------------------------------------------------------------ the actor


@dataclasses.dataclass
class _Member:
    in_flight: int = 0
    queued: int = 0
    granted: int = 0
    seen: float = 0.0


class _Target:
    """One sampling target's limit and the processes sharing it (in the actor)."""

    def __init__(self, fixed: int | None, initial: int, min_limit: int, max_limit: int,
                 backoff: float) -> None:
        self.fixed = fixed
        self.limit = float(fixed if fixed is not None else initial)
        self.min_limit, self.max_limit, self.backoff = min_limit, max_limit, backoff
        self.ssthresh = float(max_limit)
        self.members: dict[str, _Member] = {}
        self.latency = 0.0  # moving average of admission-to-result times (s)
        self.cut_at = -math.inf
        self.completed = self.throttled = self.paused = 0
        self.peak_granted = 0

    def report(self, name: str, in_flight: int, queued: int, ok: int, throttled: int,
               paused: int, latency_sum: float, now: float) -> int:
        """Take a process's report; its new share."""
        member = self.members.setdefault(name, _Member())
        member.in_flight, member.queued, member.seen = in_flight, queued, now
        for other in [n for n, m in self.members.items() if now - m.seen > MEMBER_TTL_S]:
            del self.members[other]
        self.completed += ok
        self.throttled += throttled
        self.paused += paused
        if ok:
            mean = latency_sum / ok
            self.latency = mean if self.latency == 0.0 else self.latency + 0.2 * (
                mean - self.latency)
        if self.fixed is None:
            self._adapt(ok, throttled + paused, now)
        share = self._share(name)
        member.granted = share
        self.peak_granted = max(self.peak_granted,
                                sum(max(m.granted, m.in_flight) for m in self.members.values()))
        return share

    def _adapt(self, ok: int, congested: int, now: float) -> None:
        in_flight = sum(m.in_flight for m in self.members.values())
        if congested:
            # One decrease per round trip: later signals are from calls sent before it.
            if now - self.cut_at < max(self.latency, 0.05):
                return
            self.cut_at = now
            if in_flight == 0:  # the server holds none of ours: probe, regrow fast
                self.ssthresh = max(float(self.min_limit), self.backoff * self.limit)
                self.limit = float(self.min_limit)
            else:
                self.limit = self.ssthresh = max(
                    float(self.min_limit), min(self.backoff * self.limit, float(in_flight)))
            return
        if not ok or 2 * in_flight < self.limit:
            return  # not in use: no evidence that more would be served
        if self.limit < self.ssthresh:
            self.limit = min(self.limit + ok, self.ssthresh, float(self.max_limit))
        else:
            step = self.limit / 32.0 if self.limit < 32.0 else max(1.0, self.limit / 64.0)
            self.limit = min(float(self.max_limit), self.limit + ok * step / self.limit)

    def _share(self, name: str) -> int:
        limit = int(self.limit)
        demands = {n: m.in_flight + m.queued for n, m in self.members.items()}
        fair = _max_min_fair(limit, demands)
        # What others hold (granted, or still in flight under an older, larger share) is
        # not ours to give until they report it back.
        others = sum(max(m.granted, m.in_flight) for n, m in self.members.items() if n != name)
        return max(0, min(fair[name], limit - others))

    def snapshot(self) -> dict[str, Any]:
        return {
            "limit": int(self.limit), "fixed": self.fixed is not None,
            "completed": self.completed, "throttled": self.throttled, "paused": self.paused,
            "peak_granted": self.peak_granted,
            "members": {n: dataclasses.asdict(m) for n, m in self.members.items()},
        }


def _max_min_fair(total: int, demands: dict[str, int]) -> dict[str, int]:
    """Split ``total`` by ``demands``: nobody gets more than it asks until everyone has
    what it asks or an equal part; what is left goes evenly to those with demand."""
    out = dict.fromkeys(demands, 0)
    left = total
    order = sorted(demands, key=lambda n: (demands[n], n))
    for i, name in enumerate(order):
        give = min(demands[name], left // (len(order) - i))
        out[name] = give
        left -= give
    wanting = [n for n in order if demands[n] > 0]
    for i, name in enumerate(wanting):
        extra = left // (len(wanting) - i)
        out[name] += extra
        left -= extra
    return out


class _LimitKeeper:
    """The Ray actor behind a :class:`SharedLimit` (its methods run one at a time)."""

    def __init__(self, max_concurrency: int | None, initial_limit: int, min_limit: int,
                 max_limit: int, backoff: float) -> None:
        self._settings = (max_concurrency, initial_limit, min_limit, max_limit, backoff)
        self._targets: dict[str, _Target] = {}

    def report(self, key: str, member: str, in_flight: int, queued: int, ok: int,
               throttled: int, paused: int, latency_sum: float) -> int:
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = _Target(*self._settings)
        return target.report(member, in_flight, queued, ok, throttled, paused, latency_sum,
                             time.monotonic())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {key: target.snapshot() for key, target in self._targets.items()}


@functools.cache
def _keeper_class() -> Any:
    """The keeper as a Ray actor class (made once: Ray exports each one it is given)."""
    return ray.remote(_LimitKeeper)


# ------------------------------------------------------------------------ the handle


class SharedLimit:
    """A handle on one limit keeper actor; pass it to Ray tasks and actors as an argument.

    Make it with :meth:`create` (in the driver, after ``ray.init()``); in each worker,
    :meth:`attach` a SamplingClient to it.
    """

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    @classmethod
    def create(
        cls,
        name: str | None = None,
        *,
        max_concurrency: int | None = None,
        initial_limit: int = 32,
        min_limit: int = 1,
        max_limit: int = 4096,
        backoff: float = 0.9,
    ) -> SharedLimit:
        """Start the keeper actor (no CPU reserved); with ``name``, the existing one of
        that name if there is one. ``max_concurrency`` fixes every target's limit;
        without it each adapts from ``initial_limit`` (see the module docstring)."""
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if not 1 <= min_limit <= initial_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        if not 0.0 < backoff < 1.0:
            raise ValueError("backoff must be between 0 and 1")
        options: dict[str, Any] = {"num_cpus": 0}
        if name is not None:
            options.update(name=name, get_if_exists=True)
        keeper = _keeper_class().options(**options)
        return cls(keeper.remote(max_concurrency, initial_limit, min_limit, max_limit, backoff))

    def __repr__(self) -> str:
        return f"SharedLimit({self._actor!r})"

    def attach(self, client: SamplingClient, *, key: str | None = None) -> RayLimiter:
        """Make ``client``'s sampler (every client of it in this process) take its share
        of the limit of ``key`` (default: its sampling session id); the limiter."""
        limiter = self.limiter(key if key is not None else client.sampling_session_id)
        client.set_limiter(limiter)
        return limiter

    def limiter(self, key: str) -> RayLimiter:
        """This process's :class:`RayLimiter` for ``key`` (one per process and key)."""
        with _limiters_lock:
            ident = (self._actor, key)  # handles compare by actor id
            limiter = _limiters.get(ident)
            if limiter is None:
                limiter = _limiters[ident] = RayLimiter(self._actor, key)
            return limiter

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each target's limit, counts and processes (their shares, in flight, queued),
        as the keeper has them now; ``peak_granted`` is the most ever held at once."""
        result: dict[str, dict[str, Any]] = _answer(self._actor.snapshot.remote())
        return result


def _answer(ref: Any) -> Any:
    """An actor call's answer, blocking this thread (``ray.get`` would warn in an async
    actor's process even off its event loop)."""
    return ref.future().result(_SYNC_TIMEOUT_S)


#: this process's limiters, by (keeper actor handle, key)
_limiters: weakref.WeakValueDictionary[tuple[Any, str], RayLimiter] = (
    weakref.WeakValueDictionary())
_limiters_lock = threading.Lock()


class RayLimiter(QueueLimiter):
    """This process's FIFO queue under its share of a :class:`SharedLimit`.

    A thread of its own reports to the keeper actor and applies the share it answers
    (every 0.1 s while calls are in flight or queued, every 0.5 s when idle, and at once
    when a call waits for a share), so that it works the same from any event loop.
    """

    def __init__(self, actor: Any, key: str) -> None:
        super().__init__(0)  # no share until the keeper gives one
        self._actor = actor
        self._key = key
        self._ok = self._throttled = self._paused = 0
        self._latency_sum = 0.0
        self._wake = threading.Event()
        self._pid = -1
        self._member = ""
        self._warned = False
        self._start()

    def __repr__(self) -> str:
        return (f"<RayLimiter {self._key} share={self.limit} in_flight={self._in_flight} "
                f"queued={self._queued}>")

    @property
    def limit(self) -> int:
        """This process's share now (it may be 0 while others hold the whole limit)."""
        return max(0, int(self._limit))

    def _start(self) -> None:
        """A member name and a reporting thread for this process (again after a fork)."""
        self._pid = os.getpid()
        self._member = f"{socket.gethostname()}:{self._pid}:{uuid.uuid4().hex[:8]}"
        thread = threading.Thread(target=_report_loop, args=(weakref.ref(self), self._wake),
                                  name=f"tinker-async-shared-limit-{self._key}", daemon=True)
        thread.start()

    async def acquire(self, timeout: float | None = None, *, first: bool = False) -> Permit:
        if self._pid != os.getpid():
            self._start()
        if self._in_flight >= self.limit:
            self._wake.set()  # ask for a share now
        return await super().acquire(timeout, first=first)

    def signal(self, permit: Permit | None, signal: Signal) -> None:
        super().signal(permit, signal)
        if signal is Signal.PAUSED:
            with self._lock:
                self._paused += 1
            self._wake.set()

    def _adjust(self, permit: Permit, outcome: Outcome, now: float) -> None:
        # Lock held. The limit moves in the keeper, from every process's counts.
        if outcome is Outcome.OK:
            self._ok += 1
            self._latency_sum += now - permit.granted_at
        elif outcome is Outcome.THROTTLED:
            self._throttled += 1
            self._wake.set()

    def _report(self) -> None:
        """Send the counts since the last report; apply the share the keeper answers."""
        with self._lock:
            report = (self._in_flight, self._queued, self._ok, self._throttled,
                      self._paused, self._latency_sum)
            self._ok = self._throttled = self._paused = 0
            self._latency_sum = 0.0
        try:
            share = _answer(self._actor.report.remote(self._key, self._member, *report))
        except Exception as exc:  # the keeper is gone or slow: keep the share we have
            if not self._warned:
                self._warned = True
                log.warning("shared limit %s: the keeper actor did not answer (%s); keeping "
                            "this process's share of %d", self._key, exc, self.limit)
            return
        self._warned = False
        self.set_limit(share)


def _report_loop(ref: weakref.ref[RayLimiter], wake: threading.Event) -> None:
    """Report while the limiter lives (holding it only while reporting)."""
    last = 0.0
    while True:
        limiter = ref()
        if limiter is None or limiter._pid != os.getpid():
            return
        busy = limiter.in_flight or limiter.queued
        del limiter
        wake.wait(SYNC_INTERVAL_S if busy else IDLE_SYNC_INTERVAL_S)
        gap = last + _MIN_SYNC_GAP_S - time.monotonic()
        if gap > 0:
            time.sleep(gap)
        wake.clear()
        limiter = ref()
        if limiter is None:
            return
        last = time.monotonic()
        limiter._report()
        del limiter
