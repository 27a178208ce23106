"""Argument parsing for `run` and `policy`, and turning options into `PolicyChanges`.

Parse errors never print a traceback: they become `ConfigInvalid` naming the option.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from returns.result import Failure, Result, Success

from mechasandbox.backends.catalog import NAMES
from mechasandbox.config.changes import PolicyChanges
from mechasandbox.config.validation import LIMIT_RULES
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import HostProcesses, NetworkMode

_STDIN_HELP = (
    "the command's input: none (/dev/null), inherit (this program's stdin), or a FILE; "
    "streamed to the command as it reads. Default: inherit, but none when stdin is a "
    "terminal (a terminal never enters the sandbox: with inherit, what you type is passed "
    "on through a pipe, Ctrl-D ends it)"
)
_JSONL_HELP = (
    "print the run as JSON lines as it goes: stdout/stderr chunks, warnings, violations, "
    'then the --json object (with "event": "result")'
)


_TTY_HELP = (
    "give the command a terminal: a new pseudo-terminal for the run (never this one), "
    "this terminal in raw mode while it lasts, its window size forwarded; excludes "
    "--json, --jsonl and --stdin (bubblewrap, landlock, process, seatbelt)"
)


def add_run_options(parser: argparse.ArgumentParser, *, command: bool = True) -> None:
    """The options of `run` and `policy` (docs/cli.md), each with its help text; without
    `command`, those of `shell` (which is `run --tty` of the user's shell)."""
    add = parser.add_argument
    add("--backend", default=None, choices=NAMES, help="sandbox backend (default: auto)")
    add("--workspace", default=None, help="working directory and writable tree (default: .)")
    add(
        "--network",
        default=None,
        choices=[m.value for m in NetworkMode],
        help="none (default): no network; allowlist: only --allow-domain; full: everything",
    )
    add(
        "--allow-domain",
        action="append",
        default=[],
        metavar="PATTERN",
        help="repeatable: a host the allowlist reaches (example.com, *.example.com, "
        "example.com:443, 127.0.0.1:8080)",
    )
    add(
        "--deny-domain",
        action="append",
        default=[],
        metavar="PATTERN",
        help="repeatable: a host never reached, even when allowed",
    )
    add(
        "--allow-unix-socket",
        action="append",
        default=[],
        metavar="PATH",
        help='a host unix socket the command may connect to (e.g. "$SSH_AUTH_SOCK")',
    )
    add(
        "--allow-read",
        action="append",
        default=[],
        metavar="PATH",
        help="repeatable: a path outside the workspace the command may read",
    )
    add(
        "--allow-write",
        action="append",
        default=[],
        metavar="PATH",
        help="repeatable: a path outside the workspace the command may write",
    )
    add(
        "--deny-read",
        action="append",
        default=[],
        metavar="PATH",
        help="repeatable: a path never readable (wins over every allow)",
    )
    add(
        "--deny-write",
        action="append",
        default=[],
        metavar="PATH",
        help="repeatable: a path never writable (wins over every allow)",
    )
    add(
        "--timeout",
        default=None,
        metavar="DURATION",
        help="wall-clock limit: 30, 1.5, 500ms, 2m (seconds when no unit)",
    )
    add("--cpu-time", default=None, metavar="DURATION", help="CPU-time limit, as --timeout")
    add(
        "--memory",
        default=None,
        metavar="SIZE",
        help="memory limit: 512m, 2g, 1.5GiB, 1048576 (bytes when no unit)",
    )
    add("--max-processes", default=None, metavar="N", help="most processes at once")
    add("--max-open-files", default=None, metavar="N", help="most open files per process")
    add("--max-file-size", default=None, metavar="SIZE", help="largest file the command writes")
    add(
        "--max-output",
        default=None,
        metavar="SIZE",
        help="captured bytes per stream; beyond it output is dropped and marked truncated",
    )
    add(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="repeatable: set a variable in the command's environment",
    )
    add(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="repeatable: pass the host's value of a variable through",
    )
    add("--image", default=None, help="container image (docker, podman, apple-container)")
    add(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="repeatable: a configuration file merged over the user's and the project's",
    )
    add(
        "--host-processes",
        default=None,
        choices=[h.value for h in HostProcesses],
        help="hidden (default; needs a pid namespace) or visible (lets landlock run)",
    )
    add(
        "--best-effort",
        action="store_true",
        help="run even where the backend cannot enforce every protection; each gap is a warning",
    )
    add("--json", action="store_true", help="print one JSON object instead of the output")
    add(
        "--verbose",
        action="store_true",
        help="also print the notes (backend version, image, pool...) on stderr",
    )
    add("--jsonl", action="store_true", help=_JSONL_HELP)
    add("--stdin", default=None, metavar="none|inherit|FILE", help=_STDIN_HELP)
    if command:
        add("--tty", action="store_true", help=_TTY_HELP)
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


def options_given(args: argparse.Namespace) -> bool:
    """Whether the options change anything over the configuration files."""
    return policy_changes(args).map(lambda changes: changes != PolicyChanges()).value_or(False)


def command_of(args: argparse.Namespace) -> list[str]:
    """The command to run: what follows `--`, or for `shell` the user's shell, interactive."""
    if args.verb == "shell":
        return [os.environ.get("SHELL") or "/bin/sh", "-i"]
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return command
