"""The errors headstart raises on purpose.

Every error a user can cause is a :class:`HeadstartError`; the CLI turns it into one line
on stderr and a non-zero exit.  Anything else that escapes is a bug in headstart.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "HeadstartError",
    "RunError",
    "SourceError",
    "WeightsError",
]


class HeadstartError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class ConfigError(HeadstartError, ValueError):
    """An argument or option has a value that cannot be used."""


class SourceError(ConfigError):
    """A source spec names an unknown family or model, or the model cannot be built."""


class DataError(HeadstartError):
    """A data set is missing, empty, malformed or has unreadable items."""


class WeightsError(HeadstartError):
    """Weights cannot be found, downloaded, verified or loaded."""


class RunError(HeadstartError):
    """A run directory is missing, incomplete or damaged."""


class TrainingError(HeadstartError):
    """Training diverged: a loss that is not a finite number."""
