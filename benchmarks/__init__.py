"""Benchmarks of tinker_async against the official SDK and a raw-aiohttp floor."""
