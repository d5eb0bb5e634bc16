# The two set-up commands of the README. Each makes its own virtualenv on first use.
PYTHON ?= python3
TEST_VENV := .venv
DEMO_VENV := .venv-demo

.PHONY: demo test lint typecheck bench serve clean

$(TEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(TEST_VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

$(DEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -e .
	touch $@

## demo: the RL demo (rewards rising) against the embedded server
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python examples/rl_loop.py

## test: generated-code check, lint, type checks, then the whole test suite
test: $(TEST_VENV)/.installed lint typecheck
	$(TEST_VENV)/bin/python -m pytest -q

lint: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python scripts/gen_sync.py --check
	$(TEST_VENV)/bin/ruff check tinker_async tests scripts examples $(wildcard benchmarks)

typecheck: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/mypy tinker_async tests/typing/usage_check.py

## serve: run the embedded server on 127.0.0.1:8000
serve: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python -m tinker_async.local --port 8000

clean:
	rm -rf $(TEST_VENV) $(DEMO_VENV) .pytest_cache .mypy_cache .ruff_cache
