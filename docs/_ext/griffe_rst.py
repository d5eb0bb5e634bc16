"""A griffe extension for the API reference: read the package's reST-flavoured docstrings
as Markdown.

The docstrings are written for ``help()`` and IDEs, in the reStructuredText habits of the
Python world: ``:class:`X``` roles, ``Example::`` before an indented code block. Markdown
shows those literally, so when mkdocstrings loads the package this rewrites, in each
docstring (never in the source files):

- a role whose target griffe resolves (``:meth:`sample_async```, ``:class:`~.x.Y```)
  becomes a link, as an *optional* autoref: it links where the target is rendered in
  the reference and stays plain code where it is not (a private helper); a role whose
  target does not resolve becomes plain code;
- ``text::`` followed by an indented block becomes ``text:`` and a fenced code block
  (``python`` unless it looks like a shell session);
- a bare ``<name>`` outside code is escaped, so that it is shown instead of being read
  as an HTML tag.

It also leaves the dunders of classes (``__repr__``, ``__eq__``, ...) out of the
reference, which shows the API; the module level follows each module's ``__all__``.

Explicit Markdown cross-references (``[X][tinker_async.X]``) are left alone: an
unresolved one fails the strict build, as it should.
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|exc|mod|data|obj|const):`(~?)([^`]+)`")
_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")
_BARE_TAG = re.compile(r"<(/?[A-Za-z_][\w.-]*)>")


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        self._walk(pkg, seen)

    def _walk(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = _convert(obj.docstring.value, obj)
        if obj.is_class:
            # Dunders (__repr__, __eq__, __reduce__, ...) are protocol, not API. Marking
            # them private is not enough: a class shown through a re-export (every type
            # of tinker_async.types) wraps its members in fresh aliases that forget the
            # mark. __init__ stays: its parameters make the class signature.
            for name in [n for n in obj.members if n.startswith("__") and n != "__init__"]:
                obj.del_member(name)
        for name, member in obj.members.items():
            if obj.is_class and name.startswith("_"):
                member.public = False
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]


def _convert(text: str, obj: griffe.Object) -> str:
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and not line.lstrip().startswith(("```", "    ")):
            block, j = _literal_block(lines, i + 1)
            if block is not None:
                head = line.rstrip()[:-2].rstrip()
                if head:
                    out.append(_inline(head + ":", obj))
                lang = "console" if any(b.lstrip().startswith("$ ") for b in block) else "python"
                out += ["", f"```{lang}", *block, "```", ""]
                i = j
                continue
        if line.lstrip().startswith("```"):  # already Markdown: copy fenced blocks as they are
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("```"):
                j += 1
            out += lines[i:j + 1]
            i = j + 1
            continue
        out.append(_inline(line, obj))
        i += 1
    return "\n".join(out)


def _literal_block(lines: list[str], start: int) -> tuple[list[str] | None, int]:
    """The indented block that follows a ``::`` line (after blank lines), dedented."""
    j = start
    while j < len(lines) and not lines[j].strip():
        j += 1
    if j == start or j >= len(lines) or not lines[j].startswith((" ", "\t")):
        return None, start
    end = j
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith((" ", "\t"))):
        end += 1
    while end > j and not lines[end - 1].strip():
        end -= 1
    return textwrap.dedent("\n".join(lines[j:end])).split("\n"), end


def _inline(line: str, obj: griffe.Object) -> str:
    """Roles to links; bare ``<tag>`` escaped outside code spans."""
    line = _ROLE.sub(lambda m: f"\x00{m.start()}\x00{m.group(0)}\x00", line)
    parts = re.split(r"\x00\d+\x00(:[^\x00]+)\x00", line)
    result: list[str] = []
    for k, part in enumerate(parts):
        if k % 2:
            result.append(_role(part, obj))
        else:
            pieces = _CODE_SPAN.split(part)
            result.append("".join(p if n % 2 else _BARE_TAG.sub(r"&lt;\1&gt;", p)
                                  for n, p in enumerate(pieces)))
    return "".join(result)


def _role(role: str, obj: griffe.Object) -> str:
    match = _ROLE.fullmatch(role)
    assert match is not None
    short, target = match.group(1) == "~", match.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
    code = f"<code>{html.escape(shown)}</code>"
    path = _resolve(target, obj)
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(target: str, obj: griffe.Object) -> str | None:
    """The full path of ``target`` as seen from ``obj``, or None."""
    target = target.rstrip("()")
    if target.startswith("."):  # relative to the object's package, as Sphinx reads it
        module = obj if obj.is_module else obj.module
        package = module.path if module.is_package else module.path.rsplit(".", 1)[0]
        return _existing(obj, f"{package}{target}")
    if target.startswith("tinker_async"):
        return _existing(obj, target)
    first, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:  # the object, its class, its module, the parent modules
        if first in scope.members:
            member = scope.members[first]
            try:  # the canonical path: where the reference renders the object
                base = member.final_target.path if isinstance(member, griffe.Alias) else member.path
            except Exception:  # an alias to another package (aiohttp, numpy)
                return None
            return _existing(obj, f"{base}.{rest}" if rest else base)
        scope = scope.parent
    return None


def _existing(obj: griffe.Object, path: str) -> str | None:
    """``path`` if it names an object of the package, else None."""
    root = obj.package
    if path == root.path:
        return path
    if not path.startswith(root.path + "."):
        return None
    try:
        root[path[len(root.path) + 1:]]
    except Exception:  # KeyError, or an alias that does not resolve
        return None
    return path
