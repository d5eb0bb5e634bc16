"""How long a call may take: one budget per call, drawn on by every wait inside it.

A public call (``foo_async`` and its plain form) opens a :class:`Budget` when it starts
(``@homed`` does it). Everything the call does then — each HTTP attempt, each retry's
back-off, each poll of a server future, in whatever task it runs — reads the same budget
from a context variable, so no inner retry policy can outlive its caller's limit.

Two kinds of call, with different limits (``ClientConfig``; the README lists the defaults):

- **control** calls answer directly (handshake, REST reads and writes, sessions, creating
  a sampling client): the whole call, retries included, must end within
  ``control_timeout``; each attempt may use at most half of it, so one retry fits.
- **work** calls queue work on the server or may make it load weights (sampling,
  training steps, checkpoints, creating models and sampling clients): no whole-call limit unless ``call_timeout`` is set, since a long sample may
  take long. Instead they fail when the server shows no sign of life (no HTTP answer of
  any kind) for ``progress_timeout``.

Background tasks (the heartbeat, a sampling session's long-poll) run without a budget:
they call :func:`detach` so they do not inherit that of the call that started them.
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._config import ClientConfig

__all__ = ["WORK_CALLS", "Budget", "Limit", "current", "detach", "enter", "leave"]

#: Calls that queue work on the server (by the name of their ``_async`` method). Every
#: other public call is a control call.
WORK_CALLS = frozenset({
    "sample_async",
    "compute_logprobs_async",
    "forward_async",
    "forward_backward_async",
    "forward_backward_custom_async",
    "optim_step_async",
    "save_state_async",
    "load_state_async",
    "load_state_with_optimizer_async",
    "save_weights_for_sampler_async",
    "save_weights_and_get_sampling_client_async",
    "save_weights_external_async",
    "create_lora_training_client_async",
    # a server may load weights before it answers (skyrl-tx compiles on first use)
    "create_sampling_client_async",
    "create_training_client_from_state_async",
    "create_training_client_from_state_with_optimizer_async",
    "copy_weights_async",
    "download_checkpoint_async",
    "get_checkpoint_archive_url_async",
    "get_checkpoint_archive_url_from_tinker_path_async",
    "export_session_trace_async",
})


class Limit:
    """A point in time (``time.monotonic()``) by which something must end, and why.

    Made for every request, so its message is only formatted when it is read: ``reason``
    is ``template.format(*args)``."""

    __slots__ = ("_args", "_template", "at", "option")

    def __init__(self, at: float, option: str, template: str, *args: object) -> None:
        self.at = at
        #: the client argument that sets it
        self.option = option
        self._template = template
        self._args = args

    @property
    def reason(self) -> str:
        """Names the limit in a message: "the 30 s control_timeout of RestClient.x ran out"."""
        return self._template.format(*self._args)


class Budget:
    """The time limits of one call (see the module docstring)."""

    __slots__ = ("retries", "started", "what", "work")

    def __init__(self, what: str, work: bool) -> None:
        self.what = what
        self.work = work
        self.started = time.monotonic()
        #: HTTP attempts retried within this call (read by the sampling stats)
        self.retries = 0

    def limit(self, config: ClientConfig) -> Limit | None:
        """The whole-call limit under ``config`` (None: the call has none)."""
        if self.work:
            seconds = config.call_timeout
            name = "call_timeout"
        else:
            seconds = config.control_timeout
            name = "control_timeout"
        if seconds is None:
            return None
        return Limit(self.started + seconds, name, "the {:g} s {} of {} ran out", seconds, name,
                     self.what)


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "tinker_async_budget", default=None)

current = _current.get


def enter(what: str, work: bool) -> contextvars.Token[Budget | None] | None:
    """Open a budget for the call ``what``, unless one is open already (a call made inside
    another one draws on its caller's budget). Returns the token for :func:`leave`."""
    if _current.get() is not None:
        return None
    return _current.set(Budget(what, work))


def leave(token: contextvars.Token[Budget | None] | None) -> None:
    if token is not None:
        _current.reset(token)


def detach() -> None:
    """Run the current task without a budget (background loops call this first)."""
    if _current.get() is not None:
        _current.set(None)
