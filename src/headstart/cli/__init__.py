"""The command line: flags parsed into the API's option dataclasses, results printed."""

from headstart.cli.main import main

__all__ = ["main"]
