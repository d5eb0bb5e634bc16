"""The package version (kept in step with pyproject.toml by the release checklist)."""

__version__ = "0.1.0"
