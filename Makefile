# The set-up commands of the README. Each makes its own virtualenv on first use.
PYTHON ?= python3
TEST_VENV := .venv
DEMO_VENV := .venv-demo
COMPAT_VENV := .venv-compat
DOCS_VENV := .venv-docs

.PHONY: demo test compat interop lint typecheck bench serve clean docs soak

$(TEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(TEST_VENV)/bin/python -m pip install -q -e '.[test,ray]'
	touch $@

$(DOCS_VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
	$(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install -q --upgrade pip
	$(DOCS_VENV)/bin/python -m pip install -q -e '.[docs]'
	touch $@

## docs: the documentation site in site/, built strictly (a broken link or reference fails)
docs: $(DOCS_VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict

$(DEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -e .
	touch $@

# The cookbook compatibility suite's virtualenv (Python 3.11+, as tinker-cookbook needs):
# the project with its test extras (the official SDK 0.38 among them) and
# compat/requirements.txt (torch pinned to the CPU build, since a bare `torch` pulls a
# multi-GB CUDA build; the cookbook's runtime dependencies that the exercised paths import),
# then tinker-cookbook 0.6.1 without its dependencies (one of them, tml-renderers, is not on
# the package index, and those paths never import it).
$(COMPAT_VENV)/.installed: pyproject.toml compat/requirements.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "make compat needs Python 3.11+"'
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install -q -e '.[test]' -r compat/requirements.txt
	$(COMPAT_VENV)/bin/python -m pip install -q --no-deps tinker-cookbook==0.6.1
	touch $@

## demo: the RL demo (rewards rising) against the embedded server
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python examples/rl_loop.py

## test: generated-code check, lint, type checks, then the whole test suite
test: $(TEST_VENV)/.installed lint typecheck
	$(TEST_VENV)/bin/python -m pytest -q

## compat: tinker-cookbook 0.6.1's own loops on the embedded server, official SDK vs tinker_async,
## and the tests that need torch (custom losses)
compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python -m pytest -q compat tests/test_custom_loss.py

## interop: real third-party Tinker-compatible servers (tuft, skyrl-tx, hatchery-core) installed
## from PyPI into venvs of their own, one scenario with tinker_async and the official SDK
## against each; fails on a regression against interop/expected.json (see interop/README.md)
interop:
	bash interop/run.sh

## soak: a long mixed training and sampling workload under injected faults; fails if the
## server's ledger shows a lost or doubled step, or a call hung (see benchmarks/soak.py)
soak: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m benchmarks.soak

lint: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python scripts/gen_sync.py --check
	$(TEST_VENV)/bin/ruff check tinker_async tests scripts examples compat interop docs/_ext $(wildcard benchmarks)

typecheck: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/mypy tinker_async tests/typing/usage_check.py

## serve: run the embedded server on 127.0.0.1:8000
serve: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python -m tinker_async.local --port 8000

clean:
	rm -rf $(TEST_VENV) $(DEMO_VENV) $(COMPAT_VENV) $(DOCS_VENV) site .pytest_cache .mypy_cache .ruff_cache
