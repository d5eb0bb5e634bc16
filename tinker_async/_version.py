"""The package version: its one source. pyproject.toml reads it (``dynamic = ["version"]``),
``tinker_async.__version__`` and ``tinker-async version`` show it."""

__version__ = "0.1.0"
