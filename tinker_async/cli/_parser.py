"""The command line's grammar: every command, its options, help text and examples.

Only ``argparse`` is imported here, so ``tinker-async --help`` stays fast; each command's
code lives in another module, named by the ``handler`` default ("module:function") and
imported only when that command runs.

The global options (``--base-url``, ``--api-key``, ``--dialect``, ``--timeout``,
``--json``, ``--debug``) are accepted before or after the command: every parser gets
them, with ``SUPPRESS`` defaults so that a later parser never overwrites an earlier
value; :func:`parse` fills the real defaults in at the end.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = ["PROG", "UsageError", "parse"]

PROG = "tinker-async"
DIALECTS = ("official", "legacy", "strict", "tinkercloud", "twinkle")
GLOBAL_DEFAULTS: dict[str, Any] = {
    "base_url": None, "api_key": None, "dialect": None, "timeout": None,
    "json": False, "debug": False,
}


class UsageError(Exception):
    """The command line is wrong (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``tinker-async run list: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=min(100, _columns()))


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


# ------------------------------------------------------------------------ value types


def count(text: str) -> int:
    """An int >= 0 (``--limit``: 0 means all)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all) or more, got {value}")
    return value


def positive(text: str) -> int:
    """An int >= 1."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def duration(text: str) -> int:
    """A TTL: seconds, or a number with a unit (``90m``, ``12h``, ``7d``, ``2w``, ``1y``)."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:], 0) if raw else 0
    number = raw[:-1] if unit else raw
    try:
        value = int(float(number) * (unit or 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds or a duration like 12h, 7d, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


# ------------------------------------------------------------------------------ grammar


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    group = parser.add_argument_group("global options (before or after the command)")
    hidden = argparse.SUPPRESS
    group.add_argument("--base-url", metavar="URL", default=hidden,
                       help=hidden if suppress else "server URL (default: $TINKER_BASE_URL)")
    group.add_argument("--api-key", metavar="KEY", default=hidden,
                       help=hidden if suppress else "API key (default: $TINKER_API_KEY)")
    group.add_argument("--dialect", choices=DIALECTS, default=hidden,
                       help=hidden if suppress else
                       "what the server speaks (default: found at the handshake)")
    group.add_argument("--timeout", type=seconds, metavar="SECONDS", default=hidden,
                       help=hidden if suppress else "per-request read timeout")
    group.add_argument("--json", action="store_true", default=hidden,
                       help=hidden if suppress else "print JSON instead of tables")
    group.add_argument("--debug", action="store_true", default=hidden,
                       help=hidden if suppress else "show tracebacks and debug logs")


_COMMON = _Parser(add_help=False)
_global_options(_COMMON, suppress=True)


def _leaf(
    sub: Any, name: str, handler: str, summary: str, description: str,
    examples: Sequence[str], *, aliases: Sequence[str] = (), hidden: bool = False,
) -> argparse.ArgumentParser:
    epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(
        f"  {line}" for line in examples)
    extra: dict[str, Any] = {} if hidden else {"help": summary}
    parser: argparse.ArgumentParser = sub.add_parser(
        name, aliases=list(aliases), parents=[_COMMON], description=description,
        epilog=epilog + "\n\nglobal options: --base-url, --api-key, --dialect, --timeout, "
        "--json, --debug (see 'tinker-async --help')",
        formatter_class=_Formatter, **extra)
    parser.set_defaults(handler=handler)
    return parser


def _group(sub: Any, name: str, summary: str, description: str) -> Any:
    parser = sub.add_parser(name, help=summary, description=description,
                            parents=[_COMMON], formatter_class=_Formatter)
    parser.set_defaults(handler=None, group_parser=parser)
    return parser.add_subparsers(title="commands", metavar="COMMAND", dest="subcommand")


_PATH_HELP = ("a checkpoint path: tinker://RUN_ID/weights/NAME (or sampler_weights/, "
              "external_weights/)")
_C = "tinker_async.cli._commands:"
_K = "tinker_async.cli._checkpoints:"


def _run_commands(top: Any) -> None:
    sub = _group(top, "run", "training runs: list, info", "Manage training runs.")
    p = _leaf(sub, "list", _C + "run_list", "list training runs",
              "List your training runs, newest first as the server orders them.",
              [f"{PROG} run list", f"{PROG} run list --limit 0 -c id,model,checkpoint",
               f"{PROG} run list --json"])
    _run_list_options(p)
    p = _leaf(sub, "info", _C + "run_info", "show one training run",
              "Show a training run: base model, LoRA rank, status, last checkpoints.",
              [f"{PROG} run info 3f2a...:train:0"])
    p.add_argument("run_id", metavar="RUN_ID", help="a training run id (see 'run list')")


RUN_COLUMNS = ("id", "model", "owner", "lora", "updated", "status", "checkpoint",
               "checkpoint_time")


def _run_list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=count, default=20, metavar="N",
                   help="how many runs (default 20; 0 = all)")
    p.add_argument("-c", "--columns", metavar="COLS",
                   help=f"comma-separated columns from {', '.join(RUN_COLUMNS)} "
                        "(default id,model,lora,updated,status)")


def _checkpoint_commands(top: Any) -> None:
    sub = _group(top, "checkpoint",
                 "checkpoints: list, info, publish, unpublish, set-ttl, delete, download",
                 "Manage checkpoints (paths look like tinker://RUN_ID/weights/NAME).")
    p = _leaf(sub, "list", _K + "checkpoint_list", "list checkpoints",
              "List the checkpoints of one run (--run-id), or of all your runs.",
              [f"{PROG} checkpoint list --run-id RUN_ID", f"{PROG} checkpoint list --limit 0"])
    _checkpoint_list_options(p, positional=False)
    p = _leaf(sub, "info", _K + "checkpoint_info", "show one checkpoint",
              "Show a checkpoint: type, size, visibility, expiry, its run's LoRA rank.",
              [f"{PROG} checkpoint info tinker://RUN_ID/weights/final"])
    p.add_argument("path", metavar="PATH", help=_PATH_HELP)
    for name, verb in (("publish", "Make a checkpoint public (others can load it)."),
                       ("unpublish", "Make a public checkpoint private again.")):
        p = _leaf(sub, name, _K + "checkpoint_" + name, verb.split(" (")[0].lower().rstrip("."),
                  verb + " Only the owner of the run can.",
                  [f"{PROG} checkpoint {name} tinker://RUN_ID/weights/final"])
        p.add_argument("path", metavar="PATH", help=_PATH_HELP)
    _checkpoint_set_ttl(sub)
    _checkpoint_delete(sub)
    _checkpoint_download(sub)


def _checkpoint_set_ttl(sub: Any) -> None:
    p = _leaf(sub, "set-ttl", _K + "checkpoint_set_ttl", "set or remove a checkpoint's expiry",
              "Make a checkpoint expire TTL from now (--ttl), or never (--remove).",
              [f"{PROG} checkpoint set-ttl tinker://RUN_ID/weights/final --ttl 7d",
               f"{PROG} checkpoint set-ttl tinker://RUN_ID/weights/final --remove"])
    p.add_argument("path", metavar="PATH", help=_PATH_HELP)
    choice = p.add_mutually_exclusive_group(required=True)
    choice.add_argument("--ttl", type=duration, metavar="TTL",
                        help="seconds, or 90m / 12h / 7d / 2w / 1y")
    choice.add_argument("--remove", action="store_true", help="remove the expiry")


def _checkpoint_delete(sub: Any) -> None:
    p = _leaf(sub, "delete", _K + "checkpoint_delete", "delete checkpoints (asks first)",
              "Delete checkpoints for good: the paths given, or those of a run (--run-id),\n"
              "optionally filtered by type and creation time (UTC). Shows what will go, with\n"
              "sizes, and asks unless -y is given.",
              [f"{PROG} checkpoint delete tinker://RUN_ID/weights/old",
               f"{PROG} checkpoint delete --run-id RUN_ID --type sampler --before 2025-06-01 -y"])
    p.add_argument("paths", nargs="*", metavar="PATH", help="checkpoint paths to delete")
    p.add_argument("--run-id", metavar="RUN_ID", help="the checkpoints of this run")
    p.add_argument("--type", dest="kind", metavar="TYPE",
                   choices=("weights", "sampler_weights", "external_weights",
                            "training", "sampler", "external"),
                   help="only this type: training|sampler|external (with --run-id)")
    p.add_argument("--before", metavar="TIME", help="created before (ISO 8601, UTC assumed)")
    p.add_argument("--after", metavar="TIME", help="created after (ISO 8601, UTC assumed)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")


def _checkpoint_download(sub: Any) -> None:
    p = _leaf(sub, "download", _K + "checkpoint_download", "download a checkpoint's files",
              "Download a training (weights/...) or external weights checkpoint into\n"
              "OUTPUT/<path with / as _>. A training checkpoint is first exported as\n"
              "temporary external weights (this starts a training session on its base\n"
              "model); the export is deleted afterwards. Files arrive as NAME.part and are\n"
              "renamed when complete; a dropped connection resumes where it stopped, and an\n"
              "interrupted download of external weights resumes when run again.",
              [f"{PROG} checkpoint download tinker://RUN_ID/weights/final",
               f"{PROG} checkpoint download tinker://RUN_ID/external_weights/final -o ./models",
               f"{PROG} checkpoint download tinker://RUN_ID/weights/final --force"])
    p.add_argument("path", metavar="PATH", help=_PATH_HELP)
    p.add_argument("-o", "--output", metavar="DIR", help="parent directory (default: here)")
    p.add_argument("--force", action="store_true", help="replace an existing target directory")
    p.add_argument("--parallel", type=positive, default=4, metavar="N",
                   help="files at once (default 4)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None,
                     help="show the progress bar even when stderr is not a terminal")
    bar.add_argument("--no-progress", dest="progress", action="store_false",
                     help="never show the progress bar")


def _checkpoint_list_options(p: argparse.ArgumentParser, *, positional: bool) -> None:
    if positional:
        p.add_argument("run_id", metavar="RUN_ID", help="a training run id (see 'run list')")
    else:
        p.add_argument("--run-id", metavar="RUN_ID", help="only this run's checkpoints")
    p.add_argument("--limit", type=count, default=20, metavar="N",
                   help="how many, across all runs (default 20; 0 = all)")


def _session_commands(top: Any) -> None:
    sub = _group(top, "session", "sessions: list, info", "Inspect sessions.")
    p = _leaf(sub, "list", _C + "session_list", "list sessions",
              "List your sessions with their training runs and samplers.",
              [f"{PROG} session list", f"{PROG} session list --limit 0 --json"])
    p.add_argument("--limit", type=count, default=20, metavar="N",
                   help="how many (default 20; 0 = all)")
    p = _leaf(sub, "info", _C + "session_info", "show one session",
              "Show a session's training runs, samplers and metadata.",
              [f"{PROG} session info SESSION_ID"])
    p.add_argument("session_id", metavar="SESSION_ID", help="a session id (see 'session list')")


def _model_commands(top: Any) -> None:
    sub = _group(top, "model", "models: list", "The models the server offers.")
    p = _leaf(sub, "list", _C + "model_list", "list models",
              "List the models you can train or sample; SUBSTRING keeps the names that\n"
              "contain it (ignoring case). Pass a name as base_model.",
              [f"{PROG} model list", f"{PROG} model list qwen"])
    p.add_argument("substring", nargs="?", metavar="SUBSTRING", help="part of a model name")


def _billing_commands(top: Any) -> None:
    sub = _group(top, "billing", "billing: usage, checkpoint-storage", "Usage and storage.")
    p = _leaf(sub, "usage", _C + "billing_usage", "hourly usage rows",
              "Hourly usage between two UTC hour boundaries (RFC 3339), at most 14 days\n"
              "apart. Costs are estimates before credits, not invoice amounts.",
              [f"{PROG} billing usage 2026-01-01T00:00:00Z 2026-01-08T00:00:00Z",
               f"{PROG} billing usage 2026-01-01T00:00:00Z 2026-01-02T00:00:00Z --csv -"])
    p.add_argument("starting_on", metavar="STARTING_ON", help="start, e.g. 2026-01-01T00:00:00Z")
    p.add_argument("ending_before", metavar="ENDING_BEFORE", help="end (exclusive)")
    p.add_argument("--csv", metavar="PATH", help="write the rows as CSV to PATH ('-': stdout)")
    p.add_argument("--sessions-csv", metavar="PATH",
                   help="also write the per-session table as CSV ('-': stdout)")
    p = _leaf(sub, "checkpoint-storage", _C + "billing_storage", "checkpoint storage now",
              "Checkpoint storage in use now, per project and owner, with its monthly rate.",
              [f"{PROG} billing checkpoint-storage", f"{PROG} billing checkpoint-storage --csv -"])
    p.add_argument("--project-id", metavar="ID", help="only this project")
    p.add_argument("--csv", metavar="PATH", help="write the rows as CSV to PATH ('-': stdout)")


def _other_commands(top: Any) -> None:
    p = _leaf(top, "serve", "tinker_async.cli._serve:serve", "run the embedded server",
              "Run the embedded Tinker-compatible server (a small numpy model; no account,\n"
              "no GPU) until Ctrl-C. --api-key makes it require that key (default:\n"
              "$TINKER_LOCAL_API_KEY; unset accepts any key); --dialect makes it behave like\n"
              "another family of Tinker-compatible servers.",
              [f"{PROG} serve", f"{PROG} serve --port 0 --dialect legacy --api-key tml-dev"])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=count, default=8000, help="port (default 8000; 0 picks one)")
    p.add_argument("--data-dir", metavar="DIR", help="keep checkpoints here (default: temporary)")
    p.add_argument("--zero-compute", action="store_true", help="skip the model math")
    p.add_argument("--session-timeout", type=seconds, default=60.0, metavar="SECONDS",
                   help="end sessions without heartbeats after this long (default 60)")
    p.add_argument("--poll-hold", type=seconds, default=10.0, metavar="SECONDS",
                   help="longest hold of a future poll (default 10)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="a model to offer (repeatable; default local/byte-lm)")
    p.add_argument("--custom-loss-server-side", action="store_true",
                   help="offer server-side custom losses (needs torch)")
    p = _leaf(top, "doctor", "tinker_async.cli._doctor:doctor", "probe a server",
              "Probe a server: which kind it is (official, legacy, strict, tinkercloud,\n"
              "twinkle, tuft, skyrl-tx, ...), which features and routes it has and lacks,\n"
              "found from the handshake and harmless requests. --round-trip also creates a\n"
              "LoRA training client, runs one forward_backward and one sample, and closes.",
              [f"{PROG} doctor --base-url http://127.0.0.1:8000",
               f"{PROG} doctor --base-url http://127.0.0.1:8000 --round-trip --json"])
    p.add_argument("--round-trip", action="store_true", help="also train and sample once")
    p.add_argument("--model", metavar="NAME", help="model for --round-trip (default: first)")
    _leaf(top, "version", _C + "version", "print the version",
          "Print the version of tinker-async and of the Tinker API it speaks.",
          [f"{PROG} version"])
    # The first commands, kept under their old names (not listed in --help).
    _leaf(top, "health", _C + "health", "", "Check that the server answers (exit 1 if not).",
          [f"{PROG} health"], hidden=True)
    p = _leaf(top, "models", _C + "model_list", "", "Same as 'model list'.",
              [f"{PROG} models"], hidden=True)
    p.add_argument("substring", nargs="?", metavar="SUBSTRING", help="part of a model name")
    p = _leaf(top, "runs", _C + "run_list", "", "Same as 'run list'.",
              [f"{PROG} runs --limit 0"], hidden=True)
    _run_list_options(p)
    p = _leaf(top, "checkpoints", _K + "checkpoint_list", "",
              "Same as 'checkpoint list --run-id RUN_ID'.",
              [f"{PROG} checkpoints RUN_ID"], hidden=True)
    _checkpoint_list_options(p, positional=True)


_DESCRIPTION = """\
Manage Tinker training runs, checkpoints and sessions; run and probe servers.
The server and key come from --base-url / --api-key, or TINKER_BASE_URL /
TINKER_API_KEY."""

_EPILOG = f"""\
examples:
  {PROG} serve --port 8000 &                  # the embedded server, for trying things
  export TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-dev
  {PROG} run list
  {PROG} checkpoint list --run-id RUN_ID
  {PROG} checkpoint download tinker://RUN_ID/weights/final -o ./models
  {PROG} doctor --round-trip

'{PROG} COMMAND --help' shows a command's options and examples. Exit status: 0 ok,
1 server, network or file error, 2 bad command line, 130 interrupted.
The first commands still work under their old names: health, models, runs,
checkpoints RUN_ID."""


def build() -> argparse.ArgumentParser:
    """The whole parser."""
    parser = _Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=_Formatter)
    _global_options(parser, suppress=False)
    parser.add_argument("-V", "--version", action="store_true", dest="show_version",
                        help="print the version and exit")
    top = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for add in (_run_commands, _checkpoint_commands, _session_commands, _model_commands,
                _billing_commands, _other_commands):
        add(top)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; raise :class:`UsageError` for a wrong command line. ``--help`` exits."""
    parser = build()
    args = parser.parse_args(list(argv))
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if getattr(args, "show_version", False):
        args.handler = _C + "version"
    elif getattr(args, "command", None) is None:
        raise UsageError(f"{PROG}: a command is required (see '{PROG} --help')")
    elif getattr(args, "handler", None) is None:
        group: argparse.ArgumentParser = args.group_parser
        raise UsageError(f"{group.prog}: a command is required (see '{group.prog} --help')")
    return args


Handler = Callable[[argparse.Namespace], Any]
