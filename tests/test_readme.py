"""The README's Python snippets run as written (against the embedded server), so that a
user who copies one gets what it says."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tinker_async.local import LocalServer

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _runnable(code: str) -> bool:
    """A whole program: it parses, and it is not a fragment with ``...`` placeholders."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return not any(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                   and n.value.value is Ellipsis for n in ast.walk(tree))


RUNNABLE = [code for code in BLOCKS if _runnable(code)]


def test_the_readme_has_runnable_snippets() -> None:
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("code", RUNNABLE, ids=[f"snippet{i}" for i in range(len(RUNNABLE))])
def test_readme_snippet_runs(code: str, fresh_server: LocalServer, api_key: str,
                             run_script: Callable[..., str]) -> None:
    # Snippets that name a server use the README's address and a placeholder key.
    code = code.replace("http://127.0.0.1:8000", fresh_server.url).replace("tml-...", api_key)
    if "import tinker_async as tinker" not in code:
        code = "import tinker_async as tinker\n" + code
    out = run_script(code, timeout=120)
    assert "Traceback" not in out
