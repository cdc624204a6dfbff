"""Configuration errors."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or value is wrong; the message names the dotted key and the value.

    Example: ``config error: replication.rmin: must be >= 1, got 0``.
    """

    code = "config_error"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error: {key}: {problem}" if key else f"config error: {problem}")
        self.key = key
        self.problem = problem
