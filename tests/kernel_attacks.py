"""Attacks on the kernel's settings from inside a sandbox, harmless to the host whatever the
sandbox lets through: every write puts back the value the file already has, and
`/proc/sysrq-trigger` is only opened for writing, never written. What the test looks at is
the status of each write (0: the sandbox let it through), and that the host's values did
not change. The script is POSIX sh, for busybox images too."""

from __future__ import annotations

from pathlib import Path

# Global settings (not per namespace): a write that goes through is a write to the host's.
SYSCTLS = ("/proc/sys/fs/lease-break-time", "/proc/sys/kernel/printk_ratelimit")

WRITE_BACK = (
    "for f in " + " ".join(SYSCTLS) + " $(ls /proc/irq/*/smp_affinity 2>/dev/null | head -n 1); do"
    ' if v=$(cat "$f"); then printf \'%s\\n\' "$v" > "$f"; echo "$f=$?"; fi; done;'
    " if [ -e /proc/sysrq-trigger ]; then true >> /proc/sysrq-trigger;"
    ' echo "/proc/sysrq-trigger=$?"; fi; echo done'
)


def statuses(stdout: bytes) -> dict[str, str]:
    """target -> exit status of its write ("0": written), from WRITE_BACK's output."""
    lines = stdout.decode(errors="replace").splitlines()
    assert lines and lines[-1] == "done", lines  # the script ran to its end
    return dict(line.split("=", 1) for line in lines[:-1] if "=" in line)


def host_values() -> dict[str, str]:
    return {path: Path(path).read_text() for path in SYSCTLS if Path(path).exists()}


def assert_nothing_written(stdout: bytes, before: dict[str, str]) -> None:
    found = statuses(stdout)
    assert "/proc/sys/fs/lease-break-time" in found, found  # the attack was made
    written = sorted(target for target, status in found.items() if status == "0")
    assert written == [], f"the sandbox wrote {written}"
    assert host_values() == before
