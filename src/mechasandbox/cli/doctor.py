"""`mechasandbox doctor`: what each backend enforces on this host, and what `auto` picks."""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

from dependency_injector import providers
from returns.result import Failure

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.catalog import AUTO_ORDER, CATALOG
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.backends.registry import choose
from mechasandbox.backends.session_base import SessionBackend, describe
from mechasandbox.backends.toolchains import find_toolchains
from mechasandbox.cli.attacks import plant_environment_secret
from mechasandbox.cli.verify import verify_backends
from mechasandbox.containers import Application
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.policy import Policy
from mechasandbox.runner import native


def report(app: Application, host: HostContext) -> dict[str, Any]:
    backends: list[dict[str, Any]] = []
    # Those `auto` never picks first, then `auto`'s candidates in its order.
    names = [entry.name for entry in CATALOG if entry.auto_rank is None] + list(AUTO_ORDER)
    for name in names:
        backend = app.backends.named(name)
        probed = backend.probe()
        if isinstance(probed, Failure):
            backends.append({"name": name, "available": False, "reason": probed.failure().reason})
            continue
        capabilities = probed.unwrap()
        backends.append(
            {
                "name": name,
                "available": True,
                "enforces": {p.value: p in capabilities.enforced for p in Protection},
                "details": {p.value: text for p, text in capabilities.details},
                "warnings": list(capabilities.warnings),
                "notes": list(capabilities.notes),
            }
        )
    candidates = [app.backends.named(name) for name in AUTO_ORDER]
    chosen = choose(candidates, Policy())
    data: dict[str, Any] = {
        "platform": f"{platform.system()} {platform.release()} ({host.platform})",
        "auto": chosen.unwrap().name if not isinstance(chosen, Failure) else None,
        "auto_reason": chosen.failure().message if isinstance(chosen, Failure) else None,
        "backends": backends,
    }
    # What `filesystem.toolchains` makes readable for a backend that hides the home (for a
    # command by name its own root is added too: `mechasandbox policy -- CMD` shows it).
    found = find_toolchains(app.services.policy().filesystem, "", host)
    data["toolchains"] = {"readable": list(found.roots), "denied": list(found.denied)}
    if host.platform.startswith("linux"):  # the shim is Linux only: its path, or None
        shim = native.shim_path()
        data["exec_shim"] = shim if shim and native.speaks_protocol(shim) else None
    sessions = describe(None)
    sessions["backends"] = [
        entry["name"]
        for entry in backends
        if entry["available"] and isinstance(app.backends.named(entry["name"]), SessionBackend)
    ]
    del sessions["supported"]
    data["sessions"] = sessions
    return data


# The doctor table's columns (CLI.md's list, in its order) and their short headings.
_SHORT = {
    Protection.FILESYSTEM_READ: "fs-read",
    Protection.FILESYSTEM_WRITE: "fs-write",
    Protection.PROTECTED_PATHS: "protect",
    Protection.NETWORK_NONE: "net-none",
    Protection.NETWORK_ALLOWLIST: "net-allow",
    Protection.NAMED_UNIX_SOCKETS: "unix-named",
    Protection.PID_ISOLATION: "pid",
    Protection.HOST_PROCESSES_HIDDEN: "pid-hide",
    Protection.MEMORY: "memory",
    Protection.CPU: "cpu",
    Protection.PROCESSES: "procs",
    Protection.OPEN_FILES: "files",
    Protection.ENVIRONMENT: "env",
    Protection.TREE_TEARDOWN: "teardown",
}


def _table(data: dict[str, Any]) -> str:
    """A grid: one row per backend, one column per protection (`+` enforced, `-` not)."""
    shown = list(_SHORT)
    width = max(len(entry["name"]) for entry in data["backends"]) + 2
    header = "".ljust(width) + " ".join(_SHORT[p].rjust(len(_SHORT[p])) for p in shown)
    lines = [f"platform: {data['platform']}"]
    if "exec_shim" in data:
        shim = data["exec_shim"]
        lines.append(
            f"exec shim: {shim}"
            if shim
            else "exec shim: none (not built or of another build: `mechasandbox build-shim`; "
            "or MECHASANDBOX_EXEC_SHIM=off): "
            "runs start from forked Python processes"
        )
    lines += ["", header]
    unavailable: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    for entry in data["backends"]:
        if not entry["available"]:
            unavailable.append(f"  {entry['name']}: {entry['reason']}")
            continue
        cells = [("+" if entry["enforces"][p.value] else "-").center(len(_SHORT[p])) for p in shown]
        lines.append(entry["name"].ljust(width) + " ".join(cells))
        warnings.extend(f"  {entry['name']}: {warning}" for warning in entry["warnings"])
        notes.extend(f"  {entry['name']}: {note}" for note in entry["notes"])
    if unavailable:
        lines += ["", "unavailable here:", *unavailable]
    if warnings:
        lines += ["", "warnings:", *warnings]
    if notes:
        lines += ["", "notes:", *notes]
    toolchains = data["toolchains"]
    lines += [
        "",
        "toolchains readable where the home is hidden (filesystem.toolchains): "
        + (", ".join(toolchains["readable"]) or "none"),
    ]
    if toolchains["denied"]:
        lines.append("  their credentials, denied: " + ", ".join(toolchains["denied"]))
    lines.append("")
    if data["auto"]:
        lines.append(f"auto picks: {data['auto']} (for the default policy)")
    else:
        lines.append(f"auto picks nothing for the default policy: {data['auto_reason']}")
    sessions = data["sessions"]
    agent = sessions["agent"] or "none (not built: `mechasandbox build-shim`, or `make shim`)"
    lines += [
        f"sessions (mechasandbox session, Sandbox.session): "
        f"{', '.join(sessions['backends']) or 'none here'}; agent: {agent}",
        "  kept between commands: " + "; ".join(sessions["kept"]),
        "  each command gets: " + "; ".join(sessions["per_command"]),
    ]
    lines.append("details: mechasandbox doctor --json; attacks: mechasandbox doctor --verify")
    return "\n".join(lines)


def _tally(checks: list[dict[str, Any]]) -> str:
    """`3 held, 0 FAILED, 14 not claimed`: a FAILED is a claimed protection that did not hold."""
    counts = {"held": 0, "FAILED": 0, "not claimed": 0, "error": 0}
    for check in checks:
        outcome = str(check["outcome"])
        kind = next((k for k in counts if outcome == k or outcome.startswith(k + " ")), "error")
        counts[kind] += 1
    shown = [f"{n} {kind}" for kind, n in counts.items() if n or kind in ("held", "FAILED")]
    return ", ".join(shown)


def main(*, as_json: bool, verify: bool, host: HostContext) -> int:
    if verify:
        plant_environment_secret()
    # The backends as `run` would build them here (the user's image, runtime, pool...).
    built = Application.from_config()
    if isinstance(built, Failure):
        print(
            f"mechasandbox: warning: configuration ignored: {built.failure().message}",
            file=sys.stderr,
        )
    app = built.value_or(None) or Application()
    # What holds here and now: every probe runs, and what `run` remembers is refreshed.
    app.core.probe_cache.override(providers.Object(ProbeCache(refresh=True)))
    try:
        data = report(app, host)
        if verify:
            data["verify"] = verify_backends(app)
        print(json.dumps(data) if as_json else _table(data))
        if verify and not as_json:
            for name, checks in data["verify"].items():
                for check in checks:
                    print(f"verify {name}: {check['attack']}: {check['outcome']}")
                print(f"verify {name}: {_tally(checks)}")
        return 0
    finally:
        app.shutdown_resources()
