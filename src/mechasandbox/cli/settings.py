"""Where the CLI's policy comes from: packaged defaults, the user's file, the project's files
(which may only narrow), `--config` files, then the explicit options."""

from __future__ import annotations

import argparse
import os

import attrs
from returns.result import Result

from mechasandbox.cli.options import apply_options
from mechasandbox.config import ResolvedConfig, load_policy
from mechasandbox.domain.errors import ConfigInvalid


def load_settings(args: argparse.Namespace) -> Result[ResolvedConfig, ConfigInvalid]:
    """The resolved configuration with the command line's options applied last."""
    workspace = args.workspace or os.getcwd()
    loaded = load_policy(workspace=workspace, extra_files=tuple(args.config))
    return loaded.bind(
        lambda resolved: apply_options(resolved.policy, args).map(
            lambda policy: attrs.evolve(
                resolved,
                policy=policy,
                backend=args.backend or resolved.backend,
                image=args.image or resolved.image,
            )
        )
    )
