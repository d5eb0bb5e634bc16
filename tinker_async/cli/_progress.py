"""A download progress bar on stderr: bytes, percent, rate and ETA.

On a terminal it redraws one line (at most 10 times a second); elsewhere (``--progress``
into a file or pipe) it writes a line at most once a second, and always a last one.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from ._output import human_size

__all__ = ["ProgressBar"]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """Feed it ``update(bytes_done, bytes_total, file_name)``; ``close()`` at the end."""

    def __init__(self, label: str, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = 0.1 if self.tty else 1.0
        self.started = time.monotonic()
        self.baseline: int | None = None  # bytes already there at the first update (resumed)
        self.done = 0
        self.total: int | None = None
        self.last_draw = 0.0
        self.rate = 0.0
        self._last_sample = (self.started, 0)
        self.drawn = False

    def update(self, done: int, total: int | None, name: str) -> None:
        now = time.monotonic()
        if self.baseline is None:
            self.baseline = done
            self._last_sample = (now, done)
        self.done, self.total = done, total
        then, before = self._last_sample
        if now - then >= 0.5:  # a smoothed rate: the last half-second windows weigh most
            current = max(0.0, (done - before) / (now - then))
            self.rate = current if self.rate == 0 else 0.6 * current + 0.4 * self.rate
            self._last_sample = (now, done)
        if now - self.last_draw >= self.interval:
            self.last_draw = now
            self._draw(now)

    def line(self, now: float | None = None, columns: int = 100) -> str:
        """The current state as text (without the bar's terminal control), fitted to
        ``columns`` by narrowing the bar."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-6)
        rate = self.rate or max(0, self.done - (self.baseline or 0)) / elapsed
        tail: list[str] = []
        fraction = min(1.0, self.done / self.total) if self.total else None
        if fraction is not None:
            tail.append(f"{fraction * 100:3.0f}%")
            tail.append(f"{human_size(self.done)}/{human_size(self.total)}")
        else:
            tail.append(human_size(self.done))
        tail.append(f"{human_size(int(rate))}/s")
        if self.total and rate > 0 and self.done < self.total:
            tail.append(f"ETA {_clock((self.total - self.done) / rate)}")
        elif self.total and self.done >= self.total:
            tail.append(f"in {_clock(elapsed)}")
        parts = [self.label]
        if fraction is not None:
            room = columns - 1 - len(self.label) - len("  ".join(tail)) - 6
            width = max(8, min(30, room))
            filled = int(fraction * width)
            parts.append("[" + "#" * filled + "-" * (width - filled) + "]")
        return "  ".join(parts + tail)

    def _draw(self, now: float) -> None:
        if self.tty:
            columns = shutil.get_terminal_size((80, 24)).columns
            text = self.line(now, columns)
            self.stream.write("\r" + text[: columns - 1].ljust(columns - 1))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """Draw the final state (and end the line on a terminal)."""
        if self.baseline is None:
            return
        self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
