"""The documentation as a user meets it: every snippet runs, and the built site works.

(a) Every ```` ```python ```` block of ``docs/**/*.md`` and ``README.md`` runs as written, each
in a fresh interpreter, against an embedded server with no API key (what ``tinker-async
serve`` starts): ``TINKER_BASE_URL`` / ``TINKER_API_KEY`` point at it, and the address the
docs use, ``http://127.0.0.1:8000``, is replaced by its own. A block with a top-level
``await`` runs as a notebook cell does: on a running event loop. A block that is only an
illustration carries ``<!-- not-run: the reason -->`` on the line before its fence; those
are counted and must give a reason.

(b) The site is built with ``mkdocs build --strict`` (a broken link or cross-reference
fails) and opened in headless Chromium, served on 127.0.0.1: pages render with their
title and navigation, an API page shows a known symbol, and the search finds it. This
part is skipped, saying why, when mkdocs (``pip install -e '.[docs]'``, or the
``.venv-docs`` that ``make docs`` makes), the ``playwright`` package or
``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import html.parser
import http.server
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tinker_async
import tinker_async.types
from tinker_async.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_FILES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]
#: the server address the docs tell users to start (``tinker-async serve``)
DOCS_URL = "http://127.0.0.1:8000"
CHROMIUM = Path("/usr/bin/chromium")
#: a hang guard for one snippet (a snippet that hangs fails instead of freezing the run)
SNIPPET_TIMEOUT = 300

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason given in <!-- not-run: ... -->, if any

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, with the ``not-run`` marker that precedes each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        lang = opening["info"].strip().split(" ")[0].lower()
        end = i + 1
        while end < len(lines) and not (lines[end].startswith(indent)
                                        and lines[end].strip().startswith(fence)
                                        and lines[end].strip().strip(fence[0]) == ""):
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip()
                for line in lines[i + 1:end]]
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = _NOT_RUN.match(lines[before]) if before >= 0 else None
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n",
                            marker["reason"].strip() if marker else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in extract_blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.lang in ("python", "py")]
RUNNABLE = [block for block in PYTHON_BLOCKS if block.not_run is None]
NOT_RUN = [block for block in PYTHON_BLOCKS if block.not_run is not None]


def _is_cell(code: str) -> bool:
    """Whether ``code`` needs a running event loop (a top-level ``await``, ``async with``
    or ``async for``), as a notebook cell may."""
    try:
        compile(code, "<snippet>", "exec")  # ast.parse would accept a top-level await
    except SyntaxError:
        compile(code, "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return True
    return False


# Runs a snippet the way Jupyter runs a cell: compiled with top-level await allowed and
# awaited on a running loop in the main thread.
_CELL_RUNNER = """\
import ast, asyncio, sys, types
path = sys.argv[1]
source = open(path, encoding="utf-8").read()
code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__"}

async def cell():
    result = eval(code, namespace)
    if isinstance(result, types.CoroutineType):
        await result

asyncio.run(cell())
"""


# --------------------------------------------------------------------------------------
# (a) the snippets
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_server() -> Iterator[LocalServer]:
    """What ``tinker-async serve`` starts: no API key, any ``tml-...`` key is accepted."""
    with LocalServer().in_thread() as srv:
        yield srv


def test_the_docs_have_runnable_snippets() -> None:
    files = {block.path for block in RUNNABLE}
    assert ROOT / "README.md" in files
    assert len(files) >= 5, sorted(str(f) for f in files)
    assert len(RUNNABLE) >= 15


def test_not_run_blocks_say_why() -> None:
    """A block left out is marked on purpose, with a reason, and only Python blocks are
    (a marker before anything else is a mistake)."""
    for block in ALL_BLOCKS:
        if block.not_run is not None:
            assert block.lang in ("python", "py"), f"{block.id}: not-run on a {block.lang!r} block"
            assert block.not_run, f"{block.id}: <!-- not-run: ... --> needs a reason"
    print(f"{len(RUNNABLE)} Python blocks run, {len(NOT_RUN)} marked not-run:")
    for block in NOT_RUN:
        print(f"  {block.id}: {block.not_run}")


def test_the_markers_are_read(tmp_path: Path) -> None:
    """How a page marks a block as illustration only (and how indented blocks are read)."""
    page = tmp_path / "page.md"
    page.write_text(
        "Some text.\n\n<!-- not-run: needs a GPU -->\n```python\nimport torch\n```\n\n"
        "```python\nprint(1)\n```\n\n- a list item:\n\n    ```python\n    print(2)\n"
        "    ```\n\n```bash\nls\n```\n", encoding="utf-8")
    assert [(b.lang, b.not_run, b.code) for b in extract_blocks(page)] == [
        ("python", "needs a GPU", "import torch\n"),
        ("python", None, "print(1)\n"),
        ("python", None, "print(2)\n"),
        ("bash", None, "ls\n"),
    ]


def test_every_python_block_parses() -> None:
    """Not-run blocks included: an illustration must still be valid Python."""
    for block in PYTHON_BLOCKS:
        try:
            _is_cell(block.code)
        except SyntaxError as exc:
            pytest.fail(f"{block.id}: {exc}")


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_snippet_runs(block: Block, docs_server: LocalServer, tmp_path: Path) -> None:
    code = block.code.replace(DOCS_URL, docs_server.url)
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    command = ([sys.executable, "-c", _CELL_RUNNER, str(script)] if _is_cell(code)
               else [sys.executable, str(script)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TINKER_BASE_URL": docs_server.url,
           "TINKER_API_KEY": "tml-dev"}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=SNIPPET_TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{block.id} failed ({proc.returncode}):\n{output}"
    assert "Traceback" not in output, f"{block.id}:\n{output}"


def test_the_api_overview_names_every_public_name() -> None:
    """docs/api/index.md links every name of ``tinker_async.__all__`` (the strict build
    then checks that each link lands on a rendered object)."""
    text = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\[(tinker_async[\w.]*)\]", text))
    missing = [name for name in tinker_async.__all__
               if not any(ref == f"tinker_async.{name}" or ref.endswith(f".{name}")
                          for ref in linked)]
    assert not missing, f"public names missing from docs/api/index.md: {missing}"


def test_changelog_sections_are_releases() -> None:
    """CHANGELOG.md (also the site's Changelog page): ``## [Unreleased]`` at the top, then
    one ``## [X.Y.Z] - YYYY-MM-DD`` section per release, newest first."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.*)$", text, re.M)
    assert sections and sections[0] == "[Unreleased]", sections
    releases = []
    for title in sections[1:]:
        match = re.fullmatch(r"\[(\d+\.\d+\.\d+(?:[-.\w]*)?)\] - (\d{4}-\d{2}-\d{2})", title)
        assert match, f"CHANGELOG section {title!r} is not '[X.Y.Z] - YYYY-MM-DD'"
        releases.append((match[1], match[2]))
    dates = [date for _, date in releases]
    assert dates == sorted(dates, reverse=True), f"releases not newest first: {releases}"


# --------------------------------------------------------------------------------------
# (b) the built site, in a browser
# --------------------------------------------------------------------------------------


def _mkdocs_command() -> list[str] | None:
    """mkdocs in this interpreter (the ``docs`` extra), else the one ``make docs`` made."""
    if all(importlib.util.find_spec(name) for name in ("mkdocs", "material", "mkdocstrings")):
        return [sys.executable, "-m", "mkdocs"]
    venv_mkdocs = ROOT / ".venv-docs" / "bin" / "mkdocs"
    if venv_mkdocs.exists():
        return [str(venv_mkdocs)]
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module with ``mkdocs build --strict``."""
    command = _mkdocs_command()
    if command is None:
        pytest.skip("mkdocs is not installed: `make docs` (or pip install -e '.[docs]') "
                    "installs it")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [*command, "build", "--strict", "--quiet", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=900, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


class _Ids(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def _ids(page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.ids


#: API pages (docs/api/NAME.md) that render a whole module: each name of its __all__
#: must have an entry there
MODULE_PAGES = ("service", "training", "sampling", "rest", "twinkle", "types", "errors",
                "paths", "custom_loss", "telemetry", "auth", "local", "cli")


def test_the_build_is_strict_and_complete(site: Path) -> None:
    """Every page is built, and each module page of the reference has an entry for every
    public name of its module (the top-level names are checked through
    docs/api/index.md, whose links the strict build resolves)."""
    assert len(list(site.rglob("index.html"))) >= 20
    for page in MODULE_PAGES:
        module = importlib.import_module(f"tinker_async.{page}")
        ids = _ids(site / "api" / page / "index.html")
        missing = [n for n in module.__all__ if f"{module.__name__}.{n}" not in ids]
        assert not missing, f"{module.__name__}: no API entry for {missing}"
    assert (site / "search" / "search_index.json").exists()


@pytest.fixture(scope="module")
def site_url(site: Path) -> Iterator[str]:
    """The built site over HTTP on 127.0.0.1 (search needs http://, not file://)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=30)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def browser_page(site_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: pip install playwright "
                    "(no `playwright install`: the test drives the system's Chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        context.set_default_timeout(60_000)  # a hang guard, not a speed bound
        try:
            yield context.new_page()
        finally:
            context.close()


def test_pages_render(browser_page: Any, site_url: str) -> None:
    page = browser_page
    elsewhere: list[str] = []  # the site must work offline: nothing fetched from elsewhere

    def note(request: Any) -> None:
        if not request.url.startswith((site_url, "data:", "blob:")):
            elsewhere.append(request.url)

    page.on("request", note)
    page.goto(site_url + "/")
    assert "tinker_async" in page.title()
    nav = [link.strip() for link in page.locator("nav.md-nav--primary a.md-nav__link")
           .all_inner_texts() if link.strip()]
    for expected in ("Getting started", "Three ways to call", "Migrating from the official SDK",
                     "Servers and dialects", "Command line", "ServiceClient", "types"):
        assert expected in nav, nav
    # Every page of the nav renders a heading under its own title.
    hrefs = page.eval_on_selector_all(
        "nav.md-nav--primary a.md-nav__link[href]", "links => links.map(a => a.href)")
    visited = set()
    for href in hrefs:
        url = href.split("#")[0]
        if not url.startswith(site_url) or url in visited:
            continue
        visited.add(url)
        response = page.goto(url)
        assert response is not None and response.ok, url
        assert page.locator("article h1").count() >= 1, url
        assert "tinker_async" in page.title(), url
    page.remove_listener("request", note)
    assert len(visited) >= 20
    assert not elsewhere, f"the site fetches from other hosts: {sorted(set(elsewhere))}"


def test_an_api_page_shows_a_known_symbol(browser_page: Any, site_url: str) -> None:
    page = browser_page
    page.goto(site_url + "/api/training/")
    symbol = page.locator('[id="tinker_async.training.TrainingClient.forward_backward_async"]')
    assert symbol.count() == 1
    assert "forward_backward_async" in symbol.inner_text()
    # A cross-reference in a signature leads to the type's own entry.
    page.goto(site_url + "/api/tinker_async/#tinker_async.APIFuture")
    assert page.locator('[id="tinker_async.APIFuture.result"]').count() == 1


def test_search_finds_a_symbol(browser_page: Any, site_url: str) -> None:
    page = browser_page
    page.goto(site_url + "/")
    page.locator("label.md-search__icon, .md-search__input").first.click()
    page.locator("input.md-search__input").press_sequentially("install_as_tinker")
    results = page.locator(".md-search-result__item")
    results.first.wait_for(state="visible")
    texts = results.all_inner_texts()
    assert any("install_as_tinker" in text for text in texts), texts
    # The result leads to a page that has it.
    page.locator(".md-search-result__item a").first.click()
    page.wait_for_load_state()
    assert "install_as_tinker" in page.locator("article").inner_text()
