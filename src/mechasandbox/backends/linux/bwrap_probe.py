"""Whether bwrap can sandbox here, and what its version supports: a probe that runs bwrap
(its version, then a trial sandbox with every run's namespace flags and seccomp program),
remembered for the process and, through a `ProbeCache`, across processes while the facts it
depends on hold."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess

import attrs

from mechasandbox.backends.linux.bwrap_hooks import landlock_abi, seccomp_program
from mechasandbox.backends.linux.bwrap_layout import BwrapFeatures
from mechasandbox.backends.linux.host_facts import executable_facts, namespace_facts
from mechasandbox.backends.probe_cache import ProbeCache

MINIMUM_VERSION = (0, 5, 0)  # --perms
_PROBE_TIMEOUT_S = 10.0


def _parse_version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    return tuple(int(part) for part in match.groups(default="0"))


def _trial_flags(features: BwrapFeatures) -> list[str]:
    """The namespace and filter flags every run uses, as the probe's trial sandbox uses them."""
    flags = ["--unshare-user", "--unshare-all"]
    if features.disable_userns:
        flags.append("--disable-userns")
    return [*flags, "--cap-drop", "ALL", "--die-with-parent", "--new-session"]


@functools.cache
def probe_bwrap(path: str) -> BwrapFeatures | str:
    """The features of the bwrap at `path`, or why it cannot sandbox here. Runs `bwrap` twice
    (version, then a real sandbox with our namespace flags and seccomp program); cached."""
    try:
        version_run = subprocess.run(
            [path, "--version"],
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"cannot run {path}: {error}"
    version = _parse_version(version_run.stdout.decode(errors="replace"))
    if version is None:
        return f"cannot read the version of {path}"
    if version < MINIMUM_VERSION:
        needed = ".".join(map(str, MINIMUM_VERSION))
        return f"bwrap {'.'.join(map(str, version))} is older than {needed}"
    features = BwrapFeatures(path=path, version=version)
    trial = [path, *_trial_flags(features)]
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, seccomp_program())
        os.close(write_end)
        write_end = -1
        trial += ["--seccomp", str(read_end), "--ro-bind", "/", "/", "--proc", "/proc"]
        trial += ["--dev", "/dev", "--", "true"]
        ran = subprocess.run(
            trial,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
            pass_fds=(read_end,),
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"cannot run {path}: {error}"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if ran.returncode != 0:
        reason = ran.stderr.decode(errors="replace").strip() or f"exit status {ran.returncode}"
        return f"bwrap cannot create its namespaces here: {reason}"
    return attrs.evolve(features, landlock_abi=landlock_abi())


PROBE_NAME = "bwrap"


def probe_key(path: str) -> dict[str, str] | None:
    """What `probe_bwrap(path)`'s answer depends on: the executable's identity, the host's
    namespace switches and this process's restrictions, the flags and seccomp program of
    the trial. None when `path` cannot be examined."""
    executable = executable_facts(path)
    if executable is None:
        return None
    trial = " ".join(_trial_flags(BwrapFeatures(path=path)))
    program = hashlib.sha256(seccomp_program()).hexdigest()
    return {**executable, **namespace_facts(), "trial": trial, "seccomp": program}


@functools.cache
def remembered_probe(path: str, cache: ProbeCache) -> BwrapFeatures | str:
    """`probe_bwrap(path)`, answered from `cache` while a success recorded there still
    holds (see `probe_cache`); a fresh success is recorded, a failure never is (and it
    removes the record)."""
    key = probe_key(path)
    if key is None:
        return probe_bwrap(path)
    recorded = cache.load(PROBE_NAME, key) or {}
    version, abi = recorded.get("version"), recorded.get("landlock_abi")
    if (
        isinstance(version, list)
        and version
        and all(isinstance(v, int) for v in version)
        and isinstance(abi, int)
        and abi >= 0
    ):
        return BwrapFeatures(path=path, version=tuple(version), landlock_abi=abi)
    probed = probe_bwrap(path)
    if isinstance(probed, BwrapFeatures):
        record = {"version": list(probed.version), "landlock_abi": probed.landlock_abi}
        cache.store(PROBE_NAME, key, record)
    else:
        cache.forget(PROBE_NAME)
    return probed
