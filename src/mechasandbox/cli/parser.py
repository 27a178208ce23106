"""The CLI's argument parser: argparse, raising `UsageError` instead of exiting (the CLI
answers a usage error with exit 125). Standard library only: the session client uses it."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: `session run` does not import `typing`
if TYPE_CHECKING:
    from typing import NoReturn

# The per-command limit options (`config.validation.LIMIT_RULES`' `option`s, in their
# order; a test holds the two equal): `session run` names them without importing the rules.
LIMIT_OPTIONS = (
    "--timeout",
    "--cpu-time",
    "--memory",
    "--max-processes",
    "--max-open-files",
    "--max-file-size",
    "--max-output",
)


class UsageError(Exception):
    """Raised by the parser instead of exiting, so the CLI can answer with exit 125."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)
