#!/usr/bin/env python3
"""Generate the sync forms of the clients' async methods, into the client classes.

Every public ``async def foo_async(self, ...)`` of a class that has the marker block

    # --- BEGIN GENERATED SYNC FORMS (scripts/gen_sync.py; do not edit) ---
    # --- END GENERATED SYNC FORMS ---

gets a twin ``def foo(self, ...)`` with the same parameters, written between the markers:

- ``foo_async -> APIFuture[T]`` (queued training ops) gives ``foo -> APIFuture[T]``
  through ``_sync.call_flat``;
- ``foo_async -> T`` gives ``foo -> APIFuture[T]`` through ``_sync.call``, and a client
  result gives its Backcompat future (a future that is also the client);
- the few listed in ``BLOCKING`` (where the official SDK's plain form blocks and returns
  the value), and every method of a class in ``BLOCKING_CLASSES``, give ``foo -> T``.

Each plain form first checks its arguments against the ``_async`` method's annotations
(``_argcheck``), so a wrong type fails at the call, not later in the future.

The output is checked in, so type checkers and IDEs see both forms with real signatures,
and tracing code can still replace either with ``setattr`` on the class. CI runs
``python scripts/gen_sync.py --check``, which fails if any output is stale.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["rest.py", "service.py", "training.py", "sampling.py", "twinkle.py"]
BEGIN = "# --- BEGIN GENERATED SYNC FORMS (scripts/gen_sync.py; do not edit) ---"
END = "# --- END GENERATED SYNC FORMS ---"
#: Results that are clients get a future that is also the client (old code uses it so).
CLIENT_FUTURES = {"TrainingClient": "BackcompatTrainingClientFuture",
                  "SamplingClient": "BackcompatSamplingClientFuture"}
#: Sync forms that block and return the value, because the official SDK's do.
BLOCKING = {("ServiceClient", "get_server_capabilities_async")}
#: Classes whose plain forms all block and return values (Twinkle's client API).
BLOCKING_CLASSES = {"TwinkleClient"}


def _call_args(args: ast.arguments) -> str:
    parts: list[str] = []
    for a in [*args.posonlyargs, *args.args][1:]:  # drop self
        parts.append(a.arg)
    if args.vararg:
        parts.append(f"*{args.vararg.arg}")
    parts.extend(f"{a.arg}={a.arg}" for a in args.kwonlyargs)
    if args.kwarg:
        parts.append(f"**{args.kwarg.arg}")
    return ", ".join(parts)


def _summary(fn: ast.AsyncFunctionDef) -> list[str]:
    """The first paragraph of the docstring (whole sentences, not just its first line)."""
    doc = (ast.get_docstring(fn) or "").strip()
    first = doc.split("\n\n")[0].splitlines() if doc else []
    return [line.strip() for line in first] or [f"Sync form of {fn.name}."]


def _sync_form(fn: ast.AsyncFunctionDef, indent: str, owner: str) -> str:
    name = fn.name.removesuffix("_async")
    returns = ast.unparse(fn.returns) if fn.returns else "Any"
    summary = _summary(fn)
    if (owner, fn.name) in BLOCKING or owner in BLOCKING_CLASSES:
        body = [
            f"def {name}({ast.unparse(fn.args)}) -> {returns}:",
            f'    """{summary[0]}',
            *(f"    {line}" for line in summary[1:]),
            "",
            f"    Sync form of :meth:`{fn.name}`; blocks until done and returns the value, as",
            "    the API it mirrors does.",
            '    """',
            f"    _argcheck.check_call(self.{fn.name}, locals())",
            f"    return _sync.call(self, self.{fn.name}({_call_args(fn.args)})).result()",
        ]
        return "\n".join(indent + line if line else "" for line in body)
    extra = ""
    if returns.startswith("APIFuture["):
        runner, sync_returns = "_sync.call_flat", returns
    elif returns in CLIENT_FUTURES:
        runner, sync_returns = "_sync.call_client", CLIENT_FUTURES[returns]
        extra = f", {sync_returns}"
    else:
        runner, sync_returns = "_sync.call", f"APIFuture[{returns}]"
    params = ast.unparse(fn.args)
    body = [
        f"def {name}({params}) -> {sync_returns}:",
        f'    """{summary[0]}',
        *(f"    {line}" for line in summary[1:]),
        "",
        f"    Sync form of :meth:`{fn.name}`: starts the call now and returns an APIFuture",
        "    (``.result(timeout)`` blocks; ``await`` it in async code).",
        '    """',
        f"    _argcheck.check_call(self.{fn.name}, locals())",
        f"    return {runner}(self, self.{fn.name}({_call_args(fn.args)}){extra})",
    ]
    return "\n".join(indent + line if line else "" for line in body)


def _is_async_generator(fn: ast.AsyncFunctionDef) -> bool:
    return any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in ast.walk(fn))


def generate(source: str) -> str:
    tree = ast.parse(source)
    lines = source.splitlines()
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if line.strip() != BEGIN:
            i += 1
            continue
        lineno = i + 1
        # The block belongs to the nearest class above it (comments after a class's last
        # statement fall outside its AST line range, so the range cannot be used).
        owner = max((c for c in classes if c.lineno < lineno), key=lambda c: c.lineno)
        indent = line[: len(line) - len(line.lstrip())]
        j = i + 1
        while lines[j].strip() != END:
            j += 1
        hand_written = {
            n.name
            for n in owner.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and not lineno < n.lineno <= j + 1  # not a previous run's output
        }
        forms = [
            _sync_form(n, indent, owner.name)
            for n in owner.body
            if isinstance(n, ast.AsyncFunctionDef)
            and n.name.endswith("_async")
            and not n.name.startswith("_")
            and not _is_async_generator(n)
            and n.name.removesuffix("_async") not in hand_written
        ]
        out.append("\n\n".join(forms))
        out.append(lines[j])
        i = j + 1
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if any output is stale")
    args = parser.parse_args()
    stale = []
    for name in MODULES:
        path = ROOT / "tinker_async" / name
        if not path.exists():
            continue
        source = path.read_text()
        new = generate(source)
        if new != source:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        for path in stale:
            print(f"stale generated sync forms: {path.relative_to(ROOT)}", file=sys.stderr)
        print("run: python scripts/gen_sync.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
