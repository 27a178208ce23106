"""`mechasandbox policy [RUN OPTIONS] [-- COMMAND]`: what a run would be, without running.

It prints the backend's plan (its argv, profile, rlimits...), then the effective policy in
the configuration files' vocabulary (`timeout = "2m"`, `memory = "4g"`: values as a person
writes them, which a file could take back) and its sources: the files read, lowest layer
first, and the project settings that were ignored. Without a command the plan is made for
a stand-in command (`true`), and the output says so. The values of `environment.set` are
never printed: they are the user's own, but may hold tokens; their names are.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from returns.result import Failure

from mechasandbox.backends.base import HostContext, check_enforcement
from mechasandbox.backends.session_base import describe
from mechasandbox.backends.toolchains import find_toolchains
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.units import format_duration, format_size

if TYPE_CHECKING:
    from mechasandbox.backends.base import LaunchPlan
    from mechasandbox.containers import Application
    from mechasandbox.domain.errors import SandboxError

# Planned when no command is given: it exists everywhere and does nothing.
STAND_IN = ("true",)
SET_VALUES_HIDDEN = "names only: the values are not shown, they may hold tokens"
UNLIMITED = "unlimited"


def _duration(seconds: float | None) -> str:
    return UNLIMITED if seconds is None else format_duration(seconds)


def _size(size: int | None) -> str:
    return UNLIMITED if size is None else format_size(size)


def _count(count: int | None) -> int | str:
    return UNLIMITED if count is None else count


def policy_document(policy: Policy, workspace: str) -> dict[str, Any]:
    """`policy` in the configuration files' vocabulary (see defaults/default.toml)."""
    fs, net, env, limits = policy.filesystem, policy.network, policy.environment, policy.limits
    return {
        "workspace": workspace,
        "enforcement": policy.enforcement.value,
        "host_processes": policy.host_processes.value,
        "filesystem": {
            "readable": list(fs.readable),
            "writable": list(fs.writable),
            "deny_read": list(fs.deny_read),
            "deny_write": list(fs.deny_write),
            "protected": list(fs.protected),
            "toolchains": list(fs.toolchains) or "none",
            "umask": f"{fs.umask:03o}",
        },
        "network": {
            "mode": net.mode.value,
            "allow": list(net.allow),
            "deny": list(net.deny),
            "allow_unix_sockets": list(net.allow_unix_sockets),
        },
        "limits": {
            "timeout": _duration(limits.timeout_s),
            "cpu_time": _duration(limits.cpu_time_s),
            "memory": _size(limits.memory_bytes),
            "max_processes": _count(limits.max_processes),
            "max_open_files": _count(limits.max_open_files),
            "max_file_size": _size(limits.max_file_size_bytes),
            "max_output": _size(limits.max_output_bytes),
        },
        "environment": {
            "allow": list(env.allow),
            "pass": list(env.pass_through),
            "set": [name for name, _ in env.set],
            "set_values": SET_VALUES_HIDDEN,
        },
    }


def backend_document(app: Application) -> dict[str, Any]:
    """The backend settings the configuration resolved to (`backend.name` as asked)."""
    return {
        "name": app.config.backend(),
        "image": app.config.image(),
        "runtime": app.config.runtime(),
        "pool_size": app.config.pool_size(),
    }


def toolchains_document(
    app: Application, policy: Policy, backend: str, argv0: str, workspace: str
) -> dict[str, Any]:
    """What `filesystem.toolchains` adds to a run of `argv0` on `backend` here (found now,
    as a run finds it when it starts: see `backends.toolchains`)."""
    named = app.backends.named
    hides_home = backend in named.providers and getattr(named(backend), "hides_home", False)
    if not hides_home:
        why = f"{backend} does not hide the home directory (containers: the image's own)"
        return {"applied": False, "why": why}
    found = find_toolchains(policy.filesystem, argv0, HostContext.current(), workspace)
    return {
        "applied": True,
        "readable": list(found.roots),
        "denied": list(found.denied),
        "variables": [name for name, _ in found.variables_under(policy)],
    }


def sources_document(app: Application, *, options: bool) -> dict[str, Any]:
    """Where the policy came from. `options`: command-line options changed it, last."""
    return {
        "files": list(app.config.files()),
        "command_line": options,
        "warnings": list(app.config.warnings()),
    }


def _run_warnings(
    app: Application, plan: LaunchPlan, policy: Policy
) -> tuple[list[str], list[str]]:
    """What a run of the planned backend would add: its capabilities' warnings and the
    gaps of this policy (or why a strict run is refused), and its notes."""
    if plan.backend not in app.backends.named.providers:
        return [], []
    probed = app.backends.named(plan.backend).probe()
    if isinstance(probed, Failure):
        return [f"a run would fail: {probed.failure().message}"], []
    capabilities = probed.unwrap()
    checked = check_enforcement(capabilities, policy)
    if isinstance(checked, Failure):
        return [f"a run would be refused: {checked.failure().message}"], list(capabilities.notes)
    return list(checked.unwrap()), list(capabilities.notes)


def _once(*groups: tuple[str, ...] | list[str]) -> list[str]:
    return list(dict.fromkeys(item for group in groups for item in group))


def _listed(values: list[str]) -> str:
    return ", ".join(values) if values else "none"


def _section(title: str, fields: dict[str, Any]) -> list[str]:
    lines = [f"## {title}"]
    for key, value in fields.items():
        lines.append(f"{key}: {_listed(value) if isinstance(value, list) else value}")
    return lines


def _policy_lines(document: dict[str, Any]) -> list[str]:
    policy, sources, backend = document["policy"], document["sources"], document["backend_settings"]
    environment = dict(policy["environment"])
    hidden = environment.pop("set_values")
    if environment["set"]:
        environment["set"] = f"{_listed(environment['set'])} ({hidden})"
    lines = ["# effective policy"]
    lines += _section("backend", {k: v for k, v in backend.items() if v is not None})
    lines += [
        "## workspace",
        policy["workspace"],  # what each backend lets the command change there: the plan
        "## enforcement",
        policy["enforcement"],
        "## host_processes",
        policy["host_processes"],
    ]
    lines += _section("filesystem", policy["filesystem"])
    toolchains = document.get("toolchains")
    if toolchains is not None:
        shown = {k: v for k, v in toolchains.items() if k != "applied"}
        lines += _section("toolchains found (read-only for this run)", shown)
    lines += _section("network", policy["network"])
    lines += _section("limits", policy["limits"])
    lines += _section("environment", environment)
    session = document.get("session")
    if session is not None:
        lines.append("## session (mechasandbox session start, Sandbox.session)")
        if session["supported"]:
            agent = session["agent"] or "none built (`mechasandbox build-shim`): no session yet"
            lines.append(f"yes: one sandbox for many commands; agent: {agent}")
            lines.append("kept between commands: " + "; ".join(session["kept"]))
            lines.append("each command gets: " + "; ".join(session["per_command"]))
        else:
            lines.append("no: this backend runs each command on its own")
    lines.append("# sources (lowest layer first)")
    lines += sources["files"]
    if sources["command_line"]:
        lines.append("command-line options")
    lines += [f"# ignored: {warning}" for warning in sources["warnings"]]
    return lines


def main(
    app: Application,
    command: list[str],
    *,
    as_json: bool,
    options: bool,
    fail: Callable[[SandboxError], int],
) -> int:
    """Print the plan and the effective policy; the exit status. `options`: command-line
    options changed the policy. `fail`: reports a plan that could not be made."""
    sandbox = app.services.sandbox()
    policy = sandbox.policy
    argv = command or list(STAND_IN)
    planned = sandbox.plan(argv)
    workspace = os.path.abspath(sandbox.workspace or ".")
    document: dict[str, Any] = {
        "command": argv,
        "stand_in": not command,
        "policy": policy_document(policy, workspace),
        "backend_settings": backend_document(app),
        "sources": sources_document(app, options=options),
    }
    if isinstance(planned, Failure):
        if not as_json:  # what can be printed without a plan still is
            print("\n".join(_policy_lines(document)))
            sys.stdout.flush()
        return fail(planned.failure())
    plan = planned.unwrap()
    warnings, notes = _run_warnings(app, plan, policy)
    document = {
        "backend": plan.backend,
        "sections": dict(plan.sections),
        "warnings": _once(plan.warnings, warnings),
        "notes": _once(plan.notes, notes),
        **document,
        "toolchains": toolchains_document(
            app, policy, plan.backend, argv[0], os.path.realpath(workspace)
        ),
        "session": describe(app.backends.named(plan.backend)),
    }
    if as_json:
        print(json.dumps(document))
        return 0
    if not command:
        print(f"# plan for a stand-in command: {' '.join(argv)} (no command given)")
    print(f"# backend: {plan.backend}")
    for title, text in plan.sections:
        print(f"## {title}\n{text}")
    for warning in document["warnings"]:
        print(f"# warning: {warning}")
    for note in document["notes"]:
        print(f"# note: {note}")
    print("\n".join(_policy_lines(document)))
    return 0
