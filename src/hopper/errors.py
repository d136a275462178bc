"""Errors Hopper raises on purpose.

    HopperError
    ├── ConfigError          bad or inconsistent settings: fail at start-up, naming the setting
    ├── BackendMissing       an optional engine's library is not installed
    └── BackendUnavailable   a server is down or full: retry later (becomes back pressure)

Bad input is never raised past a stage: it becomes a ``Rejection`` with a reason code.
"""

from __future__ import annotations


class HopperError(Exception):
    """Root of every error Hopper raises on purpose."""


class ConfigError(HopperError):
    """A setting is wrong; the message names it and says what to do."""


class BackendMissing(HopperError):
    """An engine was chosen whose Python library is not installed."""

    def __init__(self, engine: str, *, extra: str, library: str) -> None:
        super().__init__(f"The {engine} backend needs {library}: pip install 'hopper[{extra}]'.")
        self.engine = engine
        self.extra = extra


class BackendUnavailable(HopperError):
    """A backend server cannot be reached or is saturated; retry after a while."""

    def __init__(self, message: str, *, retry_after_secs: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_secs = retry_after_secs
