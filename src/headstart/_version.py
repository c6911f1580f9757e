"""headstart's version, as installed (one place: the run dir and ``--version`` read it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("headstart")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0"
