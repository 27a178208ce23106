"""A backend's capabilities written as data: one table a backend, rendered by one function.

A table says, for each protection it names, how the backend enforces it or why it does
not. Tables combine with `|`, the right one's rows winning, so that what depends on the
host (a program found, the kernel's Landlock ABI, a cgroup) is a small table added to the
backend's fixed one; rows every backend that spawns on the host shares (the runner's
environment and timeout, the rlimits) are tables of their own.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from mechasandbox.domain.capabilities import Capabilities, Protection

# What `doctor` and `policy` say of these violations (the backends' capability notes).
REFUSALS_NOTE = (
    "filesystem violations are read from the command's own error output (a refused write "
    "leaves the host nothing to read): a refusal it printed with the path is reported with "
    "the rule that made it; one it did not print is not"
)
LANDLOCK_AUDIT_NOTE = (
    "Landlock's own denial records (audit, ABI 7) are not read: the kernel's audit is off "
    "unless auditd or audit=1 turns it on, and reading it needs CAP_AUDIT_READ"
)


@attrs.frozen(kw_only=True)
class CapabilityTable:
    """`enforced`: each protection enforced, with how ("": nothing to add); `gaps`: each
    one named but not enforced, with why; `warnings`: what a run should be told about
    protections; `notes`: information (versions, how something is done)."""

    enforced: Mapping[Protection, str] = attrs.field(factory=dict)
    gaps: Mapping[Protection, str] = attrs.field(factory=dict)
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __or__(self, other: CapabilityTable) -> CapabilityTable:
        """`other`'s rows over this one's (a protection it names moves where it says);
        the warnings of both, this one's first."""
        return CapabilityTable(
            enforced={p: how for p, how in self.enforced.items() if p not in other.gaps}
            | dict(other.enforced),
            gaps={p: why for p, why in self.gaps.items() if p not in other.enforced}
            | dict(other.gaps),
            warnings=self.warnings + other.warnings,
            notes=self.notes + other.notes,
        )

    def capabilities(self, backend: str) -> Capabilities:
        """The `Capabilities` this table says, the details in the order of `Protection`."""
        text = {**self.gaps, **self.enforced}
        return Capabilities(
            backend=backend,
            enforced=frozenset(self.enforced),
            details=tuple((p, text[p]) for p in Protection if text.get(p)),
            warnings=self.warnings,
            notes=self.notes,
        )


# What the runner gives every command it spawns: the scrubbed environment and the timeout.
RUNNER = CapabilityTable(enforced={Protection.ENVIRONMENT: "", Protection.TIMEOUT: ""})
# The rlimits the spawn helper sets in the child.
RLIMITS = CapabilityTable(
    enforced={
        Protection.CPU: "RLIMIT_CPU",
        Protection.OPEN_FILES: "RLIMIT_NOFILE",
        Protection.FILE_SIZE: "RLIMIT_FSIZE",
    }
)
