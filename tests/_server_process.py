"""The embedded server in a process of its own, so that a test can pause it (SIGSTOP).

``ServerProcess(**LocalServer_kwargs)`` starts ``python tests/_server_process.py`` and
talks to it over its stdin/stdout, one JSON line each way:

- ``ledger(model_id)`` -> ``[(seq_id, kind, tag), ...]`` (the server's applied-seq ledger),
- ``count(path_pattern, status=None, since=None)`` -> requests in its log,
- ``add_fault(**kwargs)`` -> ``srv.faults.add(**kwargs)``,
- ``pause()`` / ``resume()``: ``SIGSTOP`` / ``SIGCONT`` (every thread of it stops; the
  kernel still accepts connections, so a client sees a server that never answers),
- ``stop()`` (also on leaving ``with``).

Only 127.0.0.1. A command that gets no answer in 60 s fails the test, never hangs it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_REPLY_S = 60.0


class ServerProcess:
    """See the module docstring."""

    def __init__(self, **server_kwargs: Any) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(server_kwargs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        hello = self._reply()
        self.url: str = hello["url"]
        self.api_key: str = hello["api_key"]
        self.pid: int = self._proc.pid

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)

    def _reply(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=_REPLY_S)
        except queue.Empty:
            raise AssertionError("the server process did not answer within 60 s") from None
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"server process: {reply['error']}")
        return reply

    def _call(self, **command: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def ledger(self, model_id: str) -> list[tuple[int, str, str | None]]:
        return [(int(seq), str(kind), tag)
                for seq, kind, tag in self._call(cmd="ledger", model_id=model_id)["ledger"]]

    def count(self, path_pattern: str, status: int | None = None,
              since: float | None = None) -> int:
        return int(self._call(cmd="count", pattern=path_pattern, status=status,
                              since=since)["count"])

    def add_fault(self, **kwargs: Any) -> None:
        self._call(cmd="fault", kwargs=kwargs)

    def pause(self) -> None:
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._proc.poll() is not None:
            return
        self.resume()  # a stopped process cannot read its quit command
        try:
            self._call(cmd="quit")
        except (AssertionError, OSError):
            pass
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(30)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _serve(server_kwargs: dict[str, Any]) -> None:
    from tinker_async.local import LocalServer

    srv = LocalServer(**server_kwargs).start_in_thread()
    out = sys.stdout

    def say(reply: dict[str, Any]) -> None:
        out.write(json.dumps(reply) + "\n")
        out.flush()

    say({"url": srv.url, "api_key": srv.api_key})
    try:
        for line in sys.stdin:
            command = json.loads(line)
            name = command.get("cmd")
            try:
                if name == "ledger":
                    say({"ledger": [list(e) for e in srv.ledger(command["model_id"])]})
                elif name == "count":
                    pattern = re.compile(command["pattern"])
                    since = command.get("since") or 0.0
                    status = command.get("status")
                    say({"count": sum(1 for r in srv.requests
                                      if pattern.search(r.path) and r.time >= since
                                      and (status is None or r.status == status))})
                elif name == "fault":
                    srv.faults.add(**command["kwargs"])
                    say({"ok": True})
                elif name == "quit":
                    say({"ok": True})
                    break
                else:
                    say({"error": f"unknown command {name!r}"})
            except Exception as exc:  # reported to the test, which fails with it
                say({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        srv.stop(timeout=10)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
