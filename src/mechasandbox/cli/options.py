"""Argument parsing for `run` and `policy`, and turning options into `PolicyChanges`.

Parse errors never print a traceback: they become `ConfigInvalid` naming the option.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from returns.result import Failure, Result, Success

from mechasandbox.backends.catalog import NAMES
from mechasandbox.config.changes import PolicyChanges
from mechasandbox.config.validation import LIMIT_RULES
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import HostProcesses, NetworkMode


class UsageError(Exception):
    """Raised by the parser instead of exiting, so the CLI can answer with exit 125."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--backend", default=None, choices=NAMES, help="sandbox backend (default: auto)")
    add("--workspace", default=None, help="working directory and writable tree (default: .)")
    add("--network", default=None, choices=[m.value for m in NetworkMode])
    add("--allow-domain", action="append", default=[], metavar="PATTERN")
    add("--deny-domain", action="append", default=[], metavar="PATTERN")
    add(
        "--allow-unix-socket",
        action="append",
        default=[],
        metavar="PATH",
        help='a host unix socket the command may connect to (e.g. "$SSH_AUTH_SOCK")',
    )
    add("--allow-read", action="append", default=[], metavar="PATH")
    add("--allow-write", action="append", default=[], metavar="PATH")
    add("--deny-read", action="append", default=[], metavar="PATH")
    add("--deny-write", action="append", default=[], metavar="PATH")
    add("--timeout", default=None, metavar="DURATION")
    add("--cpu-time", default=None, metavar="DURATION")
    add("--memory", default=None, metavar="SIZE")
    add("--max-processes", default=None, metavar="N")
    add("--max-open-files", default=None, metavar="N")
    add("--max-file-size", default=None, metavar="SIZE")
    add("--max-output", default=None, metavar="SIZE")
    add("--env", action="append", default=[], metavar="NAME=VALUE")
    add("--pass-env", action="append", default=[], metavar="NAME")
    add("--image", default=None, help="container image (docker, podman, apple-container)")
    add("--config", action="append", default=[], metavar="FILE")
    add(
        "--host-processes",
        default=None,
        choices=[h.value for h in HostProcesses],
        help="hidden (default; needs a pid namespace) or visible (lets landlock run)",
    )
    add("--best-effort", action="store_true")
    add("--json", action="store_true", help="print one JSON object instead of the output")
    add("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")


def _limits(
    args: argparse.Namespace,
) -> Result[tuple[tuple[str, float | None], ...], ConfigInvalid]:
    """The limit options given, read as a file's `limits` are (`validation.LIMIT_RULES`):
    a problem names the option and quotes what was written (`--memory: 5t is above ...`)."""
    limits: list[tuple[str, float | None]] = []
    for rule in LIMIT_RULES:
        text = getattr(args, rule.option.removeprefix("--").replace("-", "_"))
        if text is None:
            continue
        checked = rule.checked(text)
        if isinstance(checked, Failure):
            return Failure(ConfigInvalid(problem=checked.failure(), source=rule.option))
        limits.append((rule.attribute, checked.unwrap()))
    return Success(tuple(limits))


def _env_pairs(values: Sequence[str]) -> Result[tuple[tuple[str, str], ...], ConfigInvalid]:
    """`--env NAME=VALUE` split; the name and value are checked with the rest of the
    changes (`PolicyChanges.problems`), as a file's `environment.set` is."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        name, sep, content = value.partition("=")
        if not sep:
            return Failure(
                ConfigInvalid(problem=f"expected NAME=VALUE, got {value!r}", source="--env")
            )
        pairs.append((name, content))
    return Success(tuple(pairs))


def policy_changes(args: argparse.Namespace) -> Result[PolicyChanges, ConfigInvalid]:
    """What the options the user gave change on top of the configuration files."""
    return _limits(args).bind(
        lambda limits: _env_pairs(args.env).map(
            lambda env_pairs: PolicyChanges(
                allow_read=tuple(args.allow_read),
                allow_write=tuple(args.allow_write),
                deny_read=tuple(args.deny_read),
                deny_write=tuple(args.deny_write),
                network=NetworkMode(args.network) if args.network else None,
                allow_domains=tuple(args.allow_domain),
                deny_domains=tuple(args.deny_domain),
                allow_unix_sockets=tuple(args.allow_unix_socket),
                pass_env=tuple(args.pass_env),
                set_env=env_pairs,
                limits=limits,
                best_effort=bool(args.best_effort),
                host_processes=(
                    HostProcesses(args.host_processes) if args.host_processes else None
                ),
                backend=args.backend,
                image=args.image,
            )
        )
    )


def command_of(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return command
