"""``tinker-async``: the command line (also ``python -m tinker_async``).

Commands: ``run list|info``, ``checkpoint list|info|publish|unpublish|set-ttl|delete|
download``, ``session list|info``, ``model list``, ``billing usage|checkpoint-storage``,
``serve`` (the embedded server), ``doctor`` (probe a server) and ``version``; the first
names ``health``, ``models``, ``runs`` and ``checkpoints`` still work. ``tinker-async
--help`` and ``tinker-async COMMAND --help`` say more.

This module imports nothing but the standard library's basics, so that ``--help`` and
typos answer at once; each command imports what it needs when it runs.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit
    status: 0 ok, 1 server, network or file error, 2 usage error, 130 interrupted."""
    from ._main import run

    return run(argv)
