"""``tinker-async``: a small command line over the REST client and the embedded server.

    tinker-async serve [--port 8000 ...]         run the embedded server (python -m tinker_async.local)
    tinker-async health                          is the server up?
    tinker-async models                          models the server supports
    tinker-async runs [--limit N]                training runs (all pages with --limit 0)
    tinker-async checkpoints RUN_ID              checkpoints of one run
    tinker-async version

The server and key come from ``--base-url`` / ``--api-key`` or ``TINKER_BASE_URL`` /
``TINKER_API_KEY``. ``--json`` prints JSON instead of a table. Errors print one line and
exit 1.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import TinkerError
from .rest import RestClient
from .types import _wire

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinker-async", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="server URL (default: $TINKER_BASE_URL)")
    parser.add_argument("--api-key", help="API key (default: $TINKER_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the embedded server", add_help=False)
    sub.add_parser("health", help="check that the server answers")
    sub.add_parser("models", help="list supported models")
    runs = sub.add_parser("runs", help="list training runs")
    runs.add_argument("--limit", type=int, default=20, help="how many (0 = all)")
    ckpts = sub.add_parser("checkpoints", help="list a run's checkpoints")
    ckpts.add_argument("run_id")
    sub.add_parser("version", help="print the version")
    return parser


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(_wire.encode_json(rows).decode() + "\n")
        return
    if not rows:
        print("(none)")
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def _run(args: argparse.Namespace) -> int:
    if args.command == "version":
        print(f"tinker-async {__version__}")
        return 0
    rest = RestClient(base_url=args.base_url, api_key=args.api_key)
    if args.command == "health":
        ok = rest.health_check().result()
        print("healthy" if ok else "not answering")
        return 0 if ok else 1
    if args.command == "models":
        caps = rest.get_server_capabilities().result()
        _print_rows([{"model": m.model_name} for m in caps.supported_models], args.json)
    elif args.command == "runs":
        runs = rest.iter_training_runs(page_size=100)
        chosen = runs if args.limit == 0 else itertools.islice(runs, args.limit)
        _print_rows([{"id": r.training_run_id, "model": r.base_model, "lora_rank": r.lora_rank,
                      "last_request": r.last_request_time} for r in chosen], args.json)
    elif args.command == "checkpoints":
        found = rest.list_checkpoints(args.run_id).result().checkpoints
        _print_rows([{"path": c.tinker_path, "type": c.checkpoint_type, "time": c.time,
                      "bytes": c.size_bytes, "public": c.public} for c in found], args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from .local.__main__ import main as serve

        return serve(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except TinkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
