"""`doctor --verify`: real attacks against each available backend, on this machine.

Every check runs the attack in the real sandbox and then looks at the *host* for its
effect (the file exists, the secret was printed, the process died, the listener saw a
connection). A check reports "held", "FAILED" (the attack worked), or "error" with the
reason when the attack could not be run at all — never a pass it did not observe. An
attack on a protection the backend does not claim (`Capabilities.enforced`) is not made:
it reports "not claimed" with the backend's own reason, so that a FAILED always means a
claimed protection did not hold.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from returns.result import Failure, Success

from mechasandbox.backends.base import Backend
from mechasandbox.backends.catalog import AUTO_ORDER
from mechasandbox.cli.attacks import (
    Arena,
    env_secret,
    follow_git_settings,
    hostile_project,
    launcher_loader,
    leave_setuid_file,
    loopback_connect,
    make_armed_repository,
    outlive_the_run,
    read_denied_in_workspace,
    read_secret,
    redirect_git,
    signal_host_process,
    unix_socket_with_full_network,
    write_git_config_after_host_rewrite,
    write_git_hook,
    write_kernel_setting,
    write_outside,
)
from mechasandbox.containers import Application
from mechasandbox.domain.capabilities import Protection
from mechasandbox.leftovers import temp_prefix


@attrs.frozen(kw_only=True)
class Attack:
    """One check: what it tries, how, and the protections it tests (`targets`). A backend
    whose capabilities do not claim them all is not attacked: the attack would work, and
    that says nothing the capabilities do not already say ("not claimed")."""

    title: str
    attempt: Callable[[Backend, Arena], bool | str]
    targets: frozenset[Protection]


def _attack(
    title: str, attempt: Callable[[Backend, Arena], bool | str], *targets: Protection
) -> Attack:
    return Attack(title=title, attempt=attempt, targets=frozenset(targets))


_READ = Protection.FILESYSTEM_READ
_WRITE = Protection.FILESYSTEM_WRITE
_PROTECTED = Protection.PROTECTED_PATHS

ATTACKS: tuple[Attack, ...] = (
    _attack(
        "read a secret outside the workspace (directly and via a planted symlink)",
        read_secret,
        _READ,
    ),
    _attack("read a denied file inside the workspace (deny_read)", read_denied_in_workspace, _READ),
    _attack("write outside the workspace", write_outside, _WRITE),
    _attack("plant a git hook (directly and by renaming .git)", write_git_hook, _PROTECTED),
    _attack(
        "write .git/config after a host `git config` replaced it during the run",
        write_git_config_after_host_rewrite,
        _PROTECTED,
    ),
    _attack(
        "redirect git to planted hooks (.git/commondir, .git/modules)", redirect_git, _PROTECTED
    ),
    _attack(
        "read outside and plant a git hook through a hostile project file and a planted symlink",
        hostile_project,
        _READ,
        _PROTECTED,
    ),
    # /proc/sys is outside the writable tree.
    _attack("write kernel settings (/proc/sys; the value they have)", write_kernel_setting, _WRITE),
    _attack(
        "plant what git's settings lead to (core.hooksPath, an include, a nested repository)",
        follow_git_settings,
        _PROTECTED,
    ),
    _attack(
        "make a repository whose settings run a command on the host",
        make_armed_repository,
        _PROTECTED,
    ),
    # A setuid file is one more thing of the workspace that runs later, with more power.
    _attack("leave a setuid/setgid file in the workspace", leave_setuid_file, _PROTECTED),
    _attack("read a host API key from the environment", env_secret, Protection.ENVIRONMENT),
    # The loader's report is a file written outside the writable tree by a host process.
    _attack(
        "reach the host's loader through the policy's variables (LD_*, DYLD_*)",
        launcher_loader,
        _WRITE,
    ),
    _attack("kill a host process", signal_host_process, Protection.PID_ISOLATION),
    _attack(
        "connect to a loopback TCP server of the host", loopback_connect, Protection.NETWORK_NONE
    ),
    # Unnamed host unix sockets stay out in every network mode (`NetworkPolicy`) wherever
    # the network is isolated at all, which is what NETWORK_NONE claims; NAMED_UNIX_SOCKETS
    # is about telling named ones from the rest, and this attack names none.
    _attack(
        "reach a host unix socket with full network",
        unix_socket_with_full_network,
        Protection.NETWORK_NONE,
    ),
    _attack(
        "leave a setsid/nohup process running after the run",
        outlive_the_run,
        Protection.TREE_TEARDOWN,
    ),
)


def attempt(attack: Attack, backend: Backend) -> bool | str:
    """`attack` on `backend` in a fresh arena, claimed or not: True when it held, False
    when it worked, else why it could not be made."""
    with tempfile.TemporaryDirectory(prefix=temp_prefix("verify")) as scratch:
        arena = Arena(workspace=Path(scratch, "workspace"), outside=Path(scratch, "outside"))
        arena.workspace.mkdir()
        arena.outside.mkdir()
        return attack.attempt(backend, arena)


def verify_backend(backend: Backend) -> list[dict[str, Any]]:
    """Each attack's outcome: "held", "FAILED" (it worked against a protection the backend
    claims: what matters), "not claimed (...)" (not attempted), or "error (...)"."""
    probed = backend.probe()
    capabilities = probed.unwrap() if isinstance(probed, Success) else None
    checks: list[dict[str, Any]] = []
    for attack in ATTACKS:
        targets = [p for p in Protection if p in attack.targets]
        check: dict[str, Any] = {"attack": attack.title, "protections": [p.value for p in targets]}
        unclaimed = [p for p in targets if capabilities and p not in capabilities.enforced]
        if unclaimed and capabilities is not None:
            reasons = "; ".join(
                p.value + (f": {why}" if (why := capabilities.detail(p)) else "") for p in unclaimed
            )
            check["outcome"] = f"not claimed ({reasons})"
        else:
            verdict = attempt(attack, backend)
            if isinstance(verdict, str):
                check["outcome"] = f"error ({verdict})"
            else:
                check["outcome"] = "held" if verdict else "FAILED"
        checks.append(check)
    return checks


def verify_backends(app: Application) -> dict[str, list[dict[str, Any]]]:
    report: dict[str, list[dict[str, Any]]] = {}
    for name in AUTO_ORDER:
        backend = app.backends.named(name)
        if isinstance(backend.probe(), Failure):
            continue
        report[name] = verify_backend(backend)
    return report
