"""The import graph keeps its layers: the library never imports the embedded server, the
types import nothing above them, and the loop primitives sit below the transport."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tinker_async"


def _imports(path: Path) -> set[str]:
    """Absolute names of the ``tinker_async`` modules ``path`` imports (at any depth)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = package
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tinker_async"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("tinker_async"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _modules(sub: str = "") -> dict[str, set[str]]:
    root = PACKAGE / sub if sub else PACKAGE
    return {str(p.relative_to(PACKAGE)): _imports(p) for p in root.rglob("*.py")}


def test_the_library_never_imports_the_embedded_server() -> None:
    # The command line sits above both: its ``serve`` command runs the server.
    offenders = {name: sorted(i for i in imports if i.startswith("tinker_async.local"))
                 for name, imports in _modules().items()
                 if not name.startswith(("local/", "cli/", "cli.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_types_import_nothing_above_them() -> None:
    offenders = {
        # errors.py is the bottom layer (it imports nothing of the package)
        name: sorted(i for i in imports
                     if not i.startswith(("tinker_async.types", "tinker_async.errors")))
        for name, imports in _modules("types").items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_loop_primitives_sit_below_the_transport_and_session() -> None:
    assert _imports(PACKAGE / "errors.py") == set()
    below = ("_loops.py", "_api_future.py", "_argcheck.py")
    for name in below:
        imports = _imports(PACKAGE / name)
        upward = [i for i in imports if i.split(".")[1] in (
            "_transport", "_session", "_futures", "_sync", "service", "training", "sampling",
            "rest", "local")]
        assert upward == [], (name, upward)
