"""Where the CLI's base policy comes from: defaults, then configuration files."""

from __future__ import annotations

import argparse

from returns.result import Result, Success

from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Policy


def load_settings(args: argparse.Namespace) -> Result[tuple[Policy, str], ConfigInvalid]:
    return Success((Policy(), args.backend or "auto"))
