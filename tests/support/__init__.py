"""Fixtures and helpers shared by the test suite and tools/ (never a test module)."""
