"""The container seccomp profile: compiled from the bubblewrap filter's facts, and never
weaker than the engine's default profile it replaces (the real engines run it in
tests/backends/test_oci_hardening.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

import pytest

from mechasandbox.backends.linux.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    DEFAULT_DENIED,
    MODE_ARGUMENT,
)
from mechasandbox.backends.oci.seccomp_profile import (
    ENGINE_ARCH_ALLOWED,
    ENGINE_DEFAULT_ALLOWED,
    SeccompProfiles,
    allowed_names,
    container_profile,
)

# What must never be callable in a container of ours, whatever docker's default allows.
MUST_BE_REFUSED = (
    "mount", "umount2", "unshare", "setns", "pivot_root", "chroot", "open_tree",
    "move_mount", "fsopen", "fsmount", "mount_setattr", "keyctl", "add_key", "request_key",
    "bpf", "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
    "perf_event_open", "mknod", "mknodat", "reboot", "swapon", "acct", "syslog",
)  # fmt: skip


@pytest.fixture(params=sorted(ENGINE_ARCH_ALLOWED))
def profile(request: pytest.FixtureRequest) -> dict[str, Any]:
    built = container_profile(request.param)
    assert built is not None
    return built


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    rules = profile["syscalls"]
    assert isinstance(rules, list)
    return [rule for rule in rules if name in rule["names"]]


def test_unknown_calls_are_refused(profile: dict[str, Any]) -> None:
    """An allow-list: a call the profile does not name (a newer one, or one the engine's
    libseccomp does not know and skips) is refused."""
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    assert "architectures" not in profile and "archMap" not in profile  # native only


def test_every_call_the_bubblewrap_filter_denies_is_refused(profile: dict[str, Any]) -> None:
    assert allowed_names(profile) & {*DEFAULT_DENIED, *MUST_BE_REFUSED} == set()


def test_never_more_than_the_engine_default_allows(profile: dict[str, Any]) -> None:
    engine_default = set(ENGINE_DEFAULT_ALLOWED) | {
        name for names in ENGINE_ARCH_ALLOWED.values() for name in names
    }
    # socket, clone and personality are allowed by docker's default with arguments checked
    # (ours check more); fchmodat2 is newer than its list.
    assert allowed_names(profile) - engine_default <= {
        "socket",
        "clone",
        "personality",
        "fchmodat2",
    }


def test_no_setuid_or_setgid_mode_through_any_call(profile: dict[str, Any]) -> None:
    for name, index in MODE_ARGUMENT.items():
        rules = rules_for(profile, name)
        assert rules, name
        for rule in rules:
            assert rule["action"] == "SCMP_ACT_ALLOW"
            assert rule["args"] == [
                {
                    "index": index,
                    "value": stat.S_ISUID | stat.S_ISGID,
                    "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ",
                }
            ], name


def test_only_the_kept_socket_families(profile: dict[str, Any]) -> None:
    """Each allowed family by equality on the whole 64-bit argument: AF_VSOCK (which no
    network namespace covers), AF_PACKET... are refused, and so is a kept family with
    garbage in the upper half."""
    families = set()
    for rule in rules_for(profile, "socket"):
        assert rule["action"] == "SCMP_ACT_ALLOW"
        (argument,) = rule["args"]
        assert argument["index"] == 0 and argument["op"] == "SCMP_CMP_EQ"
        families.add(argument["value"])
    assert families == {socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK}


def test_clone_without_namespaces_clone3_and_openat2_fall_back(
    profile: dict[str, Any],
) -> None:
    (clone,) = rules_for(profile, "clone")
    assert clone["args"] == [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    for name in ("clone3", "openat2"):
        (rule,) = rules_for(profile, name)
        assert (rule["action"], rule["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)


def test_personality_only_as_docker_allows_it(profile: dict[str, Any]) -> None:
    values = {rule["args"][0]["value"] for rule in rules_for(profile, "personality")}
    assert values == {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}


def test_architecture_calls_only_on_their_architecture() -> None:
    x86 = container_profile("x86_64")
    arm = container_profile("arm64")  # macOS's name for it
    assert x86 is not None and arm is not None
    assert "arch_prctl" in allowed_names(x86) and "arch_prctl" not in allowed_names(arm)
    assert "set_tls" in allowed_names(arm) and "set_tls" not in allowed_names(x86)
    assert container_profile("s390x") is None  # clone's arguments are in another order


def test_the_profile_file_is_private_written_once_and_removed_on_close() -> None:
    profiles = SeccompProfiles()
    path = profiles.path("x86_64")
    assert path is not None
    assert profiles.path("x86_64") == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    with open(path, encoding="utf-8") as handle:
        assert json.load(handle) == container_profile("x86_64")
    profiles.close()
    assert not os.path.exists(os.path.dirname(path))
    profiles.close()  # again: nothing left to do
